"""The Upstreams page in Chromium: an upstream added, tested and removed, and a model alias,
served through the real stack (nginx, api, proxy workers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Page, expect

from shared.apikeys import ApiKey
from tests.conftest import eventually
from tests.e2e.conftest import shot
from tests.stack.conftest import Stack
from tests.upstream import FakeUpstream


@pytest.fixture(scope="module")
def extra() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream("extra", ["extra-model"], key="key-of-extra").start()
    yield upstream
    upstream.stop()


def served(stack: Stack, key: ApiKey) -> set[str]:
    answer = httpx.get(stack.url + "/v1/models", headers={"Authorization": f"Bearer {key.key}"})
    return {m["id"] for m in answer.json()["data"]}


def test_upstreams_page_adds_tests_aliases_and_removes_an_upstream(
    admin_page: Page, ui_stack: Stack, extra: FakeUpstream, artifacts: Path
) -> None:
    key = ApiKey.new("fleet-ui")
    ui_stack.keys(key)
    eventually(lambda: served(ui_stack, key) >= {"llama-e2e"})
    page = admin_page
    page.get_by_role("tab", name="Upstreams").click()
    expect(page.get_by_text("The first change here writes them")).to_be_visible()

    page.get_by_role("button", name="Add upstream").click()
    form = page.get_by_role("form", name="Add upstream")
    form.get_by_label("URL").fill(extra.url)
    form.get_by_label("Name").fill("extra box")
    form.get_by_label("Key", exact=True).fill("key-of-extra")
    form.get_by_role("button", name="Add upstream").click()
    card = page.locator(".upstreams > li").filter(has_text=extra.url + "/v1")
    expect(card).to_contain_text("bearer …xtra")
    expect(page.get_by_text("TARGET_URLS is no longer read")).to_be_visible()
    assert "key-of-extra" not in page.content()
    eventually(lambda: "extra-model" in served(ui_stack, key), timeout=10)

    card.get_by_role("button", name="Test").click()
    result = card.get_by_role("status", name=f"Test of {extra.url}/v1")
    expect(result).to_contain_text("Lists 1 model")
    expect(result).to_contain_text("extra-model answered a one-token request in")
    shot(page, artifacts, "30-upstream-tested")

    # An alias served by the new upstream, asked for by its public name.
    page.get_by_role("button", name="Add alias").click()
    alias_form = page.get_by_role("form", name="Alias")
    alias_form.get_by_label("Public name").fill("team-chat")
    alias_form.get_by_label("Upstream", exact=True).select_option(label="extra box")
    alias_form.get_by_label("Upstream model").fill("extra-model")
    alias_form.get_by_role("button", name="Save alias").click()
    expect(page.get_by_role("listitem", name="team-chat")).to_contain_text(
        "extra-model on extra box"
    )
    shot(page, artifacts, "31-alias")
    eventually(lambda: "team-chat" in served(ui_stack, key), timeout=10)
    client = openai.OpenAI(base_url=ui_stack.url + "/v1", api_key=key.key, max_retries=0)
    reply = client.chat.completions.create(model="team-chat", messages=[])
    assert reply.choices[0].message.content == "hello from extra"
    assert b'"model":"extra-model"' in extra.seen[-1].body.replace(b" ", b"")

    # In use by the alias: refused, saying why; free again once the alias is gone.
    card.get_by_role("button", name="Remove").click()
    page.get_by_role("button", name="Remove upstream").click()
    expect(page.get_by_text("uses this upstream")).to_be_visible()
    page.get_by_role("listitem", name="team-chat").get_by_role("button", name="Remove").click()
    page.get_by_role("button", name="Remove alias").click()
    expect(page.get_by_text("No aliases.")).to_be_visible()
    card.get_by_role("button", name="Remove").click()
    page.get_by_role("button", name="Remove upstream").click()
    expect(card).to_have_count(0)
    eventually(lambda: "extra-model" not in served(ui_stack, key), timeout=10)
