"""A hostile peer process that holds connections with frames it never finishes.

Run as ``python -m tests.server.slowloris_peer SOCKET COUNT [TOKEN]``. With a
token each connection handshakes, then sends the first bytes of a request
and stops; without one it sends the first bytes of a handshake and stops.
It prints ``ready`` once every connection holds its partial frame (with a
token: once every handshake was answered, so the daemon counts them all),
then answers each ``closed`` line on stdin with how many of its connections
the daemon has closed since. It exits when stdin closes.

A process of its own, so the daemon sees its own pid through SO_PEERCRED.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

from credproxy.protocol.framing import FrameDecoder, encode_frame

PARTIAL_REQUEST = struct.pack(">I", 200) + b'{"v":2,"id":"slow","op":'
"""A header announcing 200 bytes, then 24 of them."""


def _open(path: str, token: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30.0)
    sock.connect(path)
    payload = {"minVersion": 1, "maxVersion": 2, "capabilityToken": token or "x"}
    handshake = encode_frame({"v": 2, "op": "handshake", "payload": payload})
    if token is None:
        sock.sendall(handshake[:12])
        return _hold(sock)
    sock.sendall(handshake)
    decoder = FrameDecoder()
    frames: list[dict[str, object]] = []
    while not frames:
        data = sock.recv(65_536)
        if not data:
            raise SystemExit("the daemon closed a connection during its handshake")
        frames = decoder.feed(data)
    if frames[0].get("ok") is not True:
        raise SystemExit(f"handshake refused: {json.dumps(frames[0])}")
    sock.sendall(PARTIAL_REQUEST)
    return _hold(sock)


def _hold(sock: socket.socket) -> socket.socket:
    # Blocking without a timeout: Python waits out a timeout before a MSG_DONTWAIT recv.
    sock.settimeout(None)
    return sock


def _is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main(argv: list[str]) -> int:
    path, count = argv[0], int(argv[1])
    token = argv[2] if len(argv) > 2 else None
    held = [_open(path, token) for _ in range(count)]
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "closed":
            print(sum(1 for sock in held if _is_closed(sock)), flush=True)
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
