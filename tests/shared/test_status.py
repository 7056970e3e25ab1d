import json
import time

from shared.status import health, status_report, upstreams
from tests.conftest import make_settings


def test_upstreams_as_the_latest_worker_sees_them_with_counts_summed():
    def worker(updated, healthy, in_flight, queued, circuit="serving", failures=0):
        return {
            "updated": updated,
            "upstreams": [
                {
                    "url": "http://gpu/v1",
                    "healthy": healthy,
                    "in_flight": in_flight,
                    "queued": queued,
                    "circuit": circuit,
                    "failures": failures,
                    "cooling_until": 50.0 if circuit == "cooling" else None,
                    "last_failure": "HTTP 500" if failures else None,
                }
            ],
        }

    merged = upstreams(
        [
            worker(1.0, False, 2, 5, "cooling", 3),  # one worker cools it down: shown
            worker(2.0, True, 1, 0, "probing", 4),
            worker(1.5, True, 0, 3),
        ]
    )
    assert merged == [
        {
            "url": "http://gpu/v1",
            "healthy": True,
            "in_flight": 3,
            "queued": 8,
            "circuit": "cooling",
            "failures": 3,
            "cooling_until": 50.0,
            "last_failure": "HTTP 500",
        }
    ]
    assert upstreams([]) == []


def test_upstreams_reported_by_a_worker_without_circuits_are_serving():
    merged = upstreams([{"updated": 1.0, "upstreams": [{"url": "http://gpu/v1", "healthy": True}]}])
    assert merged[0]["circuit"] == "serving" and merged[0]["failures"] == 0


def _beat(run_dir, name, program, **fields):
    beat = {"program": program, "pid": 1, "started": time.time(), "updated": time.time()}
    (run_dir / f"{name}.json").write_text(json.dumps({**beat, **fields}))


def test_status_is_not_ok_when_every_upstream_is_down(tmp_path):
    settings = make_settings(tmp_path, proxy_workers=1)
    settings.run_dir.mkdir(parents=True)
    _beat(settings.run_dir, "api", "api")
    _beat(settings.run_dir, "certd", "certd", nginx={"ok": True})
    up = {"url": "http://a/v1", "healthy": True}
    down = {"url": "http://b/v1", "healthy": False}
    _beat(settings.run_dir, "proxy-1", "proxy", upstreams=[up, down])
    assert status_report(settings)["ok"] is True  # one upstream serves
    _beat(settings.run_dir, "proxy-1", "proxy", upstreams=[{**up, "healthy": False}, down])
    report = status_report(settings)
    assert (report["ok"], report["status"]) == (False, "degraded")
    assert report["problem"] == "every upstream is down"


def test_redis_not_answering_is_said_by_health_without_failing_it(tmp_path):
    """The replica serves on (limits shared out by REDIS_FAILURE): a load balancer must not
    take every replica out at once for it, but `llmp status` says it."""
    settings = make_settings(tmp_path, proxy_workers=2)
    settings.run_dir.mkdir(parents=True)
    _beat(settings.run_dir, "api", "api")
    _beat(settings.run_dir, "certd", "certd", nginx={"ok": True})
    up = [{"url": "http://a/v1", "healthy": True}]
    _beat(settings.run_dir, "proxy-1", "proxy", upstreams=up, limits_error=None)
    _beat(settings.run_dir, "proxy-2", "proxy", upstreams=up, limits_error="Timeout reading")
    report = health(settings)
    assert (report["ok"], report["programs"]["proxy"]["limits_error"]) == (True, "Timeout reading")
    status = status_report(settings)
    assert (status["ok"], status["status"]) == (False, "degraded")
    assert status["problem"] == "limits are not shared with the other replicas: Timeout reading"
    _beat(settings.run_dir, "proxy-2", "proxy", upstreams=up, limits_error=None)
    assert "limits_error" not in health(settings)["programs"]["proxy"]
    assert status_report(settings)["ok"] is True
