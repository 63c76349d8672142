"""Run inside the sandbox: put a recording relay in front of the credential socket, run
a shell command against it, and write every byte the daemon sent to the file in argv[1].

The capability token arrives on fd 3 (as ``credproxy run`` hands it over) and is passed
to the commands in LLXPRT_CAPABILITY_TOKEN, so more than one command can use it.
Usage: relay_login.py RECORD_FILE SCRIPT
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading

RELAY = "/tmp/credproxy-relay.sock"


def main() -> int:
    record_path, script = sys.argv[1], sys.argv[2]
    upstream = os.environ["LLXPRT_CREDENTIAL_SOCKET"]
    with os.fdopen(3, "r") as fd3:
        token = fd3.read().strip()
    received = bytearray()
    lock = threading.Lock()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(RELAY)
    listener.listen(16)

    def pump(src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with lock:
                        received.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            host.connect(upstream)
            threading.Thread(target=pump, args=(host, client, True), daemon=True).start()
            threading.Thread(target=pump, args=(client, host, False), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k != "LLXPRT_CAPABILITY_FD"}
    env.update(LLXPRT_CREDENTIAL_SOCKET=RELAY, LLXPRT_CAPABILITY_TOKEN=token)
    status = subprocess.call(["sh", "-c", script], env=env)
    with lock, open(record_path, "wb") as out:
        out.write(bytes(received))
    return status


if __name__ == "__main__":
    sys.exit(main())
