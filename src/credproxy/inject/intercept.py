"""Opt-in HTTPS interception for tools that cannot change their base URL (``gh``, ``git``).

The sandbox gets ``HTTPS_PROXY``; a CONNECT to an intercepted host is
answered with TLS under a leaf certificate from a CA made for this ``run``,
and the decrypted requests go to the same route handling as the reverse
proxy. The CA's private key exists only in this process's memory; the leaf
key and certificate are loaded from a memfd, never a file. Leaf certificates
carry what strict verifiers (OpenSSL's ``X509_V_FLAG_X509_STRICT``, Python
3.13's default ``VERIFY_X509_STRICT``) require: the name in SAN, the
serverAuth extended key usage, critical basic constraints and key usage, and
subject and authority key identifiers. A CONNECT to any other host is
refused, or with ``blind`` tunnels passed through to a checked address
without being decrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import ssl
from collections.abc import Callable
from typing import Final

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from credproxy.inject.proxy import MAX_CONNECTIONS, CountedProtocol
from credproxy.inject.upstream import CheckedResolver, UpstreamRefused

HEAD_LIMIT: Final = 16 * 1024
HEAD_TIMEOUT_S: Final = 15.0
CA_LIFETIME: Final = datetime.timedelta(days=30)
CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9.-]{1,253}\Z")
_CONNECT_RE: Final = re.compile(rb"^CONNECT (\S{1,300}) HTTP/1\.[01]\r\n")


class CertificateAuthority:
    """A CA for one ``run``: key in memory only, leaf certificates made on demand."""

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "credproxy"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"credproxy run CA {secrets.token_hex(4)}"),
            ]
        )
        self._ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self.not_after = now + CA_LIFETIME
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(self._ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self._contexts: dict[str, ssl.SSLContext] = {}

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def leaf(self, host: str) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            alt = x509.DNSName(host)
        public = self._leaf_key.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(self.not_after)
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting ``host``'s leaf; loaded through a memfd."""
        cached = self._contexts.get(host)
        if cached is not None:
            return cached
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        material = self.leaf(host).public_bytes(
            serialization.Encoding.PEM
        ) + self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.memfd_create("credproxy-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, material)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        self._contexts[host] = context
        return context


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs TLS handshakes (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def parse_connect(head: bytes) -> tuple[str, int]:
    """The ``host`` and ``port`` of a CONNECT request head; ``ValueError`` if it is not one."""
    match = _CONNECT_RE.match(head)
    if match is None:
        raise ValueError("only CONNECT is served here")
    authority = match.group(1).decode("ascii", "replace")
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest.removeprefix(":")
        ipaddress.IPv6Address(host)
    else:
        host, _, port_text = authority.rpartition(":")
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("CONNECT needs HOST:PORT")
    if not authority.startswith("[") and not _HOST_RE.match(host):
        raise ValueError("CONNECT host is not a host name")
    return host.lower().rstrip("."), int(port_text)


Handler = Callable[[str, int, web.BaseRequest], object]


class ConnectFront:
    """Answers CONNECT: intercept, tunnel blindly, or refuse."""

    def __init__(
        self,
        ca: CertificateAuthority,
        intercepted: frozenset[tuple[str, int]],
        handler: Handler,
        *,
        blind_tunnels: bool,
        resolver: CheckedResolver,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.max_connections = max_connections
        self.open = 0
        self._ca = ca
        self._intercepted = intercepted
        self._handler = handler
        self._blind = blind_tunnels
        self._resolver = resolver
        self._servers: dict[tuple[str, int], web.Server] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One CONNECT, for the whole life of its tunnel; past the cap, closed at once."""
        if self.open >= self.max_connections:
            writer.transport.abort()
            return
        self.open += 1
        try:
            await self._handle(reader, writer)
        finally:
            self.open -= 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            host, port = parse_connect(head)
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            await _answer(writer, 405, "this proxy only serves CONNECT HOST:PORT")
            return
        except (ConnectionError, OSError):
            writer.transport.abort()
            return
        if (host, port) in self._intercepted:
            await self._intercept(host, port, reader, writer)
        elif self._blind:
            await self._tunnel(host, port, reader, writer)
        else:
            await _answer(
                writer,
                403,
                f"credproxy: {host}:{port} is not intercepted in this run "
                "and blind tunnels are off",
            )

    async def _intercept(
        self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        server = self._servers.get((host, port))
        if server is None:

            async def serve(request: web.BaseRequest) -> web.StreamResponse:
                response = await self._handler(host, port, request)  # type: ignore[misc]
                assert isinstance(response, web.StreamResponse)
                return response

            server = web.Server(serve)
            self._servers[(host, port)] = server
        loop = asyncio.get_running_loop()
        protocol = CountedProtocol(server())
        protocol.hold_data()
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        try:
            await writer.drain()
            # TLS goes straight to aiohttp's protocol, so no request byte can land
            # in the CONNECT reader between the handshake and the hand-over.
            tls = await loop.start_tls(
                writer.transport,
                protocol,
                self._ca.server_context(host),
                server_side=True,
                ssl_handshake_timeout=HEAD_TIMEOUT_S,
            )
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError):
            writer.transport.abort()
            return
        if tls is None:
            return
        protocol.connection_made(tls)
        # Holding the writer until the connection ends keeps it from being
        # collected, which would close the transport under aiohttp.
        await protocol.closed
        del writer

    async def _tunnel(
        self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            addresses = await self._resolver.resolve(host, port)
            upstream_reader, upstream_writer = await asyncio.open_connection(
                addresses[0]["host"], port
            )
        except UpstreamRefused as exc:
            await _answer(writer, 403, f"credproxy: {exc}")
            return
        except OSError:
            await _answer(writer, 502, f"credproxy: cannot connect to {host}:{port}")
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await asyncio.gather(
            _copy(reader, upstream_writer), _copy(upstream_reader, writer), return_exceptions=True
        )
        for side in (writer, upstream_writer):
            side.close()

    async def aclose(self) -> None:
        for server in self._servers.values():
            await server.shutdown(1.0)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(1 << 16):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    reason = {403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway"}[status]
    body = (message + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
    writer.close()
