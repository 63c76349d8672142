"""A stand-alone client written from protocol.md alone, for wire-compatibility tests.

It imports nothing from credproxy: framing, handshake and ids are done the way
the document says, the capability token is read from the fd named in
LLXPRT_CAPABILITY_FD (64 lowercase hex and a newline, at most 128 bytes), and
each result is printed as one JSON line. Run as a script by the tests, also
as another uid, so it uses only the standard library.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
import uuid
from typing import Any


def read_token() -> str:
    fd = int(os.environ.pop("LLXPRT_CAPABILITY_FD"))
    data = b""
    while len(data) <= 128:
        chunk = os.read(fd, 129 - len(data))
        if not chunk:
            break
        data += chunk
    os.close(fd)
    if not re.fullmatch(rb"[0-9a-f]{64}\n", data):
        raise SystemExit("capability fd did not hold 64 lowercase hex and a newline")
    return data[:-1].decode("ascii")


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    body = json.dumps(message).encode("utf-8")
    try:
        sock.sendall(struct.pack(">I", len(body)) + body)
    except (BrokenPipeError, ConnectionResetError):
        raise SystemExit("server closed the connection") from None


def recv(sock: socket.socket) -> dict[str, Any]:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise SystemExit("server closed the connection")
            buf += chunk
        return buf

    (length,) = struct.unpack(">I", exactly(4))
    value: dict[str, Any] = json.loads(exactly(length).decode("utf-8"))
    return value


def main() -> None:
    token = read_token()
    path = os.environ["LLXPRT_CREDENTIAL_SOCKET"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(path)
    send(
        sock,
        {
            "v": 2,
            "op": "handshake",
            "payload": {"minVersion": 1, "maxVersion": 2, "capabilityToken": token},
        },
    )
    print(json.dumps(recv(sock)), flush=True)
    for line in sys.argv[1:]:
        op, _, payload = line.partition(" ")
        rid = str(uuid.uuid4())
        send(sock, {"v": 2, "id": rid, "op": op, "payload": json.loads(payload or "{}")})
        reply = recv(sock)
        if reply.get("id") != rid:
            raise SystemExit("response id does not match the request id")
        print(json.dumps(reply), flush=True)
    sock.close()


if __name__ == "__main__":
    main()
