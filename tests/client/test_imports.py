"""The client stays small: it never pulls in the host side or heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

FORBIDDEN = (
    "credproxy.server",
    "credproxy.store",
    "credproxy.oauth",
    "credproxy.sessions",
    "credproxy.refresh",
    "credproxy.audit",
    "aiohttp",
    "rich",
    "cryptography",
    "keyring",
    "secretstorage",
)


def loaded_modules(code: str) -> list[str]:
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    modules: list[str] = json.loads(result.stdout.splitlines()[-1])
    return modules


def forbidden_in(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_client_package_and_both_clients_import_nothing_from_the_host_side() -> None:
    modules = loaded_modules(
        """
        import credproxy.client
        from credproxy.client import AsyncProxyClient, ProxyClient
        import credproxy.client.env
        import credproxy.client.login
        """
    )
    assert "credproxy.client._async" in modules
    assert forbidden_in(modules) == []


def test_sync_client_import_does_not_load_asyncio() -> None:
    modules = loaded_modules("from credproxy.client import ProxyClient, discover")
    assert "asyncio" not in modules
