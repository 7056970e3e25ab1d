"""Schema-driven fuzzing of the admin API (schemathesis, from its own OpenAPI document) against
the real api behind nginx: no input may cause a 5xx or an answer that breaks the schema."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from services.api.app import create_app
from tests.conftest import make_settings
from tests.stack.conftest import ADMIN, Stack


def _document() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        return create_app(make_settings(Path(folder), log_level="ERROR")).openapi()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, fleet) -> Iterator[tuple[Stack, str, str]]:
    """A stack of its own, so fuzzed logins and keys do not disturb other tests; two sessions,
    taken before the fuzzed logins can lock the account: the second is the one that fuzzed
    logouts end (a logout ends its session on the server)."""
    stack = Stack(tmp_path_factory.mktemp("fuzz"), [fleet["a"]]).start()
    login = {"username": ADMIN[0], "password": ADMIN[1]}
    token, spare = (httpx.post(stack.url + "/auth/token", json=login).json()["token"] for _ in "ab")
    yield stack, token, spare
    assert stack.stop() == 0, stack.output()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_admin_api_survives_generated_input(case, fuzzed):
    stack, token, spare = fuzzed
    bearer = spare if case.path == "/auth/logout" else token
    response = case.call_and_validate(
        base_url=stack.url,
        headers={"Authorization": f"Bearer {bearer}"},
        checks=[not_a_server_error, response_schema_conformance],
    )
    if not case.path.startswith("/auth/"):
        assert response.status_code != 401, "the fuzz run must get past the admin check"
