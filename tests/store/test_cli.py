"""Host store commands: secrets in through stdin only, never out; one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from credproxy.cli import main
from credproxy.store.file import FileStore
from credproxy.store.keysource import KeySettings

SECRET_KEY = "sk-cli-3e9a71"
TOKEN = {
    "access_token": "cli-access-77aa",
    "refresh_token": "cli-refresh-88bb",
    "expiry": 1_900_000_000_000,
    "token_type": "Bearer",
}


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "store"
    monkeypatch.setenv("CREDPROXY_STORE_DIR", str(directory))
    monkeypatch.setenv("CREDPROXY_KEY_SOURCE", "keyfile")
    monkeypatch.setenv("CREDPROXY_CONFIG", str(tmp_path / "config.toml"))
    (tmp_path / "config.toml").write_text("")
    monkeypatch.delenv("LLXPRT_CREDENTIAL_SOCKET", raising=False)
    return directory


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def read_store(directory: Path) -> FileStore:
    return FileStore(directory, KeySettings(source="keyfile"))


def stored_key(directory: Path, name: str) -> str | None:
    async def body() -> str | None:
        store = read_store(directory)
        try:
            return await store.get_key(name)
        finally:
            await store.close()

    return asyncio.run(body())


def stored_token(directory: Path, provider: str, bucket: str) -> dict[str, Any] | None:
    async def body() -> dict[str, Any] | None:
        store = read_store(directory)
        try:
            return await store.get_token(provider, bucket)
        finally:
            await store.close()

    return asyncio.run(body())


def assert_no_secret(result: Result) -> None:
    output = result.stdout + result.stderr
    for secret in (SECRET_KEY, TOKEN["access_token"], TOKEN["refresh_token"]):
        assert str(secret) not in output


def test_key_set_reads_the_value_from_stdin_and_never_prints_it(store_env: Path) -> None:
    result = run("key", "set", "openai", input=SECRET_KEY + "\n")
    assert result.exit_code == 0, result.stderr
    assert stored_key(store_env, "openai") == SECRET_KEY
    assert_no_secret(result)


def test_key_set_refuses_a_value_on_the_command_line(store_env: Path) -> None:
    result = run("key", "set", "openai", SECRET_KEY)
    assert result.exit_code == 2
    assert not store_env.exists() or stored_key(store_env, "openai") is None


@pytest.mark.parametrize(("stdin", "message"), [("", "no key given"), ("a b\n", "single line")])
def test_key_set_rejects_empty_or_multi_word_input(
    store_env: Path, stdin: str, message: str
) -> None:
    result = run("key", "set", "openai", input=stdin)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_key_set_rejects_an_invalid_name(store_env: Path) -> None:
    result = run("key", "set", "../x", input=SECRET_KEY)
    assert result.exit_code == 2
    assert "invalid key name" in result.stderr


def test_key_rm_removes_and_reports_a_missing_key_with_exit_3(store_env: Path) -> None:
    run("key", "set", "openai", input=SECRET_KEY)
    assert run("key", "rm", "openai").exit_code == 0
    assert stored_key(store_env, "openai") is None
    result = run("key", "rm", "openai")
    assert result.exit_code == 3
    assert result.stderr.strip() == "credproxy: no API key openai in the store"


def test_token_import_accepts_llxprt_json_with_millisecond_expiry(
    store_env: Path, tmp_path: Path
) -> None:
    source = tmp_path / "gemini.json"
    source.write_text(json.dumps(TOKEN))
    result = run("token", "import", "gemini", "--bucket", "work", "--file", str(source), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "provider": "gemini",
        "bucket": "work",
        "expiry": 1_900_000_000,
        "refreshToken": True,
    }
    assert stored_token(store_env, "gemini", "work") == {**TOKEN, "expiry": 1_900_000_000}
    assert_no_secret(result)


def test_token_import_with_file_dash_reads_the_token_from_stdin(store_env: Path) -> None:
    result = run("token", "import", "qwen", "--file", "-", input=json.dumps(TOKEN))
    assert result.exit_code == 0, result.stderr
    token = stored_token(store_env, "qwen", "default")
    assert token is not None
    assert token["refresh_token"] == TOKEN["refresh_token"]
    assert_no_secret(result)


def test_token_import_of_an_invalid_file_is_one_line_naming_the_problem(
    store_env: Path, tmp_path: Path
) -> None:
    source = tmp_path / "bad.json"
    source.write_text(json.dumps({"access_token": "cli-access-77aa"}))
    result = run("token", "import", "gemini", "--file", str(source))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"credproxy: cannot import {source}: the token has no expiry "
        "(expiry, expires_at, expiry_date, expires_in)"
    ]
    assert_no_secret(result)


def test_token_rm_removes_one_bucket_and_reports_missing_with_exit_3(
    store_env: Path, tmp_path: Path
) -> None:
    source = tmp_path / "t.json"
    source.write_text(json.dumps(TOKEN))
    run("token", "import", "gemini", "--file", str(source))
    run("token", "import", "gemini", "--bucket", "b", "--file", str(source))
    assert run("token", "rm", "gemini").exit_code == 0
    assert stored_token(store_env, "gemini", "default") is None
    assert stored_token(store_env, "gemini", "b") is not None
    result = run("token", "rm", "gemini")
    assert result.exit_code == 3
    assert "no token gemini (bucket default)" in result.stderr


def test_import_llxprt_reports_as_json_without_values(store_env: Path, tmp_path: Path) -> None:
    home = tmp_path / "llxprt"
    (home / "oauth").mkdir(parents=True)
    (home / "keys").mkdir()
    (home / "oauth" / "gemini-work.json").write_text(json.dumps(TOKEN))
    (home / "keys" / ".openai_key").write_text(SECRET_KEY)
    result = run("import", "llxprt", "--from", str(home), "--json", "--delete-originals")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dryRun"] is False
    assert {(i["kind"], i["name"], i["status"]) for i in report["items"]} == {
        ("token", "gemini/work", "imported"),
        ("key", "openai", "imported"),
    }
    assert stored_key(store_env, "openai") == SECRET_KEY
    assert not (home / "keys" / ".openai_key").exists()
    assert_no_secret(result)


def test_import_llxprt_exits_non_zero_when_a_file_was_skipped(
    store_env: Path, tmp_path: Path
) -> None:
    home = tmp_path / "llxprt"
    (home / "oauth").mkdir(parents=True)
    (home / "oauth" / "acme-corp-work.json").write_text(json.dumps(TOKEN))
    result = run("import", "llxprt", "--from", str(home))
    assert result.exit_code == 1
    assert "--provider" in result.stdout
    result = run("import", "llxprt", "--from", str(home), "--provider", "acme-corp")
    assert result.exit_code == 0
    assert stored_token(store_env, "acme-corp", "work") is not None


def test_host_status_and_key_list_show_names_and_expiry_never_values(
    store_env: Path, tmp_path: Path
) -> None:
    source = tmp_path / "t.json"
    source.write_text(json.dumps(TOKEN))
    run("token", "import", "gemini", "--file", str(source))
    run("key", "set", "openai", input=SECRET_KEY)
    status = run("status", "--json")
    assert status.exit_code == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["mode"] == "host"
    assert report["keys"] == ["openai"]
    entry = report["providers"]["gemini"]["default"]
    assert entry["expiry"] == 1_900_000_000
    assert entry["refreshToken"] is True
    assert entry["status"].startswith("expires in")
    assert_no_secret(status)
    text = run("status")
    assert "gemini" in text.stdout
    assert "default: expires in" in text.stdout
    assert_no_secret(text)
    listing = run("key", "list", "--json")
    assert json.loads(listing.stdout) == {"keys": ["openai"]}


def test_store_that_cannot_be_opened_says_what_to_do(store_env: Path) -> None:
    store_env.mkdir(mode=0o755)
    store_env.chmod(0o755)
    result = run("key", "rm", "openai")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"credproxy: store directory {store_env} is accessible by other users; "
        f"run: chmod 700 {store_env}"
    )


def test_config_file_chooses_the_store_location(
    store_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDPROXY_STORE_DIR")
    config = tmp_path / "other.toml"
    elsewhere = tmp_path / "elsewhere"
    config.write_text(f'[store]\nbackend = "file"\npath = "{elsewhere}"\nkey_source = "keyfile"\n')
    result = run("key", "set", "k", "--config", str(config), input=SECRET_KEY)
    assert result.exit_code == 0, result.stderr
    assert stored_key(elsewhere, "k") == SECRET_KEY


def credproxy_command() -> list[str]:
    entry = Path(sys.executable).with_name("credproxy")
    if entry.exists():
        return [str(entry)]
    return [sys.executable, "-c", "from credproxy.cli import main; main()"]


def test_real_command_reads_a_piped_key_and_shows_it_only_by_name(store_env: Path) -> None:
    """The installed entry point, in a separate process, with a real pipe on stdin."""
    done = subprocess.run(
        [*credproxy_command(), "key", "set", "piped"],
        input=SECRET_KEY + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert SECRET_KEY not in done.stdout + done.stderr
    listing = subprocess.run(
        [*credproxy_command(), "key", "list"], capture_output=True, text=True, check=True
    )
    assert listing.stdout.split() == ["piped"]
    assert stored_key(store_env, "piped") == SECRET_KEY


def test_key_set_on_a_terminal_prompts_without_echoing_the_key(store_env: Path) -> None:
    """A real pseudo-terminal: the typed key must not come back in what the terminal shows."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [*credproxy_command(), "key", "set", "typed"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    shown = b""
    try:
        while b"API key typed" not in shown:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no prompt; terminal showed {shown!r}"
            shown += os.read(master, 4096)
        os.write(master, SECRET_KEY.encode() + b"\r")
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=30) == 0, shown
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert SECRET_KEY.encode() not in shown
    assert b"saved API key typed" in shown
    assert stored_key(store_env, "typed") == SECRET_KEY


async def test_host_status_reports_unusable_expiry_and_damaged_records_without_failing(
    tmp_path: Path,
) -> None:
    from credproxy.cli.store_commands import collect_host_status

    store = FileStore(tmp_path / "store", KeySettings(source="keyfile"))
    await store.save_token("odd", "huge", {**TOKEN, "expiry": 10**400})
    await store.save_token("odd", "text", {**TOKEN, "expiry": "tomorrow"})
    await store.save_token("fine", "default", {**TOKEN, "expiry": 2_000})
    document = json.loads((tmp_path / "store" / "credentials.json").read_text())
    document["records"]["token/fine/default"] = document["records"]["token/odd/text"]
    (tmp_path / "store" / "credentials.json").write_text(json.dumps(document))

    report = await collect_host_status(store, now=1_000)
    assert report["providers"]["odd"]["huge"]["status"] == "expiry unknown"
    assert report["providers"]["odd"]["text"]["status"] == "expiry unknown"
    assert report["providers"]["fine"]["default"]["status"] == "damaged record"
    assert str(TOKEN["refresh_token"]) not in json.dumps(report)
    await store.close()


def test_host_token_get_prints_a_valid_token_and_refuses_a_dead_one_with_the_reason(
    store_env: Path, tmp_path: Path
) -> None:
    """On the host ``token get`` reads the store; an expired token it cannot refresh
    (no [providers.gemini] table here) exits 1 and prints nothing on stdout."""
    live = tmp_path / "live.json"
    live.write_text(json.dumps(TOKEN))
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps({**TOKEN, "expiry": 1_000}))
    run("token", "import", "gemini", "--file", str(live))
    run("token", "import", "gemini", "--bucket", "old", "--file", str(dead))

    printed = run("token", "get", "gemini")
    assert printed.exit_code == 0, printed.stderr
    assert printed.stdout == f"{TOKEN['access_token']}\n"
    as_json = json.loads(run("token", "get", "gemini", "--json").stdout)
    assert "refresh_token" not in as_json

    refused = run("token", "get", "gemini", "--bucket", "old")
    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith("credproxy: the token gemini (bucket old) expired ")
    assert "could not be refreshed: no OAuth provider 'gemini'" in refused.stderr
    assert_no_secret(refused)

    missing = run("token", "get", "absent")
    assert missing.exit_code == 3
    assert "no token absent (bucket default) in the store" in missing.stderr
