from shared.status import upstreams


def test_upstreams_as_the_latest_worker_sees_them_with_counts_summed():
    def worker(updated, healthy, in_flight, queued):
        return {
            "updated": updated,
            "upstreams": [
                {
                    "url": "http://gpu/v1",
                    "healthy": healthy,
                    "in_flight": in_flight,
                    "queued": queued,
                }
            ],
        }

    merged = upstreams([worker(1.0, False, 2, 5), worker(2.0, True, 1, 0), worker(1.5, True, 0, 3)])
    assert merged == [{"url": "http://gpu/v1", "healthy": True, "in_flight": 3, "queued": 8}]
    assert upstreams([]) == []
