"""Grant enforcement and the secret boundary over a real socket, on a seeded file store."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient, store_config
from tests.server.material import (
    KEY_SECRETS,
    REFRESH_SECRETS,
    SEEDED_TOKENS,
)

OUTSIDE = "not permitted by this connection's grant"


def _narrow(credproxy_daemon: DaemonFactory, *extra: str) -> DaemonHandle:
    return credproxy_daemon(
        "--allow",
        "anthropic:work",
        "--allow",
        "gemini",
        "--allow-key",
        "openai",
        *extra,
        tokens=SEEDED_TOKENS,
        keys=KEY_SECRETS,
    )


def _stored(daemon: DaemonHandle, provider: str, bucket: str = "default") -> Any:
    """Read the host store directly (after the daemon stopped), as the host CLI would."""
    from credproxy.store.factory import open_store

    result: list[Any] = []

    async def read() -> None:
        store = open_store("file", store_config(daemon.workdir / "store"))
        try:
            result.append(await store.get_token(provider, bucket))
        finally:
            await store.close()

    thread = threading.Thread(target=lambda: asyncio.run(read()))
    thread.start()
    thread.join()
    return result[0]


def _assert_no_refresh_bytes(client: RawClient) -> None:
    received = bytes(client.received)
    assert b"refresh_token" not in received
    for secret in REFRESH_SECRETS:
        assert secret.encode() not in received


def test_tokens_outside_the_grant_are_unauthorized_whether_or_not_they_exist(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = _narrow(credproxy_daemon)
    with daemon.client() as client:
        for provider, bucket in [
            ("anthropic", "default"),
            ("qwen", "default"),
            ("nosuchprovider", "default"),
            ("anthropic", "nosuchbucket"),
        ]:
            for op in ("get_token", "remove_token"):
                reply = client.request(op, {"provider": provider, "bucket": bucket})
                assert (reply["code"], reply["error"]) == ("UNAUTHORIZED", OUTSIDE), (op, provider)
            reply = client.request(
                "save_token",
                {
                    "provider": provider,
                    "bucket": bucket,
                    "token": {"access_token": "a", "expiry": 1, "token_type": "Bearer"},
                },
            )
            assert (reply["code"], reply["error"]) == ("UNAUTHORIZED", OUTSIDE)
        for name in ("other", "nosuchkey"):
            for op in ("get_api_key", "has_api_key"):
                reply = client.request(op, {"name": name})
                assert (reply["code"], reply["error"]) == ("UNAUTHORIZED", OUTSIDE)
        for provider in ("qwen", "nosuchprovider"):
            reply = client.request("list_buckets", {"provider": provider})
            assert (reply["code"], reply["error"]) == ("UNAUTHORIZED", OUTSIDE)
        _assert_no_refresh_bytes(client)


def test_inside_the_grant_reads_work_and_missing_is_not_found(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = _narrow(credproxy_daemon)
    with daemon.client() as client:
        work = client.request("get_token", {"provider": "anthropic", "bucket": "work"})
        expected = {k: v for k, v in SEEDED_TOKENS[("anthropic", "work")].items()}
        del expected["refresh_token"]
        assert work["data"] == expected
        gemini = client.request("get_token", {"provider": "gemini"})
        assert (
            gemini["data"]["access_token"] == SEEDED_TOKENS[("gemini", "default")]["access_token"]
        )
        missing = client.request("get_token", {"provider": "gemini", "bucket": "other"})
        assert missing["code"] == "NOT_FOUND"
        assert client.request("get_api_key", {"name": "openai"})["data"] == {
            "key": KEY_SECRETS["openai"]
        }
        assert client.request("has_api_key", {"name": "openai"})["data"] == {"exists": True}
        _assert_no_refresh_bytes(client)


def test_lists_show_only_what_the_grant_allows(credproxy_daemon: DaemonFactory) -> None:
    daemon = _narrow(credproxy_daemon)
    with daemon.client() as client:
        assert client.request("list_providers")["data"] == {"providers": ["anthropic", "gemini"]}
        assert client.request("list_buckets", {"provider": "anthropic"})["data"] == {
            "buckets": ["work"]
        }
        assert client.request("list_buckets", {"provider": "gemini"})["data"] == {
            "buckets": ["default"]
        }
        assert client.request("list_api_keys")["data"] == {"keys": ["openai"]}


def test_full_grant_lists_everything_sorted(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(tokens=SEEDED_TOKENS, keys=KEY_SECRETS)
    with daemon.client() as client:
        providers = client.request("list_providers")["data"]["providers"]
        assert providers == ["anthropic", "gemini", "qwen"]
        buckets = client.request("list_buckets", {"provider": "anthropic"})["data"]
        assert buckets == {"buckets": ["default", "work"]}
        assert client.request("list_api_keys")["data"] == {"keys": ["openai", "other"]}


def test_save_and_remove_need_their_flags(credproxy_daemon: DaemonFactory) -> None:
    daemon = _narrow(credproxy_daemon)
    token = {"access_token": "new", "expiry": 5, "token_type": "Bearer"}
    with daemon.client() as client:
        reply = client.request("save_token", {"provider": "gemini", "token": token})
        assert (reply["code"], reply["error"]) == ("UNAUTHORIZED", OUTSIDE)
        reply = client.request("remove_token", {"provider": "gemini"})
        assert (reply["code"], reply["error"]) == ("UNAUTHORIZED", OUTSIDE)
    daemon.stop()
    assert _stored(daemon, "gemini") == SEEDED_TOKENS[("gemini", "default")]


def test_save_token_merges_and_never_takes_a_refresh_token_from_the_sandbox(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = _narrow(credproxy_daemon, "--allow-save", "--allow-remove")
    planted = "refresh-PLANTED-by-the-sandbox-000"
    with daemon.client() as client:
        reply = client.request(
            "save_token",
            {
                "provider": "gemini",
                "token": {
                    "access_token": "access-NEW",
                    "expiry": 1234.5,
                    "token_type": "Bearer",
                    "refresh_token": planted,
                    "scope": "new-scope",
                },
            },
        )
        assert reply == {"v": 2, "id": reply["id"], "ok": True, "data": {}}
        reply = client.request(
            "save_token",
            {
                "provider": "anthropic",
                "bucket": "work",
                "token": {
                    "access_token": "access-FRESH",
                    "expiry": 9,
                    "token_type": "Bearer",
                    "refresh_token": planted,
                },
            },
        )
        assert reply["ok"] is True
        after = client.request("get_token", {"provider": "gemini"})["data"]
        assert after == {
            "access_token": "access-NEW",
            "expiry": 1234.5,
            "token_type": "Bearer",
            "scope": "new-scope",
            "account_id": "account-2",
        }
        assert client.request("remove_token", {"provider": "anthropic", "bucket": "work"})["ok"]
        again = client.request("remove_token", {"provider": "anthropic", "bucket": "work"})
        assert again["ok"] is True
        _assert_no_refresh_bytes(client)
    daemon.stop()
    gemini = _stored(daemon, "gemini")
    assert gemini["refresh_token"] == SEEDED_TOKENS[("gemini", "default")]["refresh_token"]
    assert gemini["access_token"] == "access-NEW"
    assert _stored(daemon, "anthropic", "work") is None


def test_save_token_for_a_new_slot_stores_no_refresh_token(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(tokens=SEEDED_TOKENS)
    with daemon.client() as client:
        token = {"access_token": "a", "expiry": 1, "token_type": "Bearer", "refresh_token": "r"}
        assert client.request("save_token", {"provider": "fresh", "token": token})["ok"]
    daemon.stop()
    assert _stored(daemon, "fresh") == {"access_token": "a", "expiry": 1, "token_type": "Bearer"}


def test_no_byte_of_any_refresh_token_reaches_the_client(credproxy_daemon: DaemonFactory) -> None:
    """Every op, in and outside the grant, successes and failures, on one capture."""
    daemon = credproxy_daemon(tokens=SEEDED_TOKENS, keys=KEY_SECRETS)
    with daemon.client() as client:
        requests: list[tuple[str, dict[str, Any]]] = [("list_providers", {}), ("list_api_keys", {})]
        for provider, bucket in SEEDED_TOKENS:
            slot = {"provider": provider, "bucket": bucket}
            requests += [
                ("get_token", slot),
                ("list_buckets", {"provider": provider}),
                ("refresh_token", slot),
                ("oauth_initiate", slot),
            ]
        requests += [("get_token", {"provider": "anthropic", "bucket": "x" * 65})]
        for op, payload in requests:
            client.request(op, payload)
        replies = [
            client.request("get_token", {"provider": p, "bucket": b}) for p, b in SEEDED_TOKENS
        ]
        assert all(r["ok"] for r in replies)
        assert client.received
        _assert_no_refresh_bytes(client)


def test_save_token_refuses_a_new_bucket_past_the_per_provider_cap(
    credproxy_daemon: DaemonFactory,
) -> None:
    from credproxy.server.handlers import MAX_BUCKETS_PER_PROVIDER

    daemon = credproxy_daemon("--no-capability", "--rate-limit", "100000", store="memory")
    token = {"access_token": "at-cap", "expiry": 1_900_000_000, "token_type": "Bearer"}
    with daemon.client() as client:
        for index in range(MAX_BUCKETS_PER_PROVIDER):
            payload = {"provider": "qwen", "bucket": f"b{index}", "token": token}
            assert client.request("save_token", payload)["ok"] is True
        refused = client.request(
            "save_token", {"provider": "qwen", "bucket": "one-more", "token": token}
        )
        assert refused["ok"] is False and refused["code"] == "RESOURCE_EXHAUSTED"
        updated = dict(token, access_token="at-cap-2")
        existing = {"provider": "qwen", "bucket": "b0", "token": updated}
        assert client.request("save_token", existing)["ok"] is True
        other = {"provider": "gemini", "token": token}
        assert client.request("save_token", other)["ok"] is True
        buckets = client.request("list_buckets", {"provider": "qwen"})["data"]["buckets"]
        assert len(buckets) == MAX_BUCKETS_PER_PROVIDER and "one-more" not in buckets
