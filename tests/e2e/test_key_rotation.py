"""Keys for a team, from the admin's side: a user's second key, named and owned, is made in the
web UI; rotating it with an overlap keeps the old secret working beside the new one (openai SDK
through nginx and every proxy worker), and rotating it at once refuses every old secret (a secret
refused once its chosen time has passed: tests/stack/test_admin_api.py)."""

from __future__ import annotations

import functools
from pathlib import Path

import openai
from playwright.sync_api import Page, expect

from tests.conftest import eventually
from tests.e2e.conftest import shot
from tests.stack.conftest import Stack


def answer(stack: Stack, secret: str) -> str:
    """What the proxy says to `secret`: "ok", or the refusal's code."""
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=secret, max_retries=0, timeout=10)
    try:
        client.models.list()
    except openai.AuthenticationError as exc:
        return str(exc.body["code"]) if isinstance(exc.body, dict) else "refused"
    return "ok"


def create(page: Page, username: str, name: str = "", owner: str = "") -> str:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Key name (optional)").fill(name)
    page.get_by_label("Owner (optional)").fill(owner)
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-key").inner_text().strip()
    page.get_by_role("button", name="Done").click()
    return secret


def rotate(page: Page, label: str, overlap: str) -> str:
    page.get_by_role("button", name=f"Rotate key of {label}").click()
    dialog = page.get_by_role("dialog", name="Rotate this API key?")
    dialog.get_by_label("The old secret keeps working").select_option(label=overlap)
    dialog.get_by_role("button", name="Rotate key").click()
    expect(page.locator("#created-title")).to_have_text(f"New secret for {label}")
    secret = page.get_by_test_id("new-key").inner_text().strip()
    page.get_by_role("button", name="Done").click()
    return secret


def test_a_users_named_key_rotated_in_the_ui_overlaps_then_refuses_the_old_secret(
    admin_page: Page, ui_stack: Stack, artifacts: Path
) -> None:
    page = admin_page
    first = create(page, "grace")
    ci = create(page, "grace", name="ci", owner="ml-team")
    assert first != ci and ci.startswith("sk-")
    item = page.locator('.key-item[data-username="grace"]').filter(has_text="ml-team")
    expect(item.get_by_test_id("key-name")).to_have_text("ci")
    expect(item.get_by_test_id("key-owner")).to_have_text("Owner: ml-team")
    assert eventually(lambda: answer(ui_stack, ci) == "ok" or None, timeout=5)

    # A name the user already has is refused, in the page.
    create_again = page.get_by_label("Key name (optional)")
    page.get_by_label("Username").fill("grace")
    create_again.fill("ci")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-username-error")).to_contain_text(
        'An API key named "ci" already exists for this username'
    )

    second = rotate(page, "grace (ci)", "For 1 day")
    assert second != ci
    expect(item.get_by_test_id("key-previous")).to_contain_text("works until")
    shot(page, artifacts, "keys-rotated")
    # Both secrets work, in every worker, once the file is reloaded (within a second).
    assert eventually(lambda: answer(ui_stack, second) == "ok" or None, timeout=5)
    for _ in range(6):  # several connections: nginx spreads them over the proxy workers
        assert answer(ui_stack, ci) == "ok"

    third = rotate(page, "grace (ci)", "Refuse it at once")
    assert eventually(lambda: answer(ui_stack, third) == "ok" or None, timeout=5)

    def unknown(secret: str) -> bool:
        return answer(ui_stack, secret) == "invalid_api_key"

    for _ in range(6):  # each worker refuses them within a second of the change
        for old in (ci, second):  # no longer kept in the file: unknown secrets
            assert eventually(functools.partial(unknown, old))
    expect(item.get_by_test_id("key-previous")).to_have_count(0)
    assert answer(ui_stack, first) == "ok"  # the user's other key is untouched
