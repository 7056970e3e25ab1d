"""Sharing scarce GPUs fairly, from the admin's side: a key's models and limits are
edited in the web UI, saved by the api, shown, and applied by the proxy at once, without a
restart; a disabled key is refused on /v1 and works again once enabled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import eventually
from tests.e2e.conftest import PHONE, assert_fits_a_phone, shot
from tests.stack.conftest import Stack


def saved_key(stack: Stack, username: str) -> dict[str, Any]:
    """The key as the api answers it now (not as the page thinks it is)."""
    with stack.admin() as api:
        keys = api.get("/api/keys").json()["keys"]
    return next(k for k in keys if k["username"] == username)


def model_ids(client: openai.OpenAI) -> list[str] | None:
    try:
        return sorted(m.id for m in client.models.list().data)
    except openai.APIStatusError:
        return None


def test_limits_and_models_edited_in_the_ui_apply_at_once_and_disable_refuses(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    page.get_by_label("Username").fill("frank")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-key").inner_text().strip()
    assert secret.startswith("sk-")
    page.get_by_role("button", name="Done").click()
    client = openai.OpenAI(base_url=ui_stack.url + "/v1", api_key=secret, max_retries=0, timeout=10)
    assert eventually(lambda: model_ids(client), timeout=3) == ["llama-e2e", "qwen-e2e"]

    policy = page.locator('.key-item[data-username="frank"]').get_by_test_id("key-policy")
    expect(policy).to_contain_text("Enabled")
    expect(policy).to_contain_text("Models: all")
    expect(policy).to_contain_text("Limits: none")

    # A limit the api would refuse is caught in the page, and nothing is sent.
    page.get_by_role("button", name="Limits of frank").click()
    form = page.get_by_role("form", name="Limits of frank")
    expect(form.get_by_label("Expires")).to_be_focused()
    form.get_by_label("Allowed models").fill("llama-*")
    form.get_by_label("Requests per minute").fill("0")
    form.get_by_label("Concurrent requests").fill("2")
    form.get_by_label("Expires").fill("2099-06-30T12:00")
    form.get_by_role("button", name="Save limits").click()
    expect(form.get_by_label("Requests per minute")).to_have_attribute("aria-invalid", "true")
    expect(form.get_by_text("A whole number of 1 or more (empty: no limit).")).to_be_visible()
    shot(page, artifacts, "20-key-limits-invalid")
    assert "limits" not in saved_key(ui_stack, "frank")

    form.get_by_label("Requests per minute").fill("60")
    form.get_by_role("button", name="Save limits").click()
    expect(page.get_by_role("status").filter(has_text="Saved the limits of frank")).to_be_visible()
    expect(form).to_be_hidden()
    expires = page.evaluate("new Date('2099-06-30T12:00').toISOString()")
    saved = saved_key(ui_stack, "frank")
    assert (saved["models"], saved["limits"]) == (
        ["llama-*"],
        {"requestsPerMinute": 60, "maxConcurrent": 2},
    )
    assert saved["expiresAt"] == expires
    assert "enabled" not in saved  # still enabled: the default is not written
    expect(policy.locator(".chip")).to_have_text(["llama-*"])
    expect(policy).to_contain_text("Limits: 60 requests/min, 2 at once")
    expect(policy).to_contain_text("Expires 2099-06-30 12:00:00")
    shot(page, artifacts, "21-key-limits-saved")

    # The proxy applies the new policy without a restart: only the allowed models.
    assert eventually(lambda: model_ids(client) == ["llama-e2e"], timeout=3)
    chat = client.chat.completions.create(model="llama-e2e", messages=[])
    assert chat.choices[0].message.content == "hello from e2e"
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="qwen-e2e", messages=[])

    # Disabled: kept, shown as disabled, refused on /v1 within a second; enabled: works again.
    page.get_by_role("button", name="Disable key of frank").click()
    expect(page.get_by_role("status").filter(has_text="Disabled the key of frank")).to_be_visible()
    expect(policy.locator(".badge")).to_have_text("Disabled")
    assert saved_key(ui_stack, "frank")["enabled"] is False
    page.reload()
    expect(policy.locator(".badge")).to_have_text("Disabled")
    expect(page.get_by_role("button", name="Enable key of frank")).to_be_visible()
    shot(page, artifacts, "22-key-disabled")

    def refused() -> str | None:
        """The refusal, once both the listing and a completion are refused (each proxy
        worker picks the change up on its own, within a second)."""
        try:
            client.models.list()
        except openai.AuthenticationError as exc:
            try:
                client.chat.completions.create(model="llama-e2e", messages=[])
            except openai.AuthenticationError:
                return str(exc)
        return None

    assert "disabled" in eventually(refused, timeout=1.5)

    page.get_by_role("button", name="Enable key of frank").click()
    expect(policy.locator(".badge")).to_have_text("Enabled")
    assert "enabled" not in saved_key(ui_stack, "frank")
    assert eventually(lambda: model_ids(client) == ["llama-e2e"], timeout=3)

    # Its requests, with the time each waited in the fair queue (once the proxy has written
    # them: rows go to the database in batches, and the page loads them once).
    frank = saved_key(ui_stack, "frank")["id"]

    def answered() -> bool:
        with ui_stack.admin() as api:
            records = api.get(f"/api/analytics/{frank}").json()["records"]
        return any(r["model"] == "llama-e2e" and r["status"] == 200 for r in records)

    assert eventually(answered, timeout=3)
    page.get_by_role("button", name="Analytics of frank").click()
    requests = page.get_by_role("region", name="Requests")
    expect(requests.get_by_role("columnheader", name="Queued")).to_be_visible()
    expect(requests.locator("tbody tr").filter(has_text="llama-e2e")).to_contain_text("Success")
    shot(page, artifacts, "23-analytics-queued")
    page.get_by_role("tab", name="API keys").click()

    # The phone layout keeps the form within the screen.
    page.set_viewport_size(PHONE)
    page.get_by_role("button", name="Limits of frank").click()
    expect(form.get_by_label("Requests per minute")).to_have_value("60")
    assert_fits_a_phone(page, "the keys page")
    shot(page, artifacts, "24-phone-key-limits")
