"""services/api/redis_throttle.py: the login throttle counted once for every replica in Redis,
and on the machine's file while Redis does not answer."""

from __future__ import annotations

import time

from services.api.redis_throttle import RedisThrottle
from services.api.throttle import Throttle


def make(tmp_path, url: str, replica: str, limit: int = 3, window: float = 60.0) -> RedisThrottle:
    return RedisThrottle(url, Throttle(tmp_path / replica / "login-failures.json", limit, window))


def test_failures_through_any_replica_count_for_all(tmp_path, redis_url):
    one, other = make(tmp_path, redis_url, "a"), make(tmp_path, redis_url, "b")
    assert one.failed("203.0.113.7") == 1
    assert other.failed("203.0.113.7") == 2
    assert one.retry_after("203.0.113.7") == 0
    one.failed("203.0.113.7")
    assert 59 <= other.retry_after("203.0.113.7") <= 60  # three, through two replicas
    assert other.retry_after("198.51.100.1") == 0  # another client
    other.succeeded("203.0.113.7")
    assert one.retry_after("203.0.113.7") == 0


def test_the_account_limit_holds_across_replicas_and_clients(tmp_path, redis_url):
    replicas = [make(tmp_path, redis_url, name, limit=2) for name in "abc"]
    for n in range(10):  # 5 x 2 failures: the account's limit, from ten clients
        replicas[n % 3].failed(f"198.51.100.{n}")
    assert replicas[0].retry_after("192.0.2.1") > 0  # a new client: the account is closed


def test_a_window_drains_by_the_servers_clock(tmp_path, redis_url):
    throttle = make(tmp_path, redis_url, "a", limit=1, window=0.5)
    throttle.failed("203.0.113.7")
    assert throttle.retry_after("203.0.113.7") == 1
    deadline = time.monotonic() + 30
    while throttle.retry_after("203.0.113.7"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_without_redis_the_machines_file_counts_and_no_login_waits_long(tmp_path, redis_server):
    throttle = make(tmp_path, redis_server.url, "a")
    throttle.failed("203.0.113.7")
    redis_server.freeze()
    try:
        started = time.monotonic()
        for _ in range(3):
            throttle.failed("203.0.113.9")  # the first waits for the timeout, not the others
        assert throttle.retry_after("203.0.113.9") > 0
        assert time.monotonic() - started < 5
    finally:
        redis_server.thaw()
    assert throttle.fallback.retry_after("203.0.113.9") > 0  # counted in the file
    throttle._paused_until = 0.0  # Redis is tried again (after PAUSE seconds)
    assert throttle.retry_after("203.0.113.9") > 0  # ... and what the file counted still counts
