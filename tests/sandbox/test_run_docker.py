"""``credproxy run --sandbox docker`` with the real docker CLI talking to a real
engine API: podman's Docker-compatible service (no Docker engine runs on
these machines). The container is started by the service, not by the CLI,
so, as with dockerd, no descriptor reaches it: the token has to travel
through the read-only mounted FIFO, which these tests show it does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
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

pytestmark = needs_root("the Docker API here is podman's API service, run rootful")

PODMAN_GLOBAL = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")
SERVICE_READY_S = 20.0


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[str, str]]:
    """(DOCKER_HOST, image): a podman API service and an image made from an empty root."""
    for tool in ("docker", "podman", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} must be installed for the docker tests (docs/sandboxes.md)")
    workdir = Path(tempfile.mkdtemp(prefix="cpdock-"))
    image = f"localhost/credproxy-test-{uuid.uuid4().hex[:12]}:latest"
    sock = workdir / "api.sock"
    service = subprocess.Popen(
        ["podman", *PODMAN_GLOBAL, "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    imported = False
    try:
        deadline = time.monotonic() + SERVICE_READY_S
        while not sock.exists():
            assert service.poll() is None, "podman system service exited"
            assert time.monotonic() < deadline, "podman system service never listened"
            time.sleep(0.05)
        rootfs = make_rootfs(workdir / "rootfs")
        archive = workdir / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        subprocess.run(
            ["podman", *PODMAN_GLOBAL, "import", str(archive), image],
            check=True,
            capture_output=True,
            timeout=60,
        )
        imported = True
        yield f"unix://{sock}", image
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=30)
        if imported:
            subprocess.run(
                ["podman", *PODMAN_GLOBAL, "rmi", "-f", image],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def docker_args(run_host: RunHost, engine: tuple[str, str]) -> list[str]:
    docker_host, image = engine
    run_host.env["DOCKER_HOST"] = docker_host
    return [
        "--sandbox",
        "docker",
        "--image",
        image,
        "--engine-arg=--ulimit=nofile=1024:1024",
        "--engine-arg=--ulimit=nproc=1024:1024",
        *runtime_binds(),
    ]


def _fifo_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("credproxy-cap-*")}


def test_token_get_in_docker_reads_the_token_through_the_fifo(
    run_host: RunHost, docker_args: list[str]
) -> None:
    before = _fifo_dirs()
    credproxy_bin = str(Path(sys.prefix) / "bin" / "credproxy")
    done = run_host.run(
        *docker_args, "--allow", "demo", "--", credproxy_bin, "token", "get", "demo"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == DEMO_ACCESS + "\n"
    refused = run_host.run(
        *docker_args, "--allow", "demo", "--", credproxy_bin, "token", "get", "other"
    )
    # The exit code is not checked: podman 4.3's Docker-compatible API does not
    # report the container's exit status to the docker CLI reliably.
    assert "not permitted" in refused.stderr
    assert refused.stdout == ""
    assert run_host.sockets_left() == []
    assert _fifo_dirs() <= before


def test_docker_container_gets_fd_3_from_a_deleted_fifo_and_no_token_anywhere_else(
    run_host: RunHost, docker_args: list[str]
) -> None:
    done = run_host.run(
        *docker_args,
        "--",
        sys.executable,
        str(PROBES / "inspect_sandbox.py"),
        "--read-fd",
        "--walk",
        "--exists",
        "/run/credproxy-capability/token",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    env = report["environ"]
    assert env["LLXPRT_CAPABILITY_FD"] == "3"
    assert "LLXPRT_CAPABILITY_TOKEN" not in env
    assert HOST_MARKER not in json.dumps(env)
    assert report["fd_target"] == "/run/credproxy-capability/token (deleted)"
    assert report["exists"] == {"/run/credproxy-capability/token": False}
    token = report["token_line"].strip()
    assert len(token) == 64
    assert not any(token in text for text in report["process_texts"])
    assert report["sockets"] == ["/run/credproxy.sock"]
