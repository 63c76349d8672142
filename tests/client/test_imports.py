"""The client stays small: it never pulls in the host side or heavy libraries.

Nor msgspec: the client frames with the standard ``json`` module and checks
payloads against ``protocol.ops``, since importing msgspec alone costs a
sandbox command about a third of its start-up. msgspec loads only for a
payload that must go through its schema (``ClientCore.send_request``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from tests.fixtures.daemon import DaemonFactory, DaemonHandle, run_in_sandbox_env

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


def test_client_and_its_protocol_modules_import_no_msgspec() -> None:
    modules = loaded_modules(
        """
        import credproxy.client, credproxy.client.commands, credproxy.client.login
        from credproxy.client import AsyncProxyClient
        import credproxy.protocol
        from credproxy.protocol import FrameDecoder, encode_frame
        import credproxy.protocol.ops, credproxy.protocol.version, credproxy.tokens
        """
    )
    assert "credproxy.protocol.framing" in modules
    assert [m for m in modules if m.split(".")[0] == "msgspec"] == []
    assert "credproxy.protocol.messages" not in modules


def test_a_payload_only_the_schema_can_judge_loads_msgspec_then() -> None:
    """The lazy half of the payload check: a bad name is worded by the daemon's schema."""
    modules = loaded_modules(
        """
        from credproxy.client import InvalidRequestError
        from credproxy.client._core import ClientCore
        from credproxy.protocol.codec import STDLIB_JSON
        from credproxy.protocol.framing import encode_frame
        core = ClientCore(None)
        core.initiate_handshake()
        answer = {"v": 2, "op": "handshake", "ok": True, "data": {"version": 2}}
        core.receive_data(encode_frame(answer, codec=STDLIB_JSON))
        import sys
        assert "msgspec" not in sys.modules
        core.send_request("get_token", {"provider": "gemini", "bucket": "default"})
        assert "msgspec" not in sys.modules
        try:
            core.send_request("get_token", {"provider": "no/such name"})
        except InvalidRequestError as exc:
            assert "payload.provider" in exc.message, exc.message
        else:
            raise AssertionError("a bad name was sent")
        """
    )
    assert "credproxy.protocol.messages" in modules


SLOW_TO_IMPORT = (
    "msgspec",
    "credproxy.protocol.messages",
    "dataclasses",
    "inspect",
    "uuid",
    "platform",
    "random",
)
"""What a sandbox command used to load besides its work: msgspec (framing and
schemas), ``dataclasses`` with ``inspect`` (records), ``uuid`` with ``platform``
(request ids) and ``random`` (retry jitter); together about half its import
time, more with a cold page cache (docs/performance.md)."""

HOST_SIDE_OF_THE_CLI = (
    "credproxy.cli.serve",
    "credproxy.cli.run",
    "credproxy.cli.login",
    "credproxy.cli.store_commands",
    "credproxy.cli.doctor",
    "credproxy.sandbox",
    "credproxy.settings",
    "asyncio",
    "platformdirs",
)


def modules_of_a_command(daemon: DaemonHandle, *args: str) -> list[str]:
    """What a real ``credproxy ARGS`` run in a "sandbox" (socket and fd) had imported
    when it exited: the console script's own lines, then sys.modules at exit."""
    script = textwrap.dedent(
        """
        import atexit, json, sys
        atexit.register(lambda: sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules))))
        from credproxy.console import main
        sys.argv[0] = "credproxy"
        main()
        """
    )
    done = run_in_sandbox_env(daemon, [sys.executable, "-c", script, *args])
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stderr.rsplit("MODULES ", 1)[1])
    return modules


def test_sandbox_commands_load_nothing_of_the_host_side(credproxy_daemon: DaemonFactory) -> None:
    """`credproxy token get` used to import every command module (serve, run, login,
    the store commands and through them the sandbox launcher) and click before
    running, and msgspec through protocol/; a plain sandbox command line now
    loads none of them, nor the rest of ``SLOW_TO_IMPORT``."""
    token = {"access_token": "import-test", "expiry": time.time() + 3600}
    daemon = credproxy_daemon(tokens={("alpha", "default"): token}, keys={"openai": "sk-i"})
    for command in (("token", "get", "alpha"), ("key", "get", "openai"), ("status",)):
        modules = modules_of_a_command(daemon, *command)
        assert "credproxy.client._sync" in modules, command
        loaded = [
            m
            for m in modules
            if any(
                m == f or m.startswith(f + ".")
                for f in (
                    *FORBIDDEN,
                    *HOST_SIDE_OF_THE_CLI,
                    *SLOW_TO_IMPORT,
                    "click",
                    "credproxy.cli",
                    "credproxy.protocol.server",
                )
            )
        ]
        assert loaded == [], command
