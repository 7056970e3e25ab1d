"""shared/site.py: validation of what the admin sends, and the site.json contract."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from shared.site import (
    Site,
    SiteError,
    covers,
    read_site,
    update_site,
    valid_cidr,
    valid_domain,
    valid_domains,
    write_site,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", "example.com"),
        ("LLM.Example.COM.", "llm.example.com"),
        ("*.example.com", "*.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c0.io", "a-b.c0.io"),
    ],
)
def test_valid_domains(value, expected):
    assert valid_domain(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "x.com; evil",
        "x.com\nevil.com",
        "x.com}",
        "a b.com",
        "-x.com",
        "x-.com",
        "x..com",
        "localhost",
        "*.com",
        "a.*.com",
        "**.example.com",
        "1.2.3.4",
        "x.com$host",
        "x_y.com",
        "x." + "a" * 64 + ".com",
        ".".join(["abcdefghi"] * 26) + ".com",
        "",
        42,
        None,
    ],
)
def test_invalid_domains(value):
    with pytest.raises(SiteError, match="Invalid domain"):
        valid_domain(value)


def test_domain_lists():
    assert valid_domains(["a.example", "A.example", "*.example.com"]) == (
        "a.example",
        "*.example.com",
    )
    for bad in ([], "a.example", None, ["a.example"] * 0, [f"h{i}.example" for i in range(101)]):
        with pytest.raises(SiteError):
            valid_domains(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("203.0.113.7", "203.0.113.7/32"),
        ("::1", "::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
    ],
)
def test_valid_cidrs(value, expected):
    assert valid_cidr(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "1.2.3.4/33",
        "1.2.3.4/-1",
        "300.1.1.1",
        "10.0.0.0/8; allow all",
        "all",
        "fe80::1%eth0",
        "::1/129",
        "",
        7,
        ["10.0.0.0/8"],
    ],
)
def test_invalid_cidrs(value):
    with pytest.raises(SiteError, match="Invalid CIDR"):
        valid_cidr(value)


def test_wildcards_cover_one_label():
    assert covers(["*.example.com"], "a.example.com")
    assert not covers(["*.example.com"], "example.com")
    assert not covers(["*.example.com"], "a.b.example.com")
    assert covers(["example.com", "*.example.com"], "example.com")


def test_wanted_certificates_cover_the_site_domains():
    site = Site(domains=("llm.example.com",))
    assert [(c.name, c.domains) for c in site.wanted_certificates()] == [
        ("llm.example.com", ("llm.example.com",))
    ]
    wildcard = site.with_certificate(["*.example.com", "example.com"])
    assert [c.name for c in wildcard.wanted_certificates()] == ["example.com"]
    # Asking again under the same name replaces the domains.
    again = wildcard.with_certificate(["example.com"])
    assert [c.domains for c in again.certificates] == [("example.com",)]


def test_round_trip_and_generations(tmp_path):
    path = tmp_path / "site.json"
    assert read_site(path) == Site()
    site = Site(
        5, ("a.example",), ("10.0.0.0/8",), "me@example.com", "serve", "x;", (), 2, 3
    ).with_certificate(["a.example", "*.a.example"])
    write_site(path, site)
    assert read_site(path) == site
    assert (path.stat().st_mode & 0o777) == 0o600

    def bump(_: int) -> None:
        update_site(path, lambda s: replace(s, reload_requested=s.reload_requested + 1))

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = read_site(path)
    assert (final.generation, final.reload_requested) == (25, 22)


@pytest.mark.parametrize(
    "text",
    [
        "[",
        "[]",
        '{"generation": -1}',
        '{"generation": true}',
        '{"domains": ["x.com; evil"]}',
        '{"cidrGroups": ["1.2.3.4/33"]}',
        '{"httpMode": "open"}',
        '{"customConfig": 1}',
        '{"certificates": [{"domains": []}]}',
    ],
)
def test_invalid_site_files_are_errors(tmp_path, text):
    path = tmp_path / "site.json"
    path.write_text(text)
    with pytest.raises(SiteError):
        read_site(path)
