"""data/upstreams.json: its rules, TARGET_URLS's seed, and its writer (shared/fleet.py)."""

from __future__ import annotations

import json
import stat
import threading

import pytest

from shared.fleet import (
    Alias,
    Deployment,
    Fleet,
    FleetError,
    FleetFile,
    UpstreamEntry,
    dump,
    from_targets,
    parse_fleet,
    read_fleet,
)
from shared.targets import Upstream, parse_target_urls


def fleet_json(upstreams: list[dict], aliases: list[dict] | None = None) -> bytes:
    return json.dumps({"version": 1, "upstreams": upstreams, "aliases": aliases or []}).encode()


def test_from_targets_keeps_every_target_urls_option():
    targets = parse_target_urls(
        "http://a:1|k1|concurrency=2|auth=api-key,https://u:p%40ss@b/v2|verify=false|proxy=none"
        ",https://c|ca=/etc/ca.pem|cert=/c.pem|cert-key=/k.pem|keepalive=5|proxy=http://p:3"
    )
    fleet = from_targets(targets)
    assert [u.id for u in fleet.upstreams] == ["target-1", "target-2", "target-3"]
    assert fleet.upstreams[1].auth == "basic" and fleet.upstreams[1].key == "u:p@ss"
    # Back to the proxy's view: the same upstreams, option for option.
    assert fleet.targets() == targets
    assert parse_fleet(dump(fleet)) == fleet


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ({"url": "ftp://h"}, "upstreams.0.url"),
        ({"url": "http://u:p@h"}, 'auth "basic"'),
        ({"url": "http://h/v1?x=1"}, "without query"),
        ({"url": "http://h|k"}, "upstreams.0.url"),
        ({"url": "http://h", "key": "two words"}, "upstreams.0.key"),
        ({"url": "http://h", "key": "k\r\nx-evil: 1"}, "upstreams.0.key"),
        ({"url": "http://h", "auth": "basic", "key": "nopair"}, "user:password"),
        ({"url": "http://h", "auth": "digest"}, "upstreams.0.auth"),
        ({"url": "http://h", "concurrency": "4"}, "upstreams.0.concurrency"),
        ({"url": "http://h", "concurrency": 0}, "upstreams.0.concurrency"),
        ({"url": "http://h", "verify": "false"}, "upstreams.0.verify"),
        ({"url": "http://h", "caPem": "not a certificate"}, "not PEM"),
        ({"url": "http://h", "proxy": "socks5://p:1"}, "http:// URL"),
        ({"url": "http://h", "keepalive": 7200}, "upstreams.0.keepalive"),
        ({"url": "http://h", "models": []}, "upstreams.0.models"),
        ({"url": "http://h", "models": ["a b"]}, "upstreams.0.models.0"),
        ({"url": "http://h", "extra": 1}, "upstreams.0.extra"),
        ({"url": "http://h", "name": "tab\there"}, "upstreams.0.name"),
    ],
)
def test_a_bad_upstream_is_refused_saying_where(upstream, message):
    with pytest.raises(FleetError) as caught:
        parse_fleet(fleet_json([{"id": "x", **upstream}]))
    assert message in str(caught.value)


def _alias(name: str, fallback: str | None = None) -> dict[str, object]:
    alias: dict[str, object] = {"name": name, "deployments": [{"upstream": "x", "model": "m"}]}
    return alias if fallback is None else {**alias, "fallback": fallback}


def test_a_chain_of_fallbacks_is_kept():
    chain = [_alias("a", "b"), _alias("b", "c"), _alias("c", "d"), _alias("d")]
    fleet = parse_fleet(fleet_json([{"id": "x", "url": "http://h"}], chain))
    assert [(a.name, a.fallback, a.strategy) for a in fleet.aliases] == [
        ("a", "b", "weighted"),
        ("b", "c", "weighted"),
        ("c", "d", "weighted"),
        ("d", None, "weighted"),
    ]


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ([{"name": "a", "deployments": []}], "aliases.0.deployments"),
        ([{"name": "a", "deployments": [{"upstream": "nope", "model": "m"}]}], "does not exist"),
        ([{"name": "a b", "deployments": [{"upstream": "x", "model": "m"}]}], "aliases.0.name"),
        ([{"name": "a", "deployments": [{"upstream": "x", "model": "m", "weight": 0}]}], "weight"),
        (
            [
                {"name": "a", "deployments": [{"upstream": "x", "model": "m"}]},
                {"name": "a", "deployments": [{"upstream": "x", "model": "n"}]},
            ],
            "same name",
        ),
        ([_alias("a", "b")], "falls back to 'b', which is no alias"),
        ([_alias("a", "a")], "falls back to itself"),
        ([_alias("a", "b"), _alias("b", "c"), _alias("c", "a")], "falls back to itself"),
        (
            [_alias("a", "b"), _alias("b", "c"), _alias("c", "d"), _alias("d", "e"), _alias("e")],
            "more than 3 fallbacks",
        ),
        ([{**_alias("a"), "strategy": "fastest"}], "strategy"),
    ],
)
def test_a_bad_alias_is_refused_saying_where(aliases, message):
    with pytest.raises(FleetError) as caught:
        parse_fleet(fleet_json([{"id": "x", "url": "http://h"}], aliases))
    assert message in str(caught.value)


def test_two_upstreams_with_one_id_are_refused():
    with pytest.raises(FleetError, match="same id"):
        parse_fleet(fleet_json([{"id": "x", "url": "http://h"}, {"id": "x", "url": "http://g"}]))


def test_read_fleet_none_without_a_file_and_an_error_for_a_broken_one(tmp_path):
    path = tmp_path / "upstreams.json"
    assert read_fleet(path) is None
    path.write_text("{")
    with pytest.raises(FleetError, match="Invalid JSON"):
        read_fleet(path)


def test_the_first_change_writes_the_seed_and_the_change_privately(tmp_path):
    path = tmp_path / "upstreams.json"
    seed = parse_target_urls("http://a:1|secret-a")
    fleet_file = FleetFile(path, seed)
    assert fleet_file.read() == (from_targets(seed), False)

    def add(fleet: Fleet) -> Fleet:
        fleet.upstreams.append(UpstreamEntry(id="new", url="http://b:2"))
        fleet.aliases.append(
            Alias(name="chat", deployments=[Deployment(upstream="new", model="m")])
        )
        return fleet

    fleet_file.change(add)
    fleet, from_file = fleet_file.read()
    assert from_file
    assert [u.id for u in fleet.upstreams] == ["target-1", "new"]
    assert fleet.upstreams[0].key == "secret-a"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fleet.targets()[1] == Upstream("http://b:2", "/v1")


def test_a_change_that_breaks_a_rule_writes_nothing(tmp_path):
    path = tmp_path / "upstreams.json"
    fleet_file = FleetFile(path, ())

    def orphan(fleet: Fleet) -> Fleet:
        fleet.aliases.append(Alias(name="chat", deployments=[Deployment(upstream="x", model="m")]))
        return fleet

    with pytest.raises(ValueError, match="does not exist"):
        fleet_file.change(orphan)
    assert not path.exists()


def test_an_unreadable_file_is_never_written_over(tmp_path):
    path = tmp_path / "upstreams.json"
    path.write_text("{broken")
    with pytest.raises(FleetError):
        FleetFile(path, ()).change(lambda fleet: fleet)
    assert path.read_text() == "{broken"


def test_concurrent_changes_are_all_kept(tmp_path):
    fleet_file = FleetFile(tmp_path / "upstreams.json", ())

    def add(number: int) -> None:
        def edit(fleet: Fleet) -> Fleet:
            fleet.upstreams.append(UpstreamEntry(id=f"u{number}", url=f"http://h{number}"))
            return fleet

        fleet_file.change(edit)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(u.id for u in fleet_file.read()[0].upstreams) == [f"u{n}" for n in range(8)]
