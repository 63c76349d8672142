"""The store's disk fills up while credentials are saved.

A small tmpfs holds the encrypted file store; it is filled to the last byte,
then a sandbox saves a token through the daemon and the user sets a key on
the host. Each save must fail with a clear error where one is owed (the
host's log and the host command say the disk is full and nothing was lost;
the sandbox gets the protocol's generic failure, which names no host path),
everything stored before must still read back (through the
running daemon and through a daemon started afresh on the same files), and
once space is freed the same saves succeed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon import DaemonFactory, daemon_env

pytestmark = pytest.mark.skipif(
    os.getuid() != 0, reason="mounting a small tmpfs to fill needs root"
)

KEYS = {f"key-{n}": f"sk-disk-decoy-{n:04d}" for n in range(20)}
TOKEN = {"access_token": "disk-access-decoy", "refresh_token": "disk-refresh-decoy"}
NEW_TOKEN = {
    "access_token": "disk-access-decoy-new",
    "token_type": "Bearer",
    "expiry": 4_000_000_000,
}


@pytest.fixture
def small_disk(credproxy_daemon: DaemonFactory) -> Iterator[Path]:
    """The factory's workdir with a 1 MiB tmpfs mounted at its ``store``."""
    workdir = credproxy_daemon.workdir()
    store = workdir / "store"
    store.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(store)], check=True
    )
    try:
        yield workdir
    finally:
        for handle in credproxy_daemon.handles:
            handle.stop()
        subprocess.run(["umount", "-l", str(store)], check=False)


def _fill(directory: Path) -> Path:
    """Write until the file system has not one byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65_536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"x")
    assert full.value.errno == errno.ENOSPC
    (directory / "probe").unlink(missing_ok=True)
    return filler


def _host_key_set(config: Path, name: str, value: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credproxy", "key", "set", name, "--config", str(config)],
        input=value + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=daemon_env(),
    )


def test_a_full_disk_fails_saves_clearly_and_loses_nothing(
    credproxy_daemon: DaemonFactory, small_disk: Path
) -> None:
    daemon = credproxy_daemon(workdir=small_disk, tokens={("disk", "default"): TOKEN}, keys=KEYS)
    config = small_disk / "config.toml"
    filler = _fill(small_disk / "store")

    with daemon.client() as client:
        saved = client.request(
            "save_token", {"provider": "disk", "bucket": "new", "token": NEW_TOKEN}
        )
        # The sandbox learns only that the host failed (no host path or store detail);
        # the host's log says what happened and what to do.
        assert saved["ok"] is False
        assert str(small_disk) not in saved["error"]
        assert "no space left" in daemon.stderr_text()
        host = _host_key_set(config, "new-key", "sk-disk-decoy-new")
        assert host.returncode != 0
        assert "no space left" in host.stderr and "Traceback" not in host.stderr
        for name, value in KEYS.items():
            assert client.request("get_api_key", {"name": name})["data"]["key"] == value
        token = client.request("get_token", {"provider": "disk", "bucket": "default"})
        assert token["data"]["access_token"] == TOKEN["access_token"]

    filler.unlink()
    with daemon.client() as client:
        saved = client.request(
            "save_token", {"provider": "disk", "bucket": "new", "token": NEW_TOKEN}
        )
        assert saved["ok"] is True
    assert _host_key_set(config, "new-key", "sk-disk-decoy-new").returncode == 0

    daemon.stop()
    again = credproxy_daemon(workdir=small_disk, store="file")
    with again.client() as client:
        for name, value in {**KEYS, "new-key": "sk-disk-decoy-new"}.items():
            assert client.request("get_api_key", {"name": name})["data"]["key"] == value
        token = client.request("get_token", {"provider": "disk", "bucket": "new"})
        assert token["data"]["access_token"] == NEW_TOKEN["access_token"]
