"""``credproxy store copy`` between the file store and Redis, and ``status`` on Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from credproxy.cli import main
from credproxy.store.base import CredentialStore
from tests.fixtures.redis import STORE_USER, RedisServer
from tests.store.redis_fleet import run_in_thread

SECRET_KEY = "sk-copy-canary-6f1e"
TOKEN: dict[str, Any] = {
    "access_token": "copy-access-canary-12ab",
    "refresh_token": "copy-refresh-canary-34cd",
    "expiry": 4_000_000_000,
    "token_type": "Bearer",
}


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def write_config(path: Path, server: RedisServer, prefix: str, store_dir: Path) -> Path:
    path.write_text(
        "[store]\n"
        'backend = "redis"\n'
        f'url = "{server.url}"\n'
        f'username = "{STORE_USER}"\n'
        f'password_file = "{server.password_file()}"\n'
        f'prefix = "{prefix}"\n'
        f'path = "{store_dir}"\n'
        'key_source = "keyfile"\n'
        "timeout_s = 2\n"
    )
    return path


@pytest.fixture
def config(
    tmp_path: Path, redis_server: RedisServer, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.delenv("LLXPRT_CREDENTIAL_SOCKET", raising=False)
    return write_config(tmp_path / "config.toml", redis_server, redis_prefix, tmp_path / "store")


def read(config: Path, backend: str, action: Any) -> Any:
    from credproxy.settings import load_settings
    from credproxy.store.factory import open_store

    async def body() -> Any:
        store: CredentialStore = open_store(backend, load_settings(config))
        try:
            return await action(store)
        finally:
            await store.close()

    return run_in_thread(body())


def test_store_copy_moves_a_machines_credentials_into_redis_and_back(
    config: Path, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    token_file = tmp_path / "token.json"
    token_file.write_text(json.dumps(TOKEN))
    assert run("token", "import", "acme", "--file", str(token_file), "--store", "file",
               "--config", str(config)).exit_code == 0  # fmt: skip
    assert run("key", "set", "openai", "--store", "file", "--config", str(config),
               input=SECRET_KEY).exit_code == 0  # fmt: skip

    copied = run("store", "copy", "--from", "file", "--to", "redis", "--json",
                 "--config", str(config))  # fmt: skip
    assert copied.exit_code == 0, copied.output
    report = json.loads(copied.output)
    assert report["items"] == [
        {"kind": "token", "name": "acme/default", "status": "copied"},
        {"kind": "key", "name": "openai", "status": "copied"},
    ]
    assert SECRET_KEY not in copied.output and TOKEN["refresh_token"] not in copied.output
    assert read(config, "redis", lambda s: s.get_token("acme", "default")) == TOKEN
    assert read(config, "redis", lambda s: s.get_key("openai")) == SECRET_KEY
    everything = b"\n".join(redis_server.all_bytes(redis_prefix))
    assert SECRET_KEY.encode() not in everything

    again = run("store", "copy", "--from", "file", "--to", "redis", "--config", str(config))
    assert again.exit_code == 1
    assert "skipped" in again.output and "--overwrite replaces" in again.output

    elsewhere = write_config(
        tmp_path / "other.toml", redis_server, redis_prefix, tmp_path / "other-store"
    )
    # The other host needs the fleet's key file: the Redis store's data key.
    key_name = f"redis-{redis_prefix}.key"
    (tmp_path / "other-store").mkdir(mode=0o700)
    (tmp_path / "other-store" / key_name).write_bytes((tmp_path / "store" / key_name).read_bytes())
    (tmp_path / "other-store" / key_name).chmod(0o600)
    back = run("store", "copy", "--from", "redis", "--to", "file", "--config", str(elsewhere))
    assert back.exit_code == 0, back.output
    assert read(elsewhere, "file", lambda s: s.get_token("acme", "default")) == TOKEN


def test_store_copy_refuses_the_same_backend_twice(config: Path) -> None:
    result = CliRunner().invoke(
        main, ["store", "copy", "--from", "redis", "--to", "redis", "--config", str(config)]
    )
    assert result.exit_code == 2
    assert "same backend" in result.output


def test_status_shows_the_redis_backend_and_its_health(config: Path) -> None:
    token_file = config.parent / "token.json"
    token_file.write_text(json.dumps(TOKEN))
    assert run("token", "import", "acme", "--file", str(token_file),
               "--config", str(config)).exit_code == 0  # fmt: skip
    shown = run("status", "--json", "--config", str(config))
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["backend"]["backend"] == "redis"
    assert report["backend"]["reachable"] is True
    assert report["backend"]["records"] == 1
    assert report["store"].startswith("redis store redis://127.0.0.1:")
    assert list(report["providers"]) == ["acme"]
    text = run("status", "--config", str(config)).output
    assert "backend: reachable, round trip" in text


def test_status_says_when_redis_is_unreachable(
    tmp_path: Path, private_redis: RedisServer, redis_prefix: str
) -> None:
    config = write_config(tmp_path / "c.toml", private_redis, redis_prefix, tmp_path / "s")
    private_redis.stop()
    result = run("status", "--config", str(config))
    assert result.exit_code == 1
    assert "unreachable" in result.output
    assert (
        json.loads(run("status", "--json", "--config", str(config)).output)["backend"]["reachable"]
        is False
    )


def test_the_redis_password_can_live_in_the_keyring(
    tmp_path: Path, redis_server: RedisServer, redis_prefix: str, gnome_keyring: object
) -> None:
    config = tmp_path / "keyring.toml"
    config.write_text(
        "[store]\n"
        'backend = "redis"\n'
        f'url = "{redis_server.url}"\n'
        f'username = "{STORE_USER}"\n'
        "password_keyring = true\n"
        f'prefix = "{redis_prefix}"\n'
        f'path = "{tmp_path / "store"}"\n'
    )
    before = run("status", "--config", str(config))
    assert before.exit_code == 1
    assert "no Redis password in the keyring" in before.output
    saved = run("store", "redis-password", "--config", str(config),
                input=redis_server.store_password + "\n")  # fmt: skip
    assert saved.exit_code == 0, saved.output
    assert redis_server.store_password not in saved.output
    assert run("key", "set", "k", "--config", str(config), input=SECRET_KEY).exit_code == 0
    assert read(config, "redis", lambda s: s.get_key("k")) == SECRET_KEY
