"""``credproxy run --sandbox podman`` with the real podman (as root, ``--rootfs``,
no image pull), so ``--preserve-fds 1`` is shown to carry the token pipe.

Podman on these machines needs ``--runtime runc --cgroup-manager cgroupfs``
and explicit ulimits, passed with ``--engine-arg``. The root file system is
an empty directory with the host's ``/usr`` and this Python bound read-only.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.privilege import needs_root
from tests.sandbox.conftest import (
    DEMO_ACCESS,
    HOST_MARKER,
    PROBES,
    RunHost,
    make_rootfs,
    runtime_binds,
)

pytestmark = needs_root("rootful podman with --rootfs (rootless podman needs a user session)")

ENGINE_ARGS = (
    "--engine-arg=--runtime=runc",
    "--engine-arg=--cgroup-manager=cgroupfs",
    "--engine-arg=--ulimit=nofile=1024:1024",
    "--engine-arg=--ulimit=nproc=1024:1024",
)


@pytest.fixture
def podman_args(run_host: RunHost) -> Iterator[list[str]]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("podman and runc must be installed: apt-get install podman runc")
    rootfs = make_rootfs(run_host.root / "rootfs")
    yield ["--sandbox", "podman", "--image", str(rootfs), *ENGINE_ARGS, *runtime_binds()]


def test_token_get_in_podman_reads_the_token_from_the_preserved_fd(
    run_host: RunHost, podman_args: list[str]
) -> None:
    credproxy_bin = str(Path(sys.prefix) / "bin" / "credproxy")
    done = run_host.run(
        *podman_args, "--allow", "demo", "--", credproxy_bin, "token", "get", "demo"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == DEMO_ACCESS + "\n"
    refused = run_host.run(
        *podman_args, "--allow", "demo", "--", credproxy_bin, "token", "get", "other"
    )
    assert refused.returncode == 4
    assert run_host.sockets_left() == []


def test_podman_container_sees_one_socket_fd_3_and_no_host_env(
    run_host: RunHost, podman_args: list[str]
) -> None:
    done = run_host.run(
        *podman_args,
        "--",
        sys.executable,
        str(PROBES / "inspect_sandbox.py"),
        "--read-fd",
        "--walk",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["environ"]["LLXPRT_CAPABILITY_FD"] == "3"
    assert report["environ"]["LLXPRT_CREDENTIAL_SOCKET"] == "/run/credproxy.sock"
    assert HOST_MARKER not in json.dumps(report["environ"])
    assert "LLXPRT_CAPABILITY_TOKEN" not in report["environ"]
    assert sorted(report["fds"]) == ["0", "1", "2", "3"]
    assert report["fd_target"].startswith("pipe:")
    token = report["token_line"].strip()
    assert len(token) == 64
    assert not any(token in text for text in report["process_texts"])
    assert report["sockets"] == ["/run/credproxy.sock"]


def test_exit_code_comes_back_through_podman(run_host: RunHost, podman_args: list[str]) -> None:
    done = run_host.run(*podman_args, "--", "/usr/bin/sh", "-c", "exit 42")
    assert done.returncode == 42, done.stderr
