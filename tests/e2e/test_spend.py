"""Spend and budgets from the admin's side, in Chromium against the whole stack: prices per model
set in the page give the cost per key and per period of real requests; a budget set on a key is
saved, shown with what it has used, and enforced by the proxy; the key list is searched,
filtered and sorted by the api (the page asks it, it does not filter what it loaded)."""

from __future__ import annotations

from pathlib import Path

import openai
from playwright.sync_api import Page, expect

from tests.conftest import eventually
from tests.e2e.conftest import PHONE, assert_fits_a_phone, shot
from tests.stack.conftest import Stack


def test_prices_set_in_the_page_give_the_spend_per_key_and_period(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    page.get_by_label("Username").fill("spender")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-key").inner_text().strip()
    page.get_by_role("button", name="Done").click()
    client = openai.OpenAI(base_url=ui_stack.url + "/v1", api_key=secret, max_retries=0, timeout=10)
    for _ in range(3):  # the fake upstream answers with 7 prompt and 3 completion tokens
        eventually(lambda: client.chat.completions.create(model="llama-e2e", messages=[]), 3)
    with ui_stack.admin() as api:
        key_id = next(
            k["id"] for k in api.get("/api/keys").json()["keys"] if k["username"] == "spender"
        )
        eventually(lambda: len(api.get(f"/api/analytics/{key_id}").json()["records"]) >= 3, 5)

    page.get_by_role("button", name="Analytics of spender").click()
    spend = page.locator("section", has=page.get_by_role("heading", name="Spend"))
    expect(spend.get_by_test_id("unpriced")).to_contain_text("No price for llama-e2e")
    expect(spend.get_by_test_id("spend-total")).to_have_text("0.00 USD")

    # Prices the api would refuse are caught in the page; nothing is sent.
    spend.get_by_role("button", name="Edit prices").click()
    prices = spend.get_by_role("form", name="Prices per model")
    prices.get_by_label("Model of line 1").fill("llama-e2e")
    prices.get_by_label("Prompt price of line 1").fill("1000")
    prices.get_by_label("Completion price of line 1").fill("lots")
    prices.get_by_role("button", name="Save prices").click()
    expect(prices.get_by_role("alert")).to_have_text(
        "“llama-e2e”: the completion price must be a number such as 0.6."
    )
    shot(page, artifacts, "40-prices-invalid")
    with ui_stack.admin() as api:
        assert api.get("/api/analytics/prices").json()["models"] == {}

    prices.get_by_label("Completion price of line 1").fill("2000")
    prices.get_by_role("button", name="Save prices").click()
    expect(
        page.get_by_role("status").filter(has_text="Saved the prices of 1 model")
    ).to_be_visible()
    with ui_stack.admin() as api:
        saved = api.get("/api/analytics/prices").json()
    assert saved["models"] == {"llama-e2e": {"prompt": 1000.0, "completion": 2000.0}}
    # 3 requests of 7 prompt tokens at 1000 and 3 completion tokens at 2000 per million
    expect(spend.get_by_test_id("spend-total")).to_have_text("0.0390 USD")
    expect(spend.get_by_test_id("unpriced")).to_have_count(0)
    table = spend.get_by_role("region", name="Spend per period")
    expect(table.locator("tbody tr:not(.period-row)")).to_have_text(
        ["spender 3 21 9 0.0390 USD"], use_inner_text=True
    )
    spend.get_by_role("button", name="By model").click()
    spend.get_by_role("button", name="Per month").click()
    expect(table.locator("tbody tr:not(.period-row) td").first).to_have_text("llama-e2e")
    shot(page, artifacts, "41-spend-by-model-per-month")

    page.set_viewport_size(PHONE)
    assert_fits_a_phone(page, "the analytics page")
    spend.scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "42-phone-spend.png")


def test_a_budget_edited_on_a_key_is_shown_used_and_enforced(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    page.get_by_label("Username").fill("budgeted")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-key").inner_text().strip()
    page.get_by_role("button", name="Done").click()

    page.get_by_role("button", name="Limits of budgeted").click()
    form = page.get_by_role("form", name="Limits of budgeted")
    expect(form.get_by_label("Budget in tokens")).to_be_disabled()
    form.get_by_label("Budget period").select_option("day")
    form.get_by_role("button", name="Save limits").click()
    expect(form.get_by_text("A budget needs tokens, an amount or both")).to_be_visible()
    form.get_by_label("Budget in tokens").fill("15")
    shot(page, artifacts, "43-key-budget-form")
    form.get_by_role("button", name="Save limits").click()
    expect(form).to_be_hidden()
    with ui_stack.admin() as api:
        key = next(k for k in api.get("/api/keys").json()["keys"] if k["username"] == "budgeted")
    assert key["budget"] == {"period": "day", "tokens": 15}
    budget = page.locator('.key-item[data-username="budgeted"]').get_by_test_id("key-budget")
    expect(budget).to_have_text("Budget this day: 0 of 15 tokens used (15 left)")

    # Two requests of 10 tokens: the second starts under the budget, the third is refused.
    client = openai.OpenAI(base_url=ui_stack.url + "/v1", api_key=secret, max_retries=0, timeout=10)
    eventually(lambda: client.chat.completions.create(model="llama-e2e", messages=[]), 3)

    def refused() -> bool:
        try:
            client.chat.completions.create(model="llama-e2e", messages=[])
        except openai.RateLimitError as exc:
            return exc.code == "insufficient_quota"
        return False

    assert eventually(refused, 5)
    with ui_stack.admin() as api:  # once the proxy has written the rows the page reads

        def used() -> int:
            return api.get("/api/keys").json()["usage"][key["id"]]["budget"]["usedTokens"]

        assert eventually(lambda: used() == 20, 5)
    page.reload()
    expect(budget).to_have_text("Budget this day: 20 of 15 tokens used (0 left)")
    shot(page, artifacts, "44-key-budget-used")


def test_the_key_list_is_searched_filtered_and_sorted_by_the_api(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    with ui_stack.admin() as api:
        for name in ("zed", "amy", "bea", "cal", "dan", "eve"):
            assert api.post("/api/keys", json={"username": f"list{name}"}).status_code == 200
        eve = next(k for k in api.get("/api/keys").json()["keys"] if k["username"] == "listeve")
        assert api.patch(f"/api/keys/{eve['id']}", json={"enabled": False}).status_code == 200
    page.reload()
    names = page.locator(".key-item")
    expect(names.first).to_have_attribute("data-username", "listeve")  # newest first

    with page.expect_request(lambda r: "/api/keys?" in r.url and "search=list" in r.url) as asked:
        page.get_by_label("Filter keys by username").fill("list")
    assert "sort=createdAt" in asked.value.url and "order=desc" in asked.value.url
    expect(names).to_have_count(6)
    with page.expect_request(lambda r: "sort=username" in r.url and "order=asc" in r.url):
        page.get_by_label("Sort by").select_option("username")
    expect(names.first).to_have_attribute("data-username", "listamy")
    expect(names.last).to_have_attribute("data-username", "listzed")
    with page.expect_request(lambda r: "state=disabled" in r.url):
        page.get_by_label("Show").select_option("disabled")
    expect(names).to_have_count(1)
    expect(names.first).to_have_attribute("data-username", "listeve")
    shot(page, artifacts, "45-key-list-filtered")
    page.get_by_label("Show").select_option("")
    page.get_by_label("Filter keys by username").fill("nobody-such")
    expect(page.get_by_text("No key matches “nobody-such”")).to_be_visible()
