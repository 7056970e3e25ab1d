"""The login throttle: per client network, for the account, kept on disk."""

import multiprocessing
import time

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.throttle import Throttle, network
from shared import forwarding
from tests.conftest import make_settings


@pytest.fixture
def clock(monkeypatch):
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    return now


def make(tmp_path, limit=3, window=60.0) -> Throttle:
    return Throttle(tmp_path / "data" / "login-failures.json", limit, window)


def test_throttle_engages_after_limit_and_releases_after_window(tmp_path, clock):
    throttle = make(tmp_path)
    for _ in range(3):
        assert throttle.retry_after("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == 60
    assert throttle.retry_after("5.6.7.8") == 0  # another client
    clock[0] += 30
    assert throttle.retry_after("1.2.3.4") == 30
    clock[0] += 30
    assert throttle.retry_after("1.2.3.4") == 0


def test_throttle_success_clears_its_clients_failures(tmp_path, clock):
    throttle = make(tmp_path, limit=2)
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 0


def test_a_client_is_an_ipv4_address_an_ipv6_64_or_loopback_as_a_whole():
    assert network("203.0.113.7") == "203.0.113.7"
    assert network("2001:db8:1:2:aaaa::1") == network("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert network("2001:db8:1:3::1") != network("2001:db8:1:2::1")
    assert network("127.0.0.1") == network("127.8.9.10") == network("::1") == "loopback"
    assert network("::ffff:203.0.113.7") == "203.0.113.7"


def test_ten_loopback_aliases_or_one_ipv6_64_get_the_guesses_of_one_client(tmp_path, clock):
    throttle = make(tmp_path)
    for n in range(3):
        throttle.failed(f"127.0.0.{n + 1}")
    assert all(throttle.retry_after(f"127.0.0.{n}") for n in range(1, 11))
    for n in range(3):
        throttle.failed(f"2001:db8::{n + 1:x}")
    assert throttle.retry_after("2001:db8::ffff") > 0


def test_the_account_takes_at_most_five_times_the_limit_from_everywhere(tmp_path, clock):
    throttle = make(tmp_path)
    for n in range(15):
        assert throttle.retry_after(f"198.51.100.{n}") == 0
        throttle.failed(f"198.51.100.{n}")
        clock[0] += 1
    assert throttle.retry_after("203.0.113.1") == 45  # a fresh address too: 60 s after the first
    clock[0] += 60
    assert throttle.retry_after("203.0.113.1") == 0


def _fail(path, address):
    Throttle(path, 3, 60.0).failed(address)


def test_failures_survive_a_restart_and_count_across_processes(tmp_path):
    path = tmp_path / "data" / "login-failures.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_fail, args=(path, "192.0.2.1")) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert Throttle(path, 3, 60.0).retry_after("192.0.2.1") > 0  # a new process: all three


def test_an_unreadable_failures_file_counts_afresh_and_is_written_over(tmp_path):
    throttle = make(tmp_path)
    throttle.path.parent.mkdir(parents=True)
    throttle.path.write_text("{ not json")
    assert throttle.retry_after("192.0.2.1") == 0
    throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 0 and "192.0.2.1" in throttle.path.read_text()


def test_the_api_believes_x_real_ip_only_with_nginx_s_proof(tmp_path):
    settings = make_settings(tmp_path, jwt_secret="j" * 40, login_max_failures=2)
    wrong = {"username": "admin", "password": "wrong-password"}
    with TestClient(create_app(settings)) as client:
        for n in range(4):  # a local process claiming other addresses: one client
            forged = {"X-Real-IP": f"203.0.113.{n}", "X-Forwarded-For": f"203.0.113.{n}"}
            r = client.post("/auth/login", json=wrong, headers=forged)
            assert r.status_code == (401 if n < 2 else 429)
        proof = forwarding.proof(settings.jwt_secret)
        vouched = {"X-Real-IP": "198.51.100.1", forwarding.HEADER: proof}
        assert client.post("/auth/login", json=wrong, headers=vouched).status_code == 401
        bad = {"X-Real-IP": "198.51.100.2", forwarding.HEADER: proof[:-1] + "0"}
        assert client.post("/auth/login", json=wrong, headers=bad).status_code == 429
