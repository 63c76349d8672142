"""One ``run``'s injection proxy: stand-ins, listeners, and what the sandbox is given.

Without network (bwrap's default) the listeners are Unix sockets in a fresh
0700 directory, bound into the sandbox, and the relay (``relay.py``) exposes
them on the sandbox's own loopback; otherwise (``--sandbox none``,
``--share-net``) they listen on the host's 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from aiohttp import web

from credproxy.audit import AuditLog
from credproxy.inject.intercept import HEAD_LIMIT, CertificateAuthority, ConnectFront
from credproxy.inject.proxy import InjectProxy, serve
from credproxy.inject.routes import InjectConfig, Route
from credproxy.inject.secrets import SecretSource, SecretUnavailable
from credproxy.inject.standin import SecretFormatError, check_secret, make_stand_in
from credproxy.inject.upstream import CheckedResolver
from credproxy.sandbox.spec import Mount

GUEST_DIR: Final = "/run/credproxy-inject"
GUEST_HTTP_PORT: Final = 18080
GUEST_CONNECT_PORT: Final = 18081
CA_FILE: Final = "ca-bundle.pem"
CA_ENV: Final = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)


class InjectSetupError(Exception):
    """The proxy cannot start; the message says what to do and holds no secret."""


class InjectSession:
    def __init__(
        self,
        routes: Sequence[Route],
        secrets: SecretSource,
        config: InjectConfig,
        *,
        intercept: Sequence[str] = (),
        audit: AuditLog | None = None,
        upstream_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._routes = {r.name: r for r in routes}
        self._secrets = secrets
        self._config = config
        self._intercept = tuple(intercept)
        self._audit = audit
        self._upstream_ssl = upstream_ssl
        self._dir: str | None = None
        self._relay = False
        self._http_port = 0
        self._connect_port = 0
        self._closers: list[tuple[web.Server | None, asyncio.Server]] = []
        self.stand_ins: dict[str, str] = {}
        self.proxy: InjectProxy | None = None
        self._front: ConnectFront | None = None

    async def _secret(self, route: Route) -> str:
        try:
            if route.credential_kind == "key":
                secret = await self._secrets.api_key(route.credential)
            else:
                secret = await self._secrets.access_token(route.credential, route.bucket)
            check_secret(secret, f"the credential of route {route.name}")
        except (SecretUnavailable, SecretFormatError) as exc:
            raise InjectSetupError(f"--inject {route.name}: {exc}") from None
        return secret

    async def start(self, *, relay: bool) -> None:
        """``relay``: listen on Unix sockets for the in-sandbox relay, else on 127.0.0.1."""
        self._relay = relay
        current = {name: await self._secret(route) for name, route in self._routes.items()}
        for name, route in self._routes.items():
            self.stand_ins[name] = make_stand_in(current[name], route.stand_in_prefix)
        self._dir = tempfile.mkdtemp(prefix="credproxy-inject-")
        self.proxy = InjectProxy(
            self._routes,
            self.stand_ins,
            self._secrets,
            audit=self._audit,
            hosts=self._config.resolve,
            upstream_ssl=self._upstream_ssl,
        )
        await self.proxy.start()
        for name, secret in current.items():
            self.proxy.prime(name, secret)
        del current
        self._http_port = await self._listen(self.proxy.handle_reverse, "http.sock")
        if self._intercept:
            await self._start_intercept()

    async def _start_intercept(self) -> None:
        assert self._dir is not None and self.proxy is not None
        intercepted = frozenset(
            (r.host, r.port) for r in self._routes.values() if r.host in self._intercept
        )
        ca = await asyncio.to_thread(CertificateAuthority)
        bundle = await asyncio.to_thread(_system_bundle)
        await asyncio.to_thread(Path(self._dir, CA_FILE).write_bytes, bundle + b"\n" + ca.pem)
        self._front = ConnectFront(
            ca,
            intercepted,
            self.proxy.handle_intercepted,
            blind_tunnels=self._config.tunnel == "blind",
            resolver=CheckedResolver(allow_private=False, hosts=self._config.resolve),
        )
        if self._relay:
            path = os.path.join(self._dir, "connect.sock")
            listener = await asyncio.start_unix_server(self._front.handle, path, limit=HEAD_LIMIT)
            self._closers.append((None, listener))
            self._connect_port = GUEST_CONNECT_PORT
        else:
            listener = await asyncio.start_server(
                self._front.handle, "127.0.0.1", 0, limit=HEAD_LIMIT
            )
            self._closers.append((None, listener))
            self._connect_port = listener.sockets[0].getsockname()[1]

    async def _listen(self, handler: object, name: str) -> int:
        assert self._dir is not None
        if self._relay:
            server, listener = await serve(handler, unix_path=os.path.join(self._dir, name))
            self._closers.append((server, listener))
            return GUEST_HTTP_PORT
        server, listener = await serve(handler, host="127.0.0.1")
        self._closers.append((server, listener))
        port: int = listener.sockets[0].getsockname()[1]
        return port

    def env(self) -> dict[str, str]:
        """What the command reads: base URLs, stand-ins and, with interception, proxy and CA."""
        env: dict[str, str] = {}
        for name, route in self._routes.items():
            if route.base_url_env:
                env[route.base_url_env] = f"http://127.0.0.1:{self._http_port}/{name}"
            if route.secret_env:
                env[route.secret_env] = self.stand_ins[name]
        if self._intercept:
            proxy = f"http://127.0.0.1:{self._connect_port}"
            bundle = self._ca_path()
            for key in ("HTTPS_PROXY", "https_proxy"):
                env[key] = proxy
            for key in ("NO_PROXY", "no_proxy"):
                env[key] = "127.0.0.1,localhost,::1"
            for key in CA_ENV:
                env[key] = bundle
            env["NODE_USE_ENV_PROXY"] = "1"
        return env

    def _ca_path(self) -> str:
        assert self._dir is not None
        return f"{GUEST_DIR}/{CA_FILE}" if self._relay else os.path.join(self._dir, CA_FILE)

    def mounts(self) -> tuple[Mount, ...]:
        """The sockets (and CA bundle) the sandbox needs, at fixed guest paths."""
        if not self._relay or self._dir is None:
            return ()
        names = ["http.sock"] + (["connect.sock", CA_FILE] if self._intercept else [])
        return tuple(
            Mount(os.path.join(self._dir, n), f"{GUEST_DIR}/{n}", read_only=n == CA_FILE)
            for n in names
        )

    def wrapper(self) -> tuple[str, ...]:
        """The relay that starts the command inside the sandbox (none without ``relay``)."""
        if not self._relay:
            return ()
        argv = [sys.executable, "-I", "-m", "credproxy.inject.relay"]
        argv += ["--listen", f"{GUEST_HTTP_PORT}={GUEST_DIR}/http.sock"]
        if self._intercept:
            argv += ["--listen", f"{GUEST_CONNECT_PORT}={GUEST_DIR}/connect.sock"]
        return (*argv, "--")

    async def aclose(self) -> None:
        for server, listener in self._closers:
            listener.close()
            if server is not None:
                await server.shutdown(1.0)
        self._closers.clear()
        if self._front is not None:
            await self._front.aclose()
        if self.proxy is not None:
            await self.proxy.aclose()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _system_bundle() -> bytes:
    """The trust store the command had, so tunnelled hosts still verify."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate:
            with contextlib.suppress(OSError):
                return Path(candidate).read_bytes()
    return b""


def check_intercept(routes: Mapping[str, Route], hosts: Sequence[str]) -> None:
    """Every ``--intercept`` host must be the upstream of an injected route."""
    served = {r.host for r in routes.values()}
    for host in hosts:
        if host.lower() not in served:
            raise InjectSetupError(
                f"--intercept {host}: no --inject route has that upstream host "
                f"(routes go to: {', '.join(sorted(served)) or 'none'})"
            )
