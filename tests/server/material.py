"""Shared material for the daemon tests: seeded credentials whose every secret is known."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

REFRESH_SECRETS: Final = (
    "refresh-SECRET-anthropic-default-7f3a9c1e5b",
    "refresh-SECRET-anthropic-work-2d8e4b6a0c",
    "refresh-SECRET-gemini-default-9b1c7e3f5a",
    "refresh-SECRET-qwen-default-4e6a8c0b2d",
)
ACCESS_SECRETS: Final = (
    "access-SECRET-anthropic-default-1a2b3c4d",
    "access-SECRET-anthropic-work-5e6f7a8b",
    "access-SECRET-gemini-default-9c0d1e2f",
    "access-SECRET-qwen-default-3a4b5c6d",
)
KEY_SECRETS: Final = {
    "openai": "sk-SECRET-openai-0123456789abcdef",
    "other": "sk-SECRET-other-fedcba9876543210",
}
SLOTS: Final = (
    ("anthropic", "default"),
    ("anthropic", "work"),
    ("gemini", "default"),
    ("qwen", "default"),
)


def full_token(index: int) -> dict[str, Any]:
    return {
        "access_token": ACCESS_SECRETS[index],
        "refresh_token": REFRESH_SECRETS[index],
        "expiry": 4_102_444_800,
        "token_type": "Bearer",
        "scope": f"scope-{index}",
        "account_id": f"account-{index}",
    }


SEEDED_TOKENS: Final = {slot: full_token(i) for i, slot in enumerate(SLOTS)}


def all_secrets() -> list[str]:
    return [*REFRESH_SECRETS, *ACCESS_SECRETS, *KEY_SECRETS.values()]


WIRE_CLIENT: Final = Path(__file__).with_name("wire_client.py")
SYSTEM_PYTHON: Final = "/usr/bin/python3"


def run_wire_client(
    socket_path: Path, token: str, *ops: str, workdir: Path, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``wire_client.py`` with the token on fd 3 as ``<64 hex>\\n``, the way a
    launcher hands it to a sandbox; optionally as uid ``nobody``."""
    script = workdir / "wire_client.py"
    shutil.copyfile(WIRE_CLIENT, script)
    script.chmod(0o644)
    read_end, write_end = os.pipe()
    os.write(write_end, (token + "\n").encode("ascii"))
    os.close(write_end)
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if as_nobody else []
    shell = 'exec "$0" "$@" 3<&0 </dev/null'
    command = [*prefix, "sh", "-c", shell, SYSTEM_PYTHON, str(script), *ops]
    env = {
        "LLXPRT_CREDENTIAL_SOCKET": str(socket_path),
        "LLXPRT_CAPABILITY_FD": "3",
        "PATH": "/usr/bin:/bin",
    }
    try:
        return subprocess.run(
            command,
            check=False,
            stdin=read_end,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        os.close(read_end)
