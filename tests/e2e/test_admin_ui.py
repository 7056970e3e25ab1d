"""What an admin does in the web UI, in Chromium, through nginx, against the real stack."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import eventually
from tests.e2e.conftest import PHONE, assert_fits_a_phone, fill_login, log_in, new_context, shot
from tests.stack.conftest import Stack

TABS = ["API keys", "Analytics", "Upstreams", "TLS & nginx"]


def test_login_errors_inline_then_session_survives_reload(page: Page, artifacts: Path) -> None:
    page.goto("/admin")  # no slash: the api redirects, and the assets load from /admin/
    expect(page).to_have_title("Log in · llmp admin")
    expect(page.get_by_label("Username")).to_be_focused()
    shot(page, artifacts, "01-login")

    log_in(page, password="not-the-password")
    expect(page.get_by_role("alert").filter(has_text="Invalid credentials")).to_be_visible()
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    shot(page, artifacts, "02-login-refused")

    log_in(page)
    expect(page.get_by_test_id("who")).to_have_text("Logged in as admin")
    page.reload()
    expect(page.get_by_test_id("who")).to_have_text("Logged in as admin")
    expect(page.get_by_role("tab", name="API keys")).to_have_attribute("aria-selected", "true")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.reload()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()


def test_key_lifecycle_copy_use_analytics_delete(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    username = page.get_by_label("Username")

    # Mistakes are shown inline: the browser's own check, then the server's.
    username.fill("no way!")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_text("Username must contain only alphanumeric characters")).to_be_visible()
    expect(username).to_have_attribute("aria-invalid", "true")
    shot(page, artifacts, "03-keys-invalid-username")

    username.fill("alice")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-key").inner_text().strip()
    assert re.fullmatch(r"sk-[0-9a-f]{64}", secret)
    username.fill("alice")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_text("API key already exists for this username")).to_be_visible()

    # Copy puts the key on the clipboard, and says so.
    page.get_by_role("button", name="Copy key of alice").click()
    expect(page.get_by_role("status").filter(has_text="Copied the key of alice")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, artifacts, "04-keys-created")

    # The copied key works with the openai SDK, through nginx.
    client = openai.OpenAI(base_url=ui_stack.url + "/v1", api_key=secret, max_retries=0, timeout=10)
    chat = client.chat.completions.create(
        model="llama-e2e", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "hello from e2e"
    # No reachable upstream lists it, and the down one may: a 502 that says so, not a 404.
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="no-such-model", messages=[])

    # ...and the request shows in analytics, opened from the key's row.
    page.get_by_role("button", name="Analytics of alice").click()
    expect(page).to_have_url(re.compile(r"/admin/analytics\?key=[0-9a-f]{32}$"))
    expect(page.get_by_label("API key", exact=True)).to_have_value(re.compile(r"[0-9a-f]{32}"))
    requests = page.get_by_role("region", name="Requests")

    def shown() -> bool:
        page.get_by_role("button", name="Refresh").click()
        return requests.get_by_text("llama-e2e").count() == 1

    eventually(shown, timeout=10, interval=0.3)
    expect(page.get_by_test_id("total-requests")).to_have_text("2")
    expect(page.get_by_test_id("total-failures")).to_contain_text("1")
    first = requests.locator("tbody tr").filter(has_text="llama-e2e")
    expect(first).to_contain_text("Success")
    expect(first).to_contain_text("200")
    failed = requests.locator("tbody tr").filter(has_text="no-such-model")
    expect(failed).to_contain_text("Failed")
    expect(failed).to_contain_text("502")
    expect(
        page.get_by_role("img", name=re.compile(r"^Requests per hour: 2 requests"))
    ).to_be_visible()
    shot(page, artifacts, "05-analytics-key")

    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    assert re.fullmatch(
        r"llmp-alice-\d{4}-\d\d-\d\d-to-\d{4}-\d\d-\d\d\.csv", download.value.suggested_filename
    )
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert sorted(r["model"] for r in rows) == ["llama-e2e", "no-such-model"]

    page.get_by_label("API key", exact=True).select_option(label="All keys")
    expect(page).to_have_url(re.compile(r"/admin/analytics$"))
    expect(page.get_by_role("region", name="Usage per key")).to_contain_text("alice")
    page.get_by_role("button", name="Last 30 days").click()
    expect(page.get_by_role("button", name="Last 30 days")).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.get_by_role("img", name=re.compile(r"^Requests per day"))).to_be_visible()
    shot(page, artifacts, "06-analytics-all-keys")

    # Delete asks first; then /v1 refuses the key at once.
    page.get_by_role("tab", name="API keys").click()
    page.get_by_role("button", name="Delete key of alice").click()
    dialog = page.get_by_role("dialog", name="Delete this API key?")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    shot(page, artifacts, "07-keys-delete-confirm")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert (
        httpx.get(
            ui_stack.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}
        ).status_code
        == 200
    )

    page.get_by_role("button", name="Delete key of alice").click()
    dialog.get_by_role("button", name="Delete key").click()
    expect(page.get_by_role("status").filter(has_text="Deleted the key of alice")).to_be_visible()
    expect(page.get_by_text("No API keys yet")).to_be_visible()
    refused = eventually(
        lambda: (
            httpx.get(
                ui_stack.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}
            ).status_code
            == 401
        ),
        timeout=2,
    )
    assert refused
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="llama-e2e", messages=[])


def test_tabs_by_keyboard_and_every_page_on_a_phone(
    admin_page: Page, browser: Browser, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    tab = page.get_by_role("tab", name="API keys")
    tab.focus()
    for expected in TABS[1:]:
        page.keyboard.press("ArrowRight")
        expect(page.get_by_role("tab", name=expected)).to_be_focused()
        expect(page.get_by_role("tab", name=expected)).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Home")
    expect(page.get_by_role("tab", name="API keys")).to_be_focused()
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("tab", name="TLS & nginx")).to_have_attribute("aria-selected", "true")
    expect(page).to_have_url(re.compile(r"/admin/tls$"))
    page.go_back()
    expect(page.get_by_role("tab", name="API keys")).to_have_attribute("aria-selected", "true")

    # Every input has a label.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter(el => !el.labels?.length && !el.getAttribute('aria-label'))
              .map(el => el.outerHTML)"""
    )
    assert unlabelled == []

    phone = new_context(browser, ui_stack, viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        small = phone.new_page()
        log_in(small)
        for number, name in enumerate(TABS, start=8):
            small.get_by_role("tab", name=name).click()
            small.wait_for_load_state("networkidle")
            assert_fits_a_phone(small, name)
            shot(small, artifacts, f"{number:02}-phone-{name.split()[0].lower()}")
    finally:
        phone.close()


def test_upstreams_show_health_and_models(admin_page: Page, artifacts: Path) -> None:
    page = admin_page
    page.get_by_role("tab", name="Upstreams").click()
    summary = page.get_by_role("status").filter(has_text="2 upstreams, 1 healthy, 2 models")
    expect(summary).to_be_visible()
    up, down = page.locator(".upstreams > li").all()
    expect(up.get_by_text("Healthy", exact=True)).to_be_visible()
    expect(up.get_by_role("listitem")).to_have_text(["llama-e2e", "qwen-e2e"])
    expect(down.get_by_text("Unhealthy", exact=True)).to_be_visible()
    expect(down).to_contain_text("No models known.")
    shot(page, artifacts, "12-upstreams")


def test_a_401_anywhere_returns_to_the_login_form(admin_page: Page) -> None:
    page = admin_page
    page.get_by_role("tab", name="Upstreams").click()
    page.context.clear_cookies()
    page.get_by_role("button", name="Refresh").click()
    expect(page.get_by_text("Your session has ended. Please log in again.")).to_be_visible()
    fill_login(page)  # in place: the page stays where it was
    expect(page.get_by_role("tab", name="Upstreams")).to_have_attribute("aria-selected", "true")


def test_tls_page_changes_admin_networks_and_shows_nginx_refusals(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    with ui_stack.admin() as api:
        if api.get("/nginx/status").status_code == 404:
            pytest.skip("the api has no /nginx routes yet")
    page = admin_page
    page.get_by_role("tab", name="TLS & nginx").click()
    expect(page.get_by_text("nginx is running the current configuration.")).to_be_visible()
    shot(page, artifacts, "13-tls")

    networks = page.get_by_label("Allowed networks (CIDR groups)")
    networks.fill("127.0.0.1/32\n10.0.0.0/8\nnot-a-network")
    page.get_by_label("Domain", exact=True).fill("llm.example.test")
    page.get_by_role("button", name="Save admin access").click()
    expect(page.get_by_text("Not an address or CIDR range: not-a-network")).to_be_visible()

    networks.fill("127.0.0.1/32\n10.0.0.0/8")
    page.get_by_role("button", name="Save admin access").click()
    expect(
        page.get_by_role("status").filter(has_text="Default config written successfully")
    ).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("cidr-groups").get_by_role("listitem")).to_have_text(
        ["127.0.0.1/32", "10.0.0.0/8"]
    )
    # nginx now refuses admin paths from any other address, and still serves /v1 to it.
    other = httpx.Client(
        base_url=ui_stack.url, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
    with other:
        assert other.get("/api/me").status_code == 403
        assert other.get("/admin/").status_code == 403
        assert other.get("/v1/models").status_code == 401
    assert httpx.get(ui_stack.url + "/admin/").status_code == 200

    # A config nginx refuses is not applied, and nginx's own words are shown (a directive the
    # allowlist takes, with a value only nginx knows to be wrong).
    editor = page.get_by_label(re.compile("^Server configuration"))
    expect(editor).to_have_value(re.compile("allow 127.0.0.1/32;"))
    editor.fill(editor.input_value() + "\nproxy_read_timeout notatime;\n")
    page.get_by_role("button", name="Save and apply").click()
    error = page.get_by_test_id("nginx-error")
    expect(error).to_contain_text('"proxy_read_timeout" directive invalid value', timeout=30_000)
    shot(page, artifacts, "14-tls-nginx-refused")
    page.get_by_role("button", name="Discard changes").click()
    expect(error).to_be_hidden()
    assert httpx.get(ui_stack.url + "/admin/").status_code == 200
    # Leave the stack as it was, open to loopback and private ranges.
    networks.fill("")
    page.get_by_role("button", name="Save admin access").click()
    expect(page.get_by_text("loopback and private networks only")).to_be_visible(timeout=30_000)
