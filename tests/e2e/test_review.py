"""What a review of the admin UI in Chromium found, checked in Chromium through nginx: whole
bars, the period and key in the address, the request table on a phone, compressed assets."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import httpx
import openai
from playwright.sync_api import Browser, Page, expect

from tests.conftest import eventually
from tests.e2e.conftest import PHONE, assert_fits_a_phone, log_in, new_context, shot
from tests.stack.conftest import Stack


def key_with_requests(stack: Stack, username: str) -> str:
    """A new key with one good and one failed request, once the api has both rows."""
    with stack.admin() as api:
        key = api.post("/api/keys", json={"username": username}).json()["key"]
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(model="llama-e2e", messages=[{"role": "user", "content": "hi"}])
    with contextlib.suppress(openai.InternalServerError):  # 502: the down upstream may serve it
        client.chat.completions.create(model="no-such-model", messages=[])

    def recorded() -> bool:
        with stack.admin() as api:
            summary = api.get("/api/analytics/summary", params={"keyId": key["id"]}).json()
        return bool(summary["totals"]["requests"] == 2)

    eventually(recorded, timeout=15, interval=0.3)
    return str(key["id"])


def test_period_and_key_live_in_the_address(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    key_id = key_with_requests(ui_stack, "grace")
    page.get_by_role("tab", name="Analytics").click()
    expect(page).to_have_url(re.compile(r"/admin/analytics$"))
    page.get_by_label("API key", exact=True).select_option(key_id)
    expect(page).to_have_url(re.compile(rf"/admin/analytics\?key={key_id}$"))
    page.get_by_role("button", name="Last 24 hours").click()
    expect(page).to_have_url(re.compile(rf"\?key={key_id}&period=24h$"))
    expect(page.get_by_test_id("total-requests")).to_have_text("2")

    # A reload shows the same key and period.
    page.reload()
    expect(page.get_by_role("button", name="Last 24 hours")).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.get_by_label("API key", exact=True)).to_have_value(key_id)
    expect(page.get_by_test_id("total-requests")).to_have_text("2")
    shot(page, artifacts, "30-analytics-24h-reloaded")

    # Back goes through the periods and keys, then to the tab before.
    page.get_by_role("button", name="Last 30 days").click()
    expect(page).to_have_url(re.compile(r"period=30d$"))
    page.go_back()
    expect(page.get_by_role("button", name="Last 24 hours")).to_have_attribute(
        "aria-pressed", "true"
    )
    page.go_back()
    expect(page.get_by_role("button", name="Last 7 days")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_label("API key", exact=True)).to_have_value(key_id)
    page.go_back()
    expect(page.get_by_label("API key", exact=True)).to_have_value("")
    page.go_back()
    expect(page.get_by_role("tab", name="API keys")).to_have_attribute("aria-selected", "true")

    # A custom range in the address is shown as such.
    page.goto(
        f"/admin/analytics?key={key_id}&period=custom&from=2020-01-01T00:00&to=2020-01-02T00:00"
    )
    expect(page.get_by_label("From")).to_have_value("2020-01-01T00:00")
    expect(page.get_by_text("The start must be within the last year.")).to_be_visible()


def test_bars_and_the_request_table_on_a_phone(
    browser: Browser, ui_stack: Stack, artifacts: Path
) -> None:
    key_id = key_with_requests(ui_stack, "heidi")
    desktop = new_context(browser, ui_stack)
    try:
        page = desktop.new_page()
        log_in(page)
        page.get_by_role("tab", name="API keys").wait_for()
        page.goto(f"/admin/analytics?key={key_id}&period=24h")
        chart = page.get_by_role("img", name=re.compile(r"^Requests per hour"))
        expect(chart).to_be_visible()
        # Today's bar is the last one: whole, so it ends before the plot's right edge.
        chart.screenshot(path=artifacts / "31-requests-chart-24h.png")
        shot(page, artifacts, "32-analytics-desktop")
    finally:
        desktop.close()

    phone = new_context(browser, ui_stack, viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        small = phone.new_page()
        log_in(small)
        small.get_by_role("tab", name="API keys").wait_for()
        small.goto(f"/admin/analytics?key={key_id}&period=24h")
        table = small.get_by_role("region", name="Requests")
        failed = table.locator("tbody tr").filter(has_text="no-such-model")
        failed.scroll_into_view_if_needed()
        for cell, text in (("Status", "502"), ("Model", "no-such-model"), ("Result", "Failed")):
            located = failed.locator(f'td[data-label="{cell}"]')
            expect(located).to_contain_text(text)
            expect(located).to_be_in_viewport()
            box = located.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        assert_fits_a_phone(small, "the request log")
        small.screenshot(path=artifacts / "33-phone-requests.png")
    finally:
        phone.close()


def test_admin_assets_are_compressed_and_head_answers(page: Page, ui_stack: Stack) -> None:
    assert httpx.head(ui_stack.url + "/admin/").status_code == 200
    scripts: list[dict[str, str]] = []
    page.on(
        "response",
        lambda r: scripts.append(r.all_headers()) if r.url.endswith(".js") else None,
    )
    page.goto("/admin/")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert scripts and scripts[0].get("content-encoding") in {"gzip", "br"}, scripts
    html = httpx.get(ui_stack.url + "/admin/").text
    script = re.search(r'src="(/admin/assets/[^"]+\.js)"', html)
    assert script is not None
    r = httpx.get(ui_stack.url + script[1], headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert int(r.headers["content-length"]) < len(r.content) / 2


def test_a_failed_certificate_says_why_and_can_be_retried_renewed_and_removed(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    page.get_by_role("tab", name="TLS & nginx").click()
    page.get_by_label("Domains").fill("fail.example.test")
    page.get_by_role("button", name="Obtain certificate").click()
    failure = page.get_by_role("alert").filter(has_text="No certificate.")
    expect(failure).to_contain_text("Cloudflare credentials not found", timeout=60_000)
    expect(failure).not_to_contain_text("Command failed")
    expect(failure).not_to_contain_text("Traceback")
    row = page.get_by_role("region", name="Certificates").locator(
        "tr", has_text="fail.example.test"
    )
    expect(row.locator(".badge")).to_have_text("Not issued")
    shot(page, artifacts, "34-tls-certificate-failed")

    page.get_by_role("button", name="Retry fail.example.test").click()
    expect(
        page.get_by_role("alert").filter(has_text="fail.example.test: No certificate for")
    ).to_be_visible(timeout=60_000)

    page.get_by_role("button", name="Renew due certificates").click()
    expect(
        page.get_by_role("alert").filter(
            has_text="Nothing to renew: fail.example.test has never been issued"
        )
    ).to_be_visible(timeout=60_000)
    expect(page.get_by_text("renewed successfully")).to_have_count(0)

    page.get_by_role("button", name="Remove fail.example.test").click()
    dialog = page.get_by_role("dialog", name="Remove this certificate request?")
    dialog.get_by_role("button", name="Remove", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Removed fail.example.test.")).to_be_visible(
        timeout=30_000
    )
    expect(row).to_have_count(0)
    shot(page, artifacts, "35-tls-certificate-removed")


def test_request_log_filters_on_the_server_and_finds_a_request_by_its_id(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    with ui_stack.admin() as api:
        key = api.post("/api/keys", json={"username": "ivan"}).json()["key"]
    headers = {"Authorization": f"Bearer {key['key']}"}
    ids = []
    for model in ("llama-e2e", "llama-e2e", "qwen-e2e", "no-such-model"):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(ui_stack.url + "/v1/chat/completions", json=body, headers=headers)
        ids.append(r.headers["x-request-id"])

    def recorded() -> bool:
        with ui_stack.admin() as api:
            summary = api.get("/api/analytics/summary", params={"keyId": key["id"]}).json()
        return bool(summary["totals"]["requests"] == 4)

    eventually(recorded, timeout=15, interval=0.3)
    page.goto(f"/admin/analytics?key={key['id']}&period=24h")
    log = page.get_by_role("region", name="Requests")
    expect(page.get_by_test_id("total-requests")).to_have_text("4")
    expect(log.locator("tbody tr")).to_have_count(4)  # the totals and the table agree
    by_model = page.get_by_role("region", name="Breakdown by model")
    expect(by_model.locator("tbody tr")).to_have_count(3)
    expect(by_model.locator("tbody tr", has_text="llama-e2e")).to_contain_text("2")
    expect(by_model.locator("tbody tr", has_text="no-such-model")).to_contain_text("100 %")
    page.get_by_role("button", name="By upstream").click()
    expect(page.get_by_role("region", name="Breakdown by upstream")).to_be_visible()

    page.get_by_label("Result").select_option("server_error")
    page.get_by_role("button", name="Apply filters").click()
    expect(log.locator("tbody tr")).to_have_count(1)
    expect(log.locator("tbody tr")).to_contain_text("no-such-model")
    page.get_by_role("button", name="Clear").click()
    expect(log.locator("tbody tr")).to_have_count(4)

    wanted = ids[2]
    page.get_by_label("Request id").fill(wanted)
    page.get_by_role("button", name="Apply filters").click()
    expect(log.locator("tbody tr")).to_have_count(1)
    page.get_by_role("button", name=f"Details of request {wanted}").click()
    details = page.get_by_label(f"Request {wanted}")
    expect(details).to_contain_text("qwen-e2e")
    expect(details).to_contain_text(wanted)
    shot(page, artifacts, "36-request-log-details")
