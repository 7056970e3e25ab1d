"""How an upstream is reached and told who we are (shared/upstream_access.py)."""

from __future__ import annotations

import base64
import ssl
from dataclasses import replace

import pytest

from shared.settings import Settings
from shared.targets import parse_target_urls
from shared.upstream_access import credentials, proxy_url, tls_context


def one(entry: str):
    [upstream] = parse_target_urls(entry)
    return upstream


def test_credentials_in_each_auth_style_and_none_without_a_key():
    assert credentials(one("http://h|k1")) == ((b"authorization", b"Bearer k1"),)
    assert credentials(one("http://h|k1|auth=api-key")) == ((b"api-key", b"k1"),)
    basic = base64.b64encode(b"me:p@ss")
    assert credentials(one("http://me:p%40ss@h")) == ((b"authorization", b"Basic " + basic),)
    assert credentials(one("http://h")) == ()


def test_proxy_from_the_upstream_then_no_proxy_then_the_environment():
    settings = Settings(http_proxy="p:3128", https_proxy="http://s:3128", no_proxy="internal")
    assert proxy_url(one("http://h"), settings) == "http://p:3128"
    assert proxy_url(one("https://h"), settings) == "http://s:3128"
    assert proxy_url(one("http://internal:8000"), settings) == ""
    assert proxy_url(one("http://h|proxy=none"), settings) == ""
    assert proxy_url(one("http://internal|proxy=http://own:1"), settings) == "http://own:1"


def test_a_bad_ca_text_is_an_error_naming_the_upstream():
    upstream = replace(one("https://h"), ca_data="-----BEGIN CERTIFICATE-----\nnope\n", index=3)
    with pytest.raises(ValueError, match="upstream 3: TLS files"):
        tls_context(upstream, Settings())


def test_verification_off_only_where_asked():
    assert tls_context(one("https://h"), Settings()).verify_mode == ssl.CERT_REQUIRED
    assert tls_context(one("https://h|verify=false"), Settings()).verify_mode == ssl.CERT_NONE
