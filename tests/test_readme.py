"""The README's first session runs as written, so the README cannot drift from the program.

The code blocks are taken from README.md itself and run in bash, in a fresh
home, against a real daemon started as the README starts it. The only edit
is the one a user makes: the README's example paths (``/run/user/1000/
credproxy-1000/4242-…``) become the paths this daemon printed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.client.test_ux_serve import announced_lines

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
EXAMPLE_STEM = "/run/user/1000/credproxy-1000/4242-…"
KEY_VALUE = "sk-readme-first-session"


def readme_blocks(heading: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block in the README section ``## heading``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w*)\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


@dataclass
class Session:
    home: Path
    workdir: Path
    env: dict[str, str]
    announced: list[str]
    socket_path: str


def fresh_env(home: Path, runtime: Path) -> dict[str, str]:
    """A new user's environment: no credproxy variables, no desktop keyring."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CREDPROXY_", "LLXPRT_", "VIRTUAL_ENV"))
        and key not in {"DBUS_SESSION_BUS_ADDRESS", "PYTHONPATH"}
    }
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_RUNTIME_DIR=str(runtime),
        PATH=os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if p != str(VENV_BIN)
        ),
    )
    return env


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    """The clone's directory as the README's second shell sees it (``.venv`` beside
    ``token.json``), and ``credproxy serve`` running in the first shell."""
    runtime = Path(tempfile.mkdtemp(prefix="cprd-", dir="/tmp"))
    home = tmp_path / "home"
    workdir = tmp_path / "clone"
    home.mkdir()
    workdir.mkdir()
    (workdir / ".venv").symlink_to(VENV_BIN.parent)
    env = fresh_env(home, runtime)
    process = subprocess.Popen(
        [str(VENV_BIN / "credproxy"), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=workdir,
    )
    try:
        announced = announced_lines(process)
        socket_path = announced[0].removeprefix("credproxy daemon listening on ").split(" (pid")[0]
        yield Session(home, workdir, env, announced, socket_path)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        assert process.stdout is not None
        process.stdout.close()
        shutil.rmtree(runtime, ignore_errors=True)


def bash(session: Session, script: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        env=session.env,
        cwd=session.workdir,
        timeout=120,
        check=False,
    )


def as_example(session: Session, text: str) -> str:
    """This daemon's paths and pid written the way the README writes them."""
    stem = session.socket_path.removesuffix(".sock")
    return re.sub(r"\(pid \d+\)", "(pid 4242)", text.replace(stem, EXAMPLE_STEM))


def test_the_readme_shows_what_serve_prints(session: Session) -> None:
    blocks = readme_blocks("The two commands")
    shown = next(body for language, body in blocks if language == "" and "listening" in body)
    assert [as_example(session, line) for line in session.announced] == shown.splitlines()


def test_the_first_session_runs_as_written(session: Session) -> None:
    blocks = readme_blocks("A first session")
    languages = [language for language, _ in blocks]
    assert languages[:3] == ["sh", "json", "sh"], languages
    host_block, token_json, sandbox_block = (body for _, body in blocks[:3])

    (session.workdir / "token.json").write_text(token_json)
    host = bash(session, host_block, stdin=KEY_VALUE + "\n")
    assert host.returncode == 0, host.stderr
    assert "anthropic" in host.stdout and "openai" in host.stdout
    assert KEY_VALUE not in host.stdout + host.stderr

    stem = session.socket_path.removesuffix(".sock")
    pasted = sandbox_block.replace(EXAMPLE_STEM, stem)
    sandbox = bash(session, f"source .venv/bin/activate\n{pasted}")
    assert sandbox.returncode == 0, sandbox.stderr
    lines = sandbox.stdout.splitlines()
    assert lines[0] == "…"  # the README token's access token, alone on stdout
    assert lines[1] == KEY_VALUE
    assert '"mode": "sandbox"' in lines[2]


def test_the_run_example_finds_credproxy_inside_the_sandbox(session: Session) -> None:
    """With `.venv/bin/credproxy` instead of the activated venv, `run` exited 127."""
    first_session = readme_blocks("A first session")
    host_block = first_session[0][1]
    (session.workdir / "token.json").write_text(first_session[1][1])
    run_block = readme_blocks("Running a command in a sandbox")[0][1]
    example = next(line for line in run_block.splitlines() if "--sandbox bwrap" in line)
    done = bash(session, f"{host_block}\n{example}", stdin=KEY_VALUE + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "…"


def test_the_completion_lines_install_completion(session: Session) -> None:
    lines = readme_blocks("Shell completion")[0][1].splitlines()
    bash_line = next(line for line in lines if "bash_source" in line)
    fish_line = next(line for line in lines if "fish_source" in line)
    activate = "source .venv/bin/activate\n"
    done = bash(session, f"{activate}{bash_line.split('#')[0]}\ncomplete -p credproxy")
    assert done.returncode == 0, done.stderr
    assert "credproxy" in done.stdout
    done = bash(session, f"{activate}{fish_line}")
    assert done.returncode == 0, done.stderr
    assert "credproxy" in (session.home / ".config/fish/completions/credproxy.fish").read_text()
    zsh_source = next(line for line in lines if "zsh_source" in line)
    command = re.search(r'"\$\((.*)\)"', zsh_source)
    assert command is not None
    done = bash(session, f"{activate}{command.group(1)}")
    assert done.returncode == 0, done.stderr
    assert "compdef" in done.stdout


def test_the_commands_the_readme_says_work_on_the_host_do_so_with_the_socket_set(
    session: Session,
) -> None:
    """The README said every command asks the daemon while LLXPRT_CREDENTIAL_SOCKET is
    set; `key set` writes the host store there, as docs/cli.md says."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "the commands that change the store (`key set`, `key rm`, `token import`," in text
    unreachable = {**session.env, "LLXPRT_CREDENTIAL_SOCKET": "/nonexistent/credproxy.sock"}
    credproxy = str(VENV_BIN / "credproxy")

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [credproxy, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=unreachable,
            timeout=60,
            check=False,
        )

    assert run("key", "set", "written-on-host", stdin="sk-host\n").returncode == 0
    assert run("key", "list").returncode == 5  # a reading command asks the (absent) daemon
    host = subprocess.run(
        [credproxy, "key", "list"], capture_output=True, text=True, env=session.env, check=True
    )
    assert "written-on-host" in host.stdout.splitlines()
