"""Runs inside ``credproxy run --sandbox bwrap --inject anthropic --inject openai``.

Calls the upstream through the proxy with the real SDKs and tools a user
would run, then prints one JSON line of results, followed by everything the
sandbox can read that could hold a secret (environment, process files, /run,
/tmp, /etc), so the test can search all of it for the real secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import requests

NODE_FETCH = (
    "fetch(process.env.ANTHROPIC_BASE_URL + '/v1/echo?from=node', "
    "{headers: {'x-api-key': process.env.ANTHROPIC_API_KEY}})"
    ".then(r => r.text()).then(t => process.stdout.write(t))"
    ".catch(e => { process.stdout.write('node failed: ' + e); process.exit(1); })"
)


def main() -> None:
    base = os.environ["ANTHROPIC_BASE_URL"]
    key = os.environ["ANTHROPIC_API_KEY"]
    results: dict[str, object] = {
        "anthropic_base_url": base,
        "anthropic_key": key,
        "openai_base_url": os.environ["OPENAI_BASE_URL"],
        "openai_key": os.environ["OPENAI_API_KEY"],
    }
    claude = anthropic.Anthropic()
    message = claude.messages.create(
        model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    results["anthropic"] = message.content[0].text  # type: ignore[union-attr]
    with claude.messages.stream(
        model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        results["anthropic_stream"] = "".join(stream.text_stream)
    gpt = openai.OpenAI()
    completion = gpt.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    results["openai"] = completion.choices[0].message.content
    chunks = gpt.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    results["openai_stream"] = "".join(c.choices[0].delta.content or "" for c in chunks)
    echo = requests.get(f"{base}/v1/echo?from=requests", headers={"x-api-key": key}, timeout=30)
    results["requests"] = echo.text
    refused = requests.get(f"{base}/v2/outside", headers={"x-api-key": key}, timeout=30)
    results["refused"] = [refused.status_code, refused.text]
    curl = subprocess.run(
        ["curl", "-sS", "-H", f"x-api-key: {key}", f"{base}/v1/echo?from=curl"],
        capture_output=True,
        text=True,
        check=False,
    )
    results["curl"] = curl.stdout + curl.stderr
    node = subprocess.run(["node", "-e", NODE_FETCH], capture_output=True, text=True, check=False)
    results["node"] = node.stdout + node.stderr
    print(json.dumps(results))
    sys.stdout.flush()
    dump_readable()


def dump_readable() -> None:
    """Everything a hostile program here would search for a secret."""
    out = sys.stdout.buffer
    out.write(repr(dict(os.environ)).encode() + b"\n")
    candidates: list[Path] = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            candidates += [proc / "environ", proc / "cmdline"]
    for root in ("/run", "/tmp", "/etc"):
        for directory, _, files in os.walk(root):
            candidates += [Path(directory, f) for f in files]
    for path in candidates:
        try:
            if path.is_file() or path.parent.parent == Path("/proc"):
                out.write(b"\n== " + str(path).encode() + b"\n" + path.read_bytes()[: 4 << 20])
        except OSError:
            continue
    out.flush()


if __name__ == "__main__":
    main()
