"""Processes that hold secrets leave no core file and refuse same-uid inspection.

Every process under test is started with ``RLIMIT_CORE`` unlimited, as a user
with ``ulimit -c unlimited`` would. The checks must hold whether the suite
runs as root or not, and root may read any process (CAP_SYS_PTRACE), so as
root the processes under test and the probes run as ``nobody`` (keeping only
CAP_DAC_OVERRIDE, to reach the interpreter under /root). The signs looked
for are the kernel's for an undumpable process whatever the caller: the
files in its ``/proc/<pid>`` are owned by root although it runs as another
uid, and a process of its own uid and capabilities cannot open its
``/proc/<pid>/environ`` or ``mem``. A core dump shows in the wait status's
core flag (whatever ``core_pattern`` says) and as a ``core*`` file in the
working directory.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeGuard

import pytest

from tests.fixtures.daemon import daemon_env, wait_ready

IS_ROOT = os.getuid() == 0
WAIT_S = 20.0
AS_SUBJECT: tuple[str, ...] = (
    (
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=+dac_override",
        "--ambient-caps=+dac_override",
    )
    if IS_ROOT
    else ()
) + ("prlimit", "--core=unlimited:unlimited", "--")
"""The uid the processes under test run as is never root."""
SUBJECT = pwd.getpwnam("nobody") if IS_ROOT else pwd.getpwuid(os.getuid())


def _give_to_subject(path: Path) -> Path:
    os.chown(path, SUBJECT.pw_uid, SUBJECT.pw_gid)
    return path


@pytest.fixture
def subject_dir() -> Iterator[Path]:
    """A working directory the subject uid owns (where a core file would land)."""
    path = _give_to_subject(Path(tempfile.mkdtemp(prefix="cpm-", dir="/tmp")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env(workdir: Path) -> dict[str, str]:
    return daemon_env({"HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir / "config")})


def _write_config(workdir: Path) -> Path:
    config = workdir / "config.toml"
    config.write_text(
        f'[store]\nbackend = "file"\npath = "{workdir / "store"}"\nkey_source = "keyfile"\n'
    )
    return _give_to_subject(config)


def _start_serve(workdir: Path) -> subprocess.Popen[bytes]:
    config = _write_config(workdir)
    stderr_path = workdir / "stderr.log"
    command = [
        *AS_SUBJECT,
        sys.executable,
        "-m",
        "credproxy",
        "serve",
        "--json",
        "--config",
        str(config),
    ]
    command += ["--socket", str(workdir / "d.sock")]
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_env(workdir),
            cwd=workdir,
        )
    wait_ready(process, stderr_path)
    return process


def _same_uid_read_error(pid: int, name: str) -> int:
    """The errno a process of the subject's uid and capabilities gets opening ``/proc/<pid>/<name>``
    (0 when it could read it)."""
    probe = (
        "import errno, sys\n"
        "try:\n"
        f"    open('/proc/{pid}/{name}', 'rb').read(1)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
        "else:\n"
        "    print(0)\n"
    )
    result = subprocess.run(
        [*AS_SUBJECT, sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT_S,
    )
    return int(result.stdout.strip())


def _core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])
    raise AssertionError("no core limit line in /proc/<pid>/limits")


def _assert_secrets_stay_in_memory(pid: int) -> None:
    assert Path(f"/proc/{pid}").stat().st_uid != 0, "the process under test runs as root"
    assert Path(f"/proc/{pid}/environ").stat().st_uid == 0, "the process is still dumpable"
    assert _same_uid_read_error(pid, "environ") == errno.EACCES
    assert _same_uid_read_error(pid, "mem") == errno.EACCES


def _reap(process: subprocess.Popen[bytes]) -> int:
    """Wait with ``os.waitpid`` ourselves, which keeps the core-dump flag Popen drops."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = -1
            return status
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the process did not end")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.returncode is None and process.poll() is None:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def test_serve_disables_core_dumps_and_same_uid_inspection(subject_dir: Path) -> None:
    process = _start_serve(subject_dir)
    try:
        assert _core_limit(process.pid) == "0 0"
        _assert_secrets_stay_in_memory(process.pid)
    finally:
        _stop(process)


@pytest.mark.parametrize(
    "signum", [signal.SIGQUIT, signal.SIGABRT, signal.SIGSEGV], ids=lambda s: s.name
)
def test_serve_killed_by_a_core_signal_leaves_no_core_file(
    subject_dir: Path, signum: signal.Signals
) -> None:
    process = _start_serve(subject_dir)
    try:
        process.send_signal(signum)
        status = _reap(process)
    finally:
        _stop(process)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signum
    assert not os.WCOREDUMP(status)
    assert [p.name for p in subject_dir.iterdir() if p.name.startswith("core")] == []


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _looks_undumpable(pid: int) -> bool:
    """Runs as a non-root uid (not setpriv before its exec) and its files are root's."""
    status = Path(f"/proc/{pid}/status").read_text()
    euid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[2])
    return euid != 0 and Path(f"/proc/{pid}/environ").stat().st_uid == 0


def _is_waiting_on_stdin(pid: int) -> bool:
    """True once the process blocks in a read of fd 0 (after opening the store); only
    root can see this of an undumpable process, which the caller's other test covers."""
    with contextlib.suppress(OSError):
        syscall = Path(f"/proc/{pid}/syscall").read_text().split()
        return syscall[:2] == ["0", "0x0"]
    return False


def test_host_command_holding_the_data_key_is_undumpable(subject_dir: Path) -> None:
    """``credproxy key set`` opens the store (and its data key) before it reads the
    key from stdin; while it waits there it must already be hardened."""
    config = _write_config(subject_dir)
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [
            *AS_SUBJECT,
            sys.executable,
            "-m",
            "credproxy",
            "key",
            "set",
            "k1",
            "--config",
            str(config),
        ],
        stdin=read_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(subject_dir),
        cwd=subject_dir,
    )
    os.close(read_end)
    try:
        _wait_for(
            lambda: _looks_undumpable(process.pid) or _is_waiting_on_stdin(process.pid),
            "key set to harden itself or read stdin",
        )
        assert _core_limit(process.pid) == "0 0"
        _assert_secrets_stay_in_memory(process.pid)
        os.write(write_end, b"sk-decoy-value\n")
        os.close(write_end)
        write_end = -1
        _, err = process.communicate(timeout=WAIT_S)
        assert process.returncode == 0, err
    finally:
        if write_end >= 0:
            os.close(write_end)
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_run_is_undumpable_and_leaves_the_commands_core_limit_alone(subject_dir: Path) -> None:
    """``credproxy run`` embeds a daemon, so it is hardened too; its command keeps
    the core limit it was given (the user's, here unlimited)."""
    config = _write_config(subject_dir)
    report = subject_dir / "report.json"
    probe = (
        "import json, os, resource, sys\n"
        "parent = os.getppid()\n"
        "try:\n"
        "    open(f'/proc/{parent}/environ', 'rb').read(1)\n"
        "    error = 0\n"
        "except OSError as exc:\n"
        "    error = exc.errno\n"
        "json.dump({'owner': os.stat(f'/proc/{parent}/environ').st_uid, 'environ_errno': error,\n"
        "           'core': resource.getrlimit(resource.RLIMIT_CORE)[0]},\n"
        f"          open({str(report)!r}, 'w'))\n"
    )
    command = [*AS_SUBJECT, sys.executable, "-m", "credproxy", "run", "--sandbox", "none"]
    command += ["--config", str(config), "--", sys.executable, "-c", probe]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=_env(subject_dir),
        cwd=subject_dir,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(report.read_text())
    assert seen["owner"] == 0
    assert seen["environ_errno"] == errno.EACCES
    assert seen["core"] == resource.RLIM_INFINITY


def test_hardening_reports_what_holds_in_this_process() -> None:
    """Run in a child so the test process itself stays dumpable."""
    code = (
        "import json, resource\n"
        "from credproxy.hardening import harden_process\n"
        "h = harden_process()\n"
        "print(json.dumps([h.core_limit_zero, h.undumpable,"
        " resource.getrlimit(resource.RLIMIT_CORE)]))\n"
    )
    out = subprocess.run(
        [*AS_SUBJECT, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=daemon_env(),
        timeout=WAIT_S,
    )
    assert json.loads(out.stdout) == [True, sys.platform.startswith("linux"), [0, 0]]


def _is_call_to(node: ast.AST, name: str) -> TypeGuard[ast.Call]:
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == name)
        or (isinstance(node.func, ast.Attribute) and node.func.attr == name)
    )


def _unhardened_store_openings(source: str) -> list[int]:
    """Lines that call ``open_store`` with no ``harden_process`` call earlier in an
    enclosing function."""
    tree = ast.parse(source)
    missing: list[int] = []

    def visit(node: ast.AST, hardened_before: list[int]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = [
                    call.lineno for call in ast.walk(child) if _is_call_to(call, "harden_process")
                ]
                visit(child, hardened_before + lines)
                continue
            if _is_call_to(child, "open_store") and not any(
                line < child.lineno for line in hardened_before
            ):
                missing.append(child.lineno)
            visit(child, hardened_before)

    visit(tree, [])
    return missing


def test_every_command_that_opens_the_store_hardens_the_process_first() -> None:
    """Opening the store loads its data key (and then every secret): each command of the
    command line that does so must have called ``harden_process`` before, as ``serve``,
    ``run``, ``login``, the ``key``/``token``/``store`` commands, ``providers`` and
    ``doctor`` do. Read from the source, so a new command cannot forget it."""
    cli = Path(__file__).parents[2] / "src" / "credproxy" / "cli"
    openings = {
        path.name: _unhardened_store_openings(path.read_text())
        for path in sorted(cli.glob("*.py"))
        if "open_store(" in path.read_text()
    }
    assert len(openings) >= 6, openings
    assert {name: lines for name, lines in openings.items() if lines} == {}


def test_the_hardening_check_flags_a_store_opened_before_hardening() -> None:
    source = (
        "def command():\n"
        "    store = open_store(None, settings)\n"
        "    harden_process()\n"
        "def other():\n"
        "    harden_process()\n"
        "    def inner():\n"
        "        return open_store(None, settings)\n"
    )
    assert _unhardened_store_openings(source) == [2]
