"""The login throttle."""

from services.api import throttle as throttle_module
from services.api.throttle import Throttle


def test_throttle_engages_after_limit_and_releases_after_window(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(throttle_module.time, "monotonic", lambda: clock[0])
    throttle = Throttle(limit=3, window=60)
    for _ in range(3):
        assert throttle.retry_after("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == 60
    assert throttle.retry_after("5.6.7.8") == 0  # per address
    clock[0] += 30
    assert throttle.retry_after("1.2.3.4") == 30
    clock[0] += 30
    assert throttle.retry_after("1.2.3.4") == 0


def test_throttle_success_clears_failures():
    throttle = Throttle(limit=2, window=60)
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 0
