"""A long fuzzing campaign: the frame decoder in process, and the whole request path
through a real ``credproxy serve`` on a Unix socket.

Run:
  .venv/bin/python benchmarks/fuzz.py --target request-path --minutes 30
  .venv/bin/python benchmarks/fuzz.py --target decoder --minutes 5
  (``--engine atheris|hypothesis|auto``; ``--report FILE`` writes the JSON summary)

Engines. With atheris installed (``pip install -e '.[fuzz]'``) the inputs come
from libFuzzer's coverage-guided mutator; for the decoder the coverage is the
decoder's own (``credproxy.protocol.framing`` is instrumented). The daemon of
the request path runs in another process, so there atheris is guided by the
harness's coverage only (which frame shapes it built, which answers came
back) and the coverage figure says so. Without atheris, hypothesis generates
the inputs in batches until the time is up.

One input is one connection: a valid handshake (except for a share of raw
streams and handshakes with mutated fields that keep the token, so the
throttle for wrong tokens does not stall the run), then frames built from the
input bytes: requests of every operation with fields drawn from valid,
boundary and hostile values, length-prefixed arbitrary bodies, and raw byte
streams. The harness half-closes its side and reads until the daemon closes.

Findings: a daemon that exits (crash), no close within ``--hang-s`` seconds
(hang), an ``INTERNAL_ERROR`` answer, the seeded refresh token in any byte
received (leak), a liveness probe (a fresh client's ``get_api_key``) that
fails, and resident memory after the run above warm-up by more than
``--rss-growth`` (leak). Each finding is kept with its input (hex) in the
report; findings become regression tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
for _path in (str(ROOT / "src"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from benchmarks._daemon import (  # noqa: E402
    SRC_DIR,
    ServeProcess,
    seed_file_store,
    start_serve,
    write_file_store_config,
)
from credproxy.protocol.framing import FrameDecoder, FrameError, encode_frame  # noqa: E402

PROVIDER: Final = "fuzz"
BUCKET: Final = "default"
KEY_NAME: Final = "fuzz-key"
KEY_VALUE: Final = "sk-fuzz-decoy-key-0001"
REFRESH_SECRET: Final = "fuzz-refresh-decoy-never-leaves-0001"
TOKEN: Final[dict[str, Any]] = {
    "access_token": "fuzz-access-decoy-0001",
    "refresh_token": REFRESH_SECRET,
    "expiry": 4_000_000_000,
    "token_type": "Bearer",
}
MAX_INPUT_BYTES: Final = 4096
PROBE_EVERY: Final = 250
_HEADER_LEN: Final = 4

OPS: Final = (
    "get_token",
    "save_token",
    "remove_token",
    "list_providers",
    "list_buckets",
    "get_api_key",
    "list_api_keys",
    "has_api_key",
    "refresh_token",
    "oauth_initiate",
    "oauth_exchange",
    "oauth_poll",
    "oauth_cancel",
    "cancel",
    "handshake",
    "no_such_op",
)
FIELDS: Final = (
    "provider",
    "bucket",
    "name",
    "token",
    "session_id",
    "code",
    "targetId",
    "capabilityToken",
    "minVersion",
    "maxVersion",
)


class InputReader:
    """Turns fuzz bytes into choices, in the manner of atheris' FuzzedDataProvider,
    so both engines drive the same harness; past the end every draw is zero."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def byte(self) -> int:
        if self._at >= len(self._data):
            return 0
        value = self._data[self._at]
        self._at += 1
        return value

    def pick(self, options: tuple[Any, ...] | list[Any]) -> Any:
        return options[self.byte() % len(options)]

    def take(self, count: int) -> bytes:
        chunk = self._data[self._at : self._at + count]
        self._at += len(chunk)
        return chunk

    def rest(self) -> bytes:
        return self.take(len(self._data))

    @property
    def exhausted(self) -> bool:
        return self._at >= len(self._data)


def _values(reader: InputReader, depth: int = 0) -> Any:
    """A field value: valid, boundary or hostile (nested at most three deep)."""
    kind = reader.byte() % 16
    small = reader.byte()
    choices: list[Any] = [
        PROVIDER,
        BUCKET,
        KEY_NAME,
        "a" * 64,
        "a" * 65,
        "",
        "../etc/passwd",
        "x\x00y",
        "\u202e\ud7ff",
        small,
        -1,
        2**63,
        1.5,
        None,
        True,
        [],
    ]
    value = choices[kind]
    if kind == 15 and depth < 3:
        value = [_values(reader, depth + 1) for _ in range(small % 4)]
    if small % 11 == 0:
        value = {"refresh_token": "planted", "access_token": value, "nested": {"a": value}}
    if small % 13 == 0:
        value = reader.take(small % 64).decode("latin-1")
    return value


def _request(reader: InputReader, version: int) -> dict[str, Any]:
    op = reader.pick(OPS)
    message: dict[str, Any] = {"v": version, "op": op}
    id_kind = reader.byte() % 8
    if id_kind < 5:
        message["id"] = str(uuid.UUID(int=reader.byte()))
    elif id_kind == 5:
        message["id"] = reader.byte()
    elif id_kind == 6:
        message["id"] = "x" * (reader.byte() * 4)
    payload: dict[str, Any] = {}
    for _ in range(reader.byte() % 5):
        payload[reader.pick(FIELDS)] = _values(reader)
    if op in ("get_token", "remove_token", "refresh_token", "list_buckets", "save_token"):
        payload.setdefault("provider", PROVIDER)
    if op == "save_token":
        payload.setdefault("token", {"access_token": "fuzz-saved-decoy"})
    if op in ("get_api_key", "has_api_key"):
        payload.setdefault("name", KEY_NAME)
    shape = reader.byte() % 10
    if shape < 8:
        message["payload"] = payload
    elif shape == 8:
        message["payload"] = _values(reader)
    if reader.byte() % 16 == 0:
        message["v"] = _values(reader)
    if reader.byte() % 16 == 0:
        message[str(reader.byte())] = _values(reader)
    return message


def _frame(message: dict[str, Any]) -> bytes:
    try:
        return encode_frame(message, allow_refresh_token=True)
    except FrameError:
        return b""


def handshake_frame(token: str, reader: InputReader | None = None) -> bytes:
    payload: dict[str, Any] = {"minVersion": 1, "maxVersion": 2, "capabilityToken": token}
    version: Any = 2
    if reader is not None:
        for _ in range(reader.byte() % 3):
            name = reader.pick(("minVersion", "maxVersion", "extra", "v"))
            if name == "v":
                version = _values(reader)
            else:
                payload[name] = _values(reader)
    return _frame({"v": version, "op": "handshake", "payload": payload})


def stream_from_input(data: bytes, token: str) -> bytes:
    """The bytes one connection sends for one fuzz input."""
    reader = InputReader(data)
    mode = reader.byte() % 10
    if mode == 0:
        return reader.rest()
    out = bytearray(handshake_frame(token, reader if mode == 1 else None))
    version = 1 if reader.byte() % 4 == 0 else 2
    while not reader.exhausted and len(out) < 3 * MAX_INPUT_BYTES:
        kind = reader.byte() % 8
        if kind < 5:
            out += _frame(_request(reader, version))
        elif kind < 7:
            body = reader.take(reader.byte() * 2)
            out += len(body).to_bytes(_HEADER_LEN, "big") + body
        else:
            out += reader.take(reader.byte())
    return bytes(out)


# --- the daemon ---------------------------------------------------------------------------


def start_daemon(workdir: Path) -> ServeProcess:
    """``credproxy serve`` on an encrypted file store seeded with a token and a key;
    the per-connection rate limit raised so the campaign measures the code, not it."""
    store_dir = workdir / "store"
    if not store_dir.exists():
        seed_file_store(store_dir, {(PROVIDER, BUCKET): TOKEN}, {KEY_NAME: KEY_VALUE})
    config = workdir / "config.toml"
    write_file_store_config(config, store_dir)
    return start_serve(workdir, config, ["--audit-log", str(workdir / "audit.log")])


# --- one input through the request path -----------------------------------------------------


@dataclass
class Findings:
    items: list[dict[str, Any]] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    inputs: int = 0

    def add(self, kind: str, data: bytes, detail: str) -> None:
        self.items.append({"kind": kind, "detail": detail[:300], "input_hex": data[:2048].hex()})


def exchange(path: Path, stream: bytes, hang_s: float) -> tuple[str, bytes]:
    """Send ``stream``, half-close, read to EOF.

    Returns ``"closed"``, ``"hang"`` or ``"refused"`` and the bytes received."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    received = bytearray()
    try:
        sock.settimeout(hang_s)
        try:
            sock.connect(str(path))
        except OSError:
            return "refused", b""
        deadline = time.monotonic() + hang_s
        with contextlib.suppress(OSError):
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "hang", bytes(received)
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65_536)
            except TimeoutError:
                return "hang", bytes(received)
            except OSError:
                return "closed", bytes(received)
            if not chunk:
                return "closed", bytes(received)
            received += chunk
    finally:
        sock.close()


def answers_of(received: bytes) -> list[dict[str, Any]]:
    decoder = FrameDecoder()
    try:
        return decoder.feed(received)
    except FrameError:
        return [{"code": "UNDECODABLE_FROM_DAEMON"}]


def probe(daemon: ServeProcess, hang_s: float) -> str | None:
    """A well-behaved client must still be served; the reason when it is not."""
    from credproxy.client import ProxyClient
    from credproxy.client._exceptions import ProxyClientError

    try:
        token = daemon.capability_token
        with ProxyClient(str(daemon.socket_path), token, timeout=hang_s) as client:
            if client.get_api_key(KEY_NAME) != KEY_VALUE:
                return "the probe read a wrong key value"
    except ProxyClientError as exc:
        return f"{exc.code}: {exc.message}"
    return None


class RequestPathTarget:
    """The harness one engine calls per input; restarts a daemon that died."""

    def __init__(self, workdir: Path, hang_s: float, findings: Findings) -> None:
        self.workdir = workdir
        self.hang_s = hang_s
        self.findings = findings
        self.daemon = start_daemon(workdir)

    def __call__(self, data: bytes) -> None:
        findings = self.findings
        findings.inputs += 1
        stream = stream_from_input(data, self.daemon.capability_token)
        outcome, received = exchange(self.daemon.socket_path, stream, self.hang_s)
        if outcome == "hang":
            findings.add("hang", data, f"no close within {self.hang_s} s")
        for answer in answers_of(received):
            code = answer.get("code")
            _count_answer(findings.answers, answer.get("ok"), code)
            if code in ("INTERNAL_ERROR", "UNDECODABLE_FROM_DAEMON"):
                findings.add("internal_error", data, json.dumps(answer)[:300])
        if REFRESH_SECRET.encode() in received:
            findings.add("leak", data, "the refresh token reached the socket")
        if self.daemon.process.poll() is not None:
            findings.add("crash", data, f"daemon exited with {self.daemon.process.returncode}")
            self.daemon = start_daemon(self.workdir)
        elif outcome == "refused":
            findings.add("refused", data, "a new connection was refused")
        if findings.inputs % PROBE_EVERY == 0:
            reason = probe(self.daemon, self.hang_s)
            if reason is not None:
                findings.add("probe", data, reason)

    def close(self) -> None:
        self.daemon.stop()


def _count_answer(counter: Counter[str], ok: object, code: object) -> None:
    """One branch per outcome, so atheris sees new answers as new coverage."""
    if ok is True:
        counter["ok"] += 1
    elif code == "INVALID_REQUEST":
        counter["INVALID_REQUEST"] += 1
    elif code == "UNAUTHORIZED":
        counter["UNAUTHORIZED"] += 1
    elif code == "NOT_FOUND":
        counter["NOT_FOUND"] += 1
    elif code == "RESOURCE_EXHAUSTED":
        counter["RESOURCE_EXHAUSTED"] += 1
    elif code == "RATE_LIMITED":
        counter["RATE_LIMITED"] += 1
    elif code == "UNKNOWN_VERSION":
        counter["UNKNOWN_VERSION"] += 1
    elif code == "PROVIDER_NOT_FOUND":
        counter["PROVIDER_NOT_FOUND"] += 1
    else:
        counter[str(code)[:40]] += 1


# --- the decoder in process --------------------------------------------------------------


def decoder_input(data: bytes) -> None:
    """Feed ``data`` in pieces whose sizes the input chooses; anything but objects and
    ``FrameError`` is a finding (raised, so the engine keeps the input)."""
    if not data:
        return
    decoder = FrameDecoder(max_frame_bytes=1 + data[0] * 64)
    at = 1
    while at < len(data):
        step = 1 + data[at] % 97
        chunk = data[at + 1 : at + 1 + step]
        at += 1 + step
        try:
            frames = decoder.feed(chunk)
        except FrameError:
            return
        if not all(isinstance(frame, dict) for frame in frames):
            raise AssertionError("the decoder produced a non-object")


# --- engines -----------------------------------------------------------------------------


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_hypothesis(target: Callable[[bytes], None], seconds: float) -> int:
    """Batches of hypothesis examples until ``seconds`` pass; returns inputs tried."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    tried = 0
    deadline = time.monotonic() + seconds

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.binary(max_size=MAX_INPUT_BYTES))
    def batch(data: bytes) -> None:
        nonlocal tried
        tried += 1
        target(data)

    while time.monotonic() < deadline:
        batch()
    return tried


def _worker_atheris(target_name: str, workdir: Path, hang_s: float, stats_path: Path) -> None:
    """Runs under libFuzzer until its -max_total_time; stats are flushed as it goes,
    because libFuzzer ends the process without returning here."""
    import atheris

    findings = Findings()
    request_path = (
        RequestPathTarget(workdir, hang_s, findings) if target_name != "decoder" else None
    )
    atheris.instrument_all()

    def flush() -> None:
        stats: dict[str, Any] = {"inputs": findings.inputs, "answers": dict(findings.answers)}
        stats["findings"] = findings.items[:200]
        if request_path is not None:
            stats["daemon_pid"] = request_path.daemon.process.pid
            stats["rss_kib"] = request_path.daemon.rss_kib()
            stats["stderr_bytes"] = request_path.daemon.stderr_bytes()
            stats["audit_bytes"] = request_path.daemon.audit_bytes()
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        tmp.replace(stats_path)

    def one_input(data: bytes) -> None:
        if request_path is None:
            findings.inputs += 1
            decoder_input(data)
        else:
            request_path(data)
        if findings.inputs % 200 == 0:
            flush()

    flush()  # the daemon's pid is on record before anything can end the worker
    atheris.Setup([sys.argv[0], *os.environ.get("FUZZ_LIBFUZZER_ARGS", "").split()], one_input)
    atheris.Fuzz()


@dataclass
class Report:
    target: str
    engine: str
    seconds: float
    inputs: int
    findings: list[dict[str, Any]]
    answers: dict[str, int]
    coverage: str | None = None
    rss_kib_warm: int | None = None
    rss_kib_end: int | None = None
    stderr_bytes: int | None = None
    audit_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


def _libfuzzer_figures(stderr: str) -> tuple[int | None, str | None]:
    runs: int | None = None
    coverage: str | None = None
    for line in stderr.splitlines():
        if line.startswith("#") and " cov: " in line:
            parts = line.split()
            with contextlib.suppress(ValueError, IndexError):
                runs = int(parts[0][1:])
                coverage = (
                    f"cov {parts[parts.index('cov:') + 1]} ft {parts[parts.index('ft:') + 1]}"
                )
        if line.startswith("Done ") and " runs in " in line:
            with contextlib.suppress(ValueError, IndexError):
                runs = int(line.split()[1])
    return runs, coverage


SEEDS: Final = (
    bytes([2, 0, 0, 0, 5, 0, 0, 0]),  # get_token of the seeded provider
    bytes([2, 0, 0, 5, 5, 0, 9, 2, 4, 1, 0, 0, 1, 6, 3]),
    bytes([1, 3, 0, 7, 2]) + bytes(range(64)),  # a handshake with mutated fields
    bytes([0]) + b"\x00\x00\x00\x02{}\x00\x00\x00\x05[1,2]",  # raw stream
    bytes([3, 0, 5, 40]) + b'{"v":2,"id":"x","op":"get_api_key","payload":{}}' * 2,
)
"""Starting inputs, one per kind of stream, so the mutator begins from frames that
get past the handshake instead of from empty input."""


def _seed_corpus(corpus: Path) -> None:
    for number, seed in enumerate(SEEDS):
        path = corpus / f"seed-{number}"
        if not path.exists():
            path.write_bytes(seed)


def _stop_orphan(pid: object) -> None:
    """libFuzzer ends the worker without running its cleanup, so the daemon the
    worker started is stopped here, by the pid the worker recorded."""
    if isinstance(pid, int) and pid > 1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def run_atheris(target: str, seconds: float, hang_s: float, workdir: Path) -> Report:
    stats_path = workdir / "stats.json"
    corpus = workdir / "corpus"
    corpus.mkdir(exist_ok=True)
    _seed_corpus(corpus)
    args = f"-max_total_time={int(seconds)} -timeout={int(hang_s * 3) + 5} -rss_limit_mb=4096"
    args += f" -max_len={MAX_INPUT_BYTES} -len_control=0 -print_final_stats=1"
    args += f" -artifact_prefix={workdir}/ {corpus}"
    command = [sys.executable, __file__, "--worker", target, "--workdir", str(workdir)]
    command += ["--hang-s", str(hang_s), "--stats", str(stats_path)]
    env = dict(os.environ, FUZZ_LIBFUZZER_ARGS=args)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
    started = time.monotonic()
    rss_warm: int | None = None
    log_path = workdir / "libfuzzer.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        warm_at = started + min(120.0, seconds / 10)
        while worker.poll() is None:
            time.sleep(2.0)
            if rss_warm is None and time.monotonic() >= warm_at and stats_path.exists():
                rss_warm = json.loads(stats_path.read_text()).get("rss_kib") or None
        worker.wait()
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    _stop_orphan(stats.get("daemon_pid"))
    runs, coverage = _libfuzzer_figures(log_path.read_text(errors="replace"))
    findings = list(stats.get("findings", []))
    if worker.returncode not in (0, None):
        findings.append({"kind": "engine", "detail": f"the fuzz worker exited {worker.returncode}"})
    report = Report(
        target=target,
        engine="atheris",
        seconds=round(time.monotonic() - started, 1),
        inputs=runs if runs is not None else int(stats.get("inputs", 0)),
        findings=findings,
        answers=stats.get("answers", {}),
        coverage=coverage,
        rss_kib_warm=rss_warm,
        rss_kib_end=stats.get("rss_kib") or None,
        stderr_bytes=stats.get("stderr_bytes"),
        audit_bytes=stats.get("audit_bytes"),
    )
    if target == "request-path":
        report.notes.append("coverage is the harness's: the daemon runs in another process")
    return report


def run_campaign(target: str, engine: str, seconds: float, hang_s: float, workdir: Path) -> Report:
    if engine == "auto":
        engine = "atheris" if _atheris_available() else "hypothesis"
    if engine == "atheris":
        return run_atheris(target, seconds, hang_s, workdir)
    findings = Findings()
    started = time.monotonic()
    if target == "decoder":
        inputs = run_hypothesis(decoder_input, seconds)
        return Report(target, "hypothesis", round(time.monotonic() - started, 1), inputs, [], {})
    request_path = RequestPathTarget(workdir, hang_s, findings)
    try:
        warm = min(120.0, seconds / 10)
        run_hypothesis(request_path, warm)
        rss_warm = request_path.daemon.rss_kib()
        run_hypothesis(request_path, max(0.0, seconds - warm))
        rss_end = request_path.daemon.rss_kib()
    finally:
        request_path.close()
    # Measured once the daemon has stopped, so the counts it writes on stop are in.
    stderr_bytes = request_path.daemon.stderr_bytes()
    audit_bytes = request_path.daemon.audit_bytes()
    return Report(
        target,
        "hypothesis",
        round(time.monotonic() - started, 1),
        findings.inputs,
        findings.items,
        dict(findings.answers),
        rss_kib_warm=rss_warm,
        rss_kib_end=rss_end,
        stderr_bytes=stderr_bytes,
        audit_bytes=audit_bytes,
    )


def judge_rss(report: Report, allowed_growth: float) -> None:
    if report.rss_kib_warm and report.rss_kib_end:
        growth = report.rss_kib_end / report.rss_kib_warm - 1.0
        if growth > allowed_growth:
            report.findings.append(
                {
                    "kind": "rss",
                    "detail": f"RSS grew {growth:.0%} after warm-up "
                    f"({report.rss_kib_warm} -> {report.rss_kib_end} KiB)",
                }
            )


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix="cpfz-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("decoder", "request-path"), default="request-path")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--hang-s", type=float, default=10.0)
    parser.add_argument("--rss-growth", type=float, default=0.10)
    parser.add_argument("--report", type=Path, help="write the JSON report here too")
    parser.add_argument("--workdir", type=Path, help="keep the daemon, corpus and logs here")
    parser.add_argument("--worker", choices=("decoder", "request-path"), help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker_atheris(args.worker, args.workdir, args.hang_s, args.stats)
        return 0
    with _workdir(args.workdir) as workdir:
        report = run_campaign(args.target, args.engine, args.minutes * 60, args.hang_s, workdir)
    judge_rss(report, args.rss_growth)
    text = json.dumps(report.__dict__, indent=2)
    print(text)
    if args.report is not None:
        args.report.write_text(text + "\n")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
