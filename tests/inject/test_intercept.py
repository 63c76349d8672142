"""The per-run CA and the CONNECT front, against real TLS clients in this process."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Literal

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from credproxy.inject.intercept import CertificateAuthority, ConnectFront, parse_connect
from credproxy.inject.routes import InjectConfig, RouteConfig, parse_routes
from credproxy.inject.secrets import StoreSecrets
from credproxy.inject.service import InjectSession
from credproxy.inject.upstream import CheckedResolver
from credproxy.store.memory import MemoryStore
from tests.inject.upstream import API_HOST, CANARY, Upstream


def _strict_client(ca: CertificateAuthority) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.pem.decode())
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


async def test_leaf_certificates_pass_strict_x509_verification_for_names_and_addresses() -> None:
    ca = CertificateAuthority()
    for host in ("api.github.com", "127.0.0.1"):
        server = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.1", 0, ssl=ca.server_context(host)
        )
        port = server.sockets[0].getsockname()[1]
        async with server:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=_strict_client(ca), server_hostname=host
            )
            peer = writer.get_extra_info("peercert")
            writer.close()
        assert peer is not None
    leaf = ca.leaf("api.github.com")
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).critical


async def test_a_leaf_for_another_name_fails_verification() -> None:
    ca = CertificateAuthority()
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=ca.server_context("api.github.com")
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=_strict_client(ca), server_hostname="evil.test"
            )


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"CONNECT api.github.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", ("api.github.com", 443)),
        (b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n", ("::1", 8443)),
    ],
)
def test_connect_heads_parse_to_host_and_port(head: bytes, expected: tuple[str, int]) -> None:
    assert parse_connect(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://x/ HTTP/1.1\r\n\r\n",
        b"CONNECT api.github.com HTTP/1.1\r\n\r\n",
        b"CONNECT a b:443 HTTP/1.1\r\n\r\n",
        b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n",
        b"CONNECT x:99999 HTTP/1.1\r\n\r\n",
    ],
)
def test_anything_but_a_well_formed_connect_is_refused(head: bytes) -> None:
    with pytest.raises(ValueError):
        parse_connect(head)


async def _session(
    upstream: Upstream, tunnel: Literal["refuse", "blind"]
) -> tuple[InjectSession, dict[str, str]]:
    store = MemoryStore()
    await store.set_key("api", CANARY)
    route = RouteConfig(
        upstream=upstream.url(API_HOST), key="api", header="x-api-key", allow_private=True
    )
    routes = parse_routes({"api": route})
    session = InjectSession(
        [routes["api"]],
        StoreSecrets(store, None),
        InjectConfig(resolve={API_HOST: "127.0.0.1", "evil.test": "127.0.0.1"}, tunnel=tunnel),
        intercept=[API_HOST],
        upstream_ssl=upstream.client_ssl,
    )
    await session.start(relay=False)
    return session, session.env()


async def test_an_intercepted_request_gets_the_secret_and_the_ca_key_is_never_on_disk(
    upstream: Upstream,
) -> None:
    session, env = await _session(upstream, "refuse")
    try:
        bundle = Path(env["SSL_CERT_FILE"])
        assert {env[k] for k in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")} == {
            str(bundle)
        }
        assert env["NODE_EXTRA_CA_CERTS"] == str(bundle)
        assert env["NODE_USE_ENV_PROXY"] == "1"
        for path in bundle.parent.iterdir():
            if path.is_file():
                assert b"PRIVATE KEY" not in path.read_bytes(), path
        client_ssl = ssl.create_default_context(cafile=str(bundle))
        client_ssl.verify_flags |= ssl.VERIFY_X509_STRICT
        async with aiohttp.ClientSession() as client:
            async with client.get(
                f"{upstream.url(API_HOST)}/v1/echo",
                proxy=env["HTTPS_PROXY"],
                ssl=client_ssl,
                headers={"x-api-key": session.stand_ins["api"]},
            ) as response:
                body = await response.read()
            assert response.status == 200
            assert upstream.seen[-1].headers["x-api-key"] == CANARY
            assert CANARY.encode() not in body
            with pytest.raises(aiohttp.ClientHttpProxyError) as refused:
                await client.get(
                    f"https://evil.test:{upstream.port}/", proxy=env["HTTPS_PROXY"], ssl=client_ssl
                )
            assert refused.value.status == 403
    finally:
        await session.aclose()
    assert not bundle.exists()


async def test_a_blind_tunnel_still_refuses_private_addresses(upstream: Upstream) -> None:
    session, env = await _session(upstream, "blind")
    try:
        async with aiohttp.ClientSession() as client:
            with pytest.raises(aiohttp.ClientHttpProxyError) as refused:
                await client.get(f"https://evil.test:{upstream.port}/", proxy=env["HTTPS_PROXY"])
        assert refused.value.status == 403
        assert len(upstream.seen) == 0
    finally:
        await session.aclose()


async def test_a_blind_tunnel_passes_tls_through_undecrypted() -> None:
    """The tunnel's far end is a plain TLS server we control on a public-looking name."""
    ca = CertificateAuthority()
    received: list[bytes] = []

    async def far_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readexactly(5))
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    far = await asyncio.start_server(far_end, "127.0.0.1", 0)
    port = far.sockets[0].getsockname()[1]
    front = ConnectFront(
        ca,
        frozenset(),
        lambda *a: None,
        blind_tunnels=True,
        resolver=CheckedResolver(allow_private=True, hosts={"far.test": "127.0.0.1"}),
    )
    listener = await asyncio.start_server(front.handle, "127.0.0.1", 0)
    async with far, listener:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listener.sockets[0].getsockname()[1]
        )
        writer.write(f"CONNECT far.test:{port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"ping!")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
    assert received == [b"ping!"]
