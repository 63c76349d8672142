"""``credproxy run --inject`` mistakes are one-line errors before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def _run(tmp_path: Path, *args: str, config: str = "") -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\nbackend = "memory"\n{config}', encoding="utf-8")
    return subprocess.run(
        [str(VENV_BIN / "credproxy"), "run", "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


@pytest.mark.parametrize(
    ("args", "config", "code", "message"),
    [
        (("--inject", "nope"), "", 125, "--inject nope: no such route; known: anthropic"),
        (("--intercept", "api.github.com"), "", 2, "--intercept needs --inject"),
        (
            ("--sandbox", "docker", "--inject", "openai"),
            "",
            2,
            "Error: --inject works with --sandbox none or bwrap, not docker",
        ),
        (
            ("--sandbox", "podman", "--inject", "openai"),
            "",
            2,
            "Error: --inject works with --sandbox none or bwrap, not podman",
        ),
        (
            ("--inject", "openai", "--intercept", "evil.test"),
            "",
            125,
            "--intercept evil.test: no --inject route has that upstream host",
        ),
        (("--inject", "openai"), "", 125, "no API key named 'openai' is stored on the host"),
        (
            ("--inject", "mine"),
            '[routes.mine]\nupstream = "https://x.test"\nkey = "k"\nheader = "h"\ncolour = 1\n',
            125,
            "[routes.mine]",
        ),
        (
            ("--inject", "openai"),
            '[inject]\ntunnel = "open"\n',
            125,
            "[inject] tunnel: invalid enum value 'open'",
        ),
    ],
)
def test_inject_mistakes_exit_with_a_one_line_error(
    tmp_path: Path, args: tuple[str, ...], config: str, code: int, message: str
) -> None:
    done = _run(tmp_path, "--sandbox", "none", *args, "--", "true", config=config)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_run_help_documents_inject_and_intercept() -> None:
    done = subprocess.run(
        [str(VENV_BIN / "credproxy"), "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for text in ("--inject ROUTE", "--intercept HOST", "stand-in", "ANTHROPIC_BASE_URL"):
        assert text in done.stdout
