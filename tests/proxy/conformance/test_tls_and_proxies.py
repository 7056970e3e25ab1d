"""TLS (a private CA, verification off, a client certificate) against openssl s_server, and
egress proxies (plain requests in absolute form, TLS through CONNECT, proxy credentials)."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from pathlib import Path

import pytest

from services.proxy.endpoints import endpoint_for
from services.proxy.upstream import Busy, CertificateRefused, Proxy, ReadTimeout, UpstreamError
from shared.settings import Settings
from shared.targets import parse_target_urls
from tests.proxy.conformance.conftest import drive, whole
from tests.proxy.conformance.servers import (
    Certificates,
    Scripted,
    openssl_server,
    read_request,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certs"))


def reach(kind: str, target: str, **settings: object) -> tuple[int, bytes]:
    [upstream] = parse_target_urls(target)
    where = endpoint_for(upstream, Settings(**settings))  # type: ignore[arg-type]

    async def scenario(client):
        answer = await client.request(where, "GET", b"/", [], b"")
        return answer.status, await whole(answer)

    return drive(kind, scenario)


def test_an_unknown_ca_is_a_refused_certificate_not_a_missing_model(kind, certs):
    with openssl_server(certs) as url, pytest.raises(CertificateRefused):
        reach(kind, url)


def test_a_private_ca_bundle_globally_or_per_upstream_and_verification_off(kind, certs):
    with openssl_server(certs) as url:
        assert reach(kind, url, upstream_ca_bundle=str(certs.ca))[0] == 200
        assert reach(kind, f"{url}|ca={certs.ca}")[0] == 200
        assert reach(kind, f"{url}|verify=false")[0] == 200


def test_a_ca_given_as_pem_text_replaces_the_global_bundle(kind, certs, tmp_path):
    """data/upstreams.json's `caPem`: the upstream's own CA, even where a global bundle that
    does not hold it is set."""
    elsewhere = Certificates(tmp_path)  # another CA, the global one here
    with openssl_server(certs) as url:
        [upstream] = parse_target_urls(url)
        own = replace(upstream, ca_data=certs.ca.read_text())
        settings = Settings(upstream_ca_bundle=str(elsewhere.ca))

        async def scenario(client):
            answer = await client.request(endpoint_for(own, settings), "GET", b"/", [], b"")
            return answer.status, await whole(answer)

        assert drive(kind, scenario)[0] == 200
        with pytest.raises(CertificateRefused):
            reach(kind, url, upstream_ca_bundle=str(elsewhere.ca))


def test_a_client_certificate_is_presented_when_asked_for(kind, certs):
    with openssl_server(certs, client_ca=True) as url:
        status, body = reach(
            kind, f"{url}|ca={certs.ca}|cert={certs.client}|cert-key={certs.client_key}"
        )
        assert status == 200 and b"s_server" in body
        with pytest.raises(UpstreamError) as refused:  # without: refused in or after the handshake
            reach(kind, f"{url}|ca={certs.ca}")
        assert not isinstance(refused.value, ReadTimeout | Busy)  # refused, not silent or busy


class ForwardProxy:
    """A scripted HTTP proxy: CONNECT tunnels, and plain requests in absolute form answered
    itself; it records what it was asked."""

    def __init__(self, upstream_port: int | None = None) -> None:
        self.heads: list[bytes] = []
        self.upstream_port = upstream_port
        self.server = Scripted(self.handle)

    async def handle(self, server: Scripted, reader, writer) -> None:
        request = await read_request(reader)
        self.heads.append(request.split(b"\r\n\r\n")[0])
        if not request.startswith(b"CONNECT "):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")
            await writer.drain()
            return
        host, _, port = request.split(b" ")[1].rpartition(b":")
        up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_plain_requests_go_to_the_proxy_in_absolute_form_with_its_credentials(kind):
    proxy = ForwardProxy()
    with proxy.server:
        status, body = reach(
            kind,
            "http://upstream.invalid:8000/v1",
            http_proxy=f"http://user:secret@127.0.0.1:{proxy.server.port}",
        )
    assert (status, body) == (200, b"proxied")
    head = proxy.heads[0].lower()
    assert head.startswith(b"get http://upstream.invalid:8000/ http/1.1")
    assert b"proxy-authorization: basic " + base64.b64encode(b"user:secret").lower() in head


def test_tls_goes_through_the_proxy_s_connect_and_no_proxy_and_per_upstream_none_bypass(
    kind, certs
):
    proxy = ForwardProxy()
    with openssl_server(certs) as url, proxy.server:
        via = f"http://127.0.0.1:{proxy.server.port}"
        status, body = reach(kind, f"{url}|ca={certs.ca}", https_proxy=via)
        assert status == 200 and b"s_server" in body
        assert proxy.heads[0].startswith(b"CONNECT 127.0.0.1:")
        reach(kind, f"{url}|ca={certs.ca}", https_proxy=via, no_proxy="127.0.0.1")
        reach(kind, f"{url}|ca={certs.ca}|proxy=none", https_proxy=via)
    assert len(proxy.heads) == 1  # the last two went direct


def test_the_endpoint_takes_the_proxy_from_settings_and_the_upstream_option():
    [a, b] = parse_target_urls("https://x.example, http://y.example|proxy=http://p:3128")
    settings = Settings(https_proxy="http://u:p@gw:8080", no_proxy="")
    assert endpoint_for(a, settings).proxy == Proxy(
        "gw", 8080, b"Basic " + base64.b64encode(b"u:p")
    )
    assert endpoint_for(b, settings).proxy == Proxy("p", 3128)


def test_a_ca_bundle_that_cannot_be_read_stops_the_start(tmp_path: Path):
    [a] = parse_target_urls(f"https://x.example|ca={tmp_path / 'missing.pem'}")
    with pytest.raises(ValueError, match="upstream 1: TLS files"):
        endpoint_for(a, Settings())
