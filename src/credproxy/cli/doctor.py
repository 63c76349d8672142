"""``credproxy doctor``: what this machine has for credproxy, each finding with its fix.

Read-only: it opens the store (which may ask for its passphrase on a
terminal) but creates nothing, and never shows a credential. Exit 1 when
any check fails, so scripts can gate on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import click

from credproxy.cli import main
from credproxy.cli._daemon_options import STORE_HELP, config_option, store_choice

if TYPE_CHECKING:
    from credproxy.settings import Settings

Status = Literal["ok", "info", "warn", "fail"]

PROBE_TIMEOUT_S: Final = 10.0
SUN_PATH_MAX: Final = 107
SOCKET_NAME_BYTES: Final = len("4194304-") + 32 + len(".sock")
"""The longest default socket name: a pid, its nonce and the suffix."""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _run_probe(*command: str) -> tuple[bool, str]:
    """Run a short probe; success and its first line of output (or of its error)."""
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    lines = (done.stdout if done.returncode == 0 else done.stderr or done.stdout).splitlines()
    return done.returncode == 0, lines[0].strip() if lines else ""


def check_python() -> Check:
    # credproxy does not import on Python older than 3.11, so reaching here is the check.
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", "ok", f"Python {version} at {sys.executable}")


def check_bubblewrap() -> Check:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check(
            "bubblewrap",
            "warn",
            "bwrap not found: `credproxy run --sandbox bwrap` (the default) cannot start",
            "sudo apt-get install bubblewrap",
        )
    works, output = _run_probe(bwrap, "--ro-bind", "/", "/", "--unshare-user", "--", "true")
    if not works:
        return Check(
            "bubblewrap",
            "fail",
            f"{bwrap} cannot create a sandbox: {output}",
            "allow unprivileged user namespaces (Ubuntu 24.04: sudo sysctl -w "
            "kernel.apparmor_restrict_unprivileged_userns=0), or use --sandbox podman",
        )
    return Check("bubblewrap", "ok", f"{bwrap} starts sandboxes")


def check_container(name: str) -> Check:
    program = shutil.which(name)
    if program is None:
        return Check(
            name,
            "info",
            f"{name} not installed (needed only for `credproxy run --sandbox {name}`)",
            f"sudo apt-get install {'docker.io' if name == 'docker' else name}",
        )
    works, output = _run_probe(program, "version", "--format", "{{.Server.Version}}")
    if name == "docker" and not works:
        return Check(
            name,
            "warn",
            f"{program} found, but the Docker daemon does not answer: {output}",
            "start it (sudo systemctl start docker) and join the docker group, or use podman",
        )
    return Check(name, "ok", f"{program} ({output or 'version unknown'})")


def check_keyring() -> Check:
    from credproxy.store.secretservice import KeyringLockedError, SecretService

    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            SecretService().check()
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT_S)
    if not outcome:
        return Check(
            "keyring",
            "warn",
            f"the Secret Service did not answer within {PROBE_TIMEOUT_S:g} s",
            "check the D-Bus session (DBUS_SESSION_BUS_ADDRESS); the file store works without",
        )
    error = outcome[0]
    if error is None:
        return Check("keyring", "ok", "the Secret Service answers")
    if isinstance(error, KeyringLockedError):
        return Check(
            "keyring", "warn", "the keyring is locked", "unlock it (log in to the desktop)"
        )
    return Check(
        "keyring",
        "info",
        "no keyring reachable; the file store keeps its data key in a 0600 key file instead",
        "only needed for --store keyring or key_source = keyring: run in a desktop session",
    )


def check_config(config: Path | None) -> tuple[Check, Settings | None]:
    from credproxy.cli._daemon_options import load_settings
    from credproxy.settings import ConfigError, default_config_path

    path = config or default_config_path()
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        return Check("config", "fail", str(exc), f"edit {path} (see docs/providers.md)"), None
    if not path.exists():
        return Check("config", "ok", f"no config file at {path}: embedded defaults"), settings
    count = len(settings.providers)
    return Check("config", "ok", f"{path} ({count} OAuth providers)"), settings


def check_store(backend: str | None, settings: Settings | None) -> Check:
    if settings is None:
        return Check("store", "info", "not checked: the config file must be fixed first")
    from credproxy.hardening import harden_process
    from credproxy.store.base import StoreError
    from credproxy.store.factory import backend_name, open_store, store_directory
    from credproxy.store.file import DATA_FILE

    name = backend_name(backend, settings)
    try:
        if name == "file" and not (store_directory(settings) / DATA_FILE).exists():
            return Check(
                "store",
                "ok",
                f"no store yet in {store_directory(settings)}: the first key set, token "
                "import, login or serve creates it",
            )
        harden_process()
        store = open_store(backend, settings)
    except StoreError as exc:
        return Check("store", "fail", str(exc), "see docs/storage.md")

    async def census() -> tuple[int, int]:
        try:
            tokens = sum([len(await store.list_buckets(p)) for p in await store.list_providers()])
            return tokens, len(await store.list_keys())
        finally:
            await store.close()

    import asyncio

    try:
        tokens, keys = asyncio.run(census())
    except StoreError as exc:
        return Check("store", "fail", str(exc), "see docs/storage.md")
    from credproxy.cli.store_commands import store_description

    return Check("store", "ok", f"{store_description(store)}: {tokens} tokens, {keys} API keys")


def check_socket_directory() -> Check:
    from credproxy.placement import DIR_PREFIX
    from credproxy.server.listener import ListenerError, check_private_dir, runtime_base

    base = runtime_base()
    directory = base / f"{DIR_PREFIX}{os.getuid()}"
    if len(os.fsencode(directory)) + 1 + SOCKET_NAME_BYTES > SUN_PATH_MAX:
        return Check(
            "socket directory",
            "fail",
            f"{directory} is too long for a Unix socket path ({SUN_PATH_MAX} bytes)",
            "set XDG_RUNTIME_DIR to a shorter directory, or pass serve --socket PATH",
        )
    if directory.exists() or directory.is_symlink():
        try:
            check_private_dir(directory)
        except ListenerError as exc:
            return Check("socket directory", "fail", str(exc), f"or remove {directory}")
    where = (
        f"{directory} (0700, yours)" if directory.exists() else f"{directory} (created by serve)"
    )
    if not os.environ.get("XDG_RUNTIME_DIR"):
        return Check(
            "socket directory",
            "warn",
            f"XDG_RUNTIME_DIR is not set; sockets go to {where}",
            "log in through a session that sets XDG_RUNTIME_DIR, or pass serve --socket PATH",
        )
    return Check("socket directory", "ok", where)


def node_version_supported(version: str) -> bool:
    """The test OAuth server (oidc-provider 9) needs URL.parse: Node 22.1+ or 20.18+."""
    parts = version.removeprefix("v").split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return False
    major, minor = int(parts[0]), int(parts[1])
    return major >= 23 or (major == 22 and minor >= 1) or (major == 20 and minor >= 18)


def check_node() -> Check:
    beside = Path(sys.executable).parent / "node"
    node = str(beside) if beside.is_file() else shutil.which("node")
    fix = "run scripts/setup --test (it brings Node 22 from PyPI into .venv when needed)"
    if node is None:
        return Check("node", "fail", "no Node.js: the test OAuth server cannot start", fix)
    works, version = _run_probe(node, "--version")
    if not works or not node_version_supported(version):
        return Check(
            "node",
            "fail",
            f"Node {version or '(no version)'} at {node} is too old for the test OAuth "
            "server (needs 20.18+ or 22.1+)",
            fix,
        )
    return Check("node", "ok", f"Node {version} at {node} (for the tests)")


def run_checks(config: Path | None, backend: str | None, tests: bool) -> list[Check]:
    config_check, settings = check_config(config)
    steps: list[Callable[[], Check]] = [
        check_python,
        check_bubblewrap,
        lambda: check_container("podman"),
        lambda: check_container("docker"),
        check_keyring,
        lambda: config_check,
        lambda: check_store(backend, settings),
        check_socket_directory,
    ]
    if tests:
        steps.append(check_node)
    return [step() for step in steps]


@main.command()
@click.option("--store", "backend", type=store_choice(), help=STORE_HELP)
@config_option
@click.option("--tests", is_flag=True, help="Also check what the test suite needs (Node.js).")
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": ..., "checks": [...]}.')
def doctor(backend: str | None, config: Path | None, tests: bool, as_json: bool) -> None:
    """Check this machine for credproxy and print each finding with its fix.

    Python, the sandboxes (bubblewrap, Podman, Docker), the keyring, the
    config file, the store, the socket directory, and with --tests Node.js.
    Always works on the host. Exits 1 when a check fails.
    """
    checks = run_checks(config, backend, tests)
    failed = any(check.status == "fail" for check in checks)
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}))
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            click.echo(f"{check.status:<5} {check.name:<{width}}  {check.detail}")
            if check.fix and check.status != "ok":
                click.echo(f"{'':<5} {'':<{width}}  fix: {check.fix}")
    if failed:
        sys.exit(1)
