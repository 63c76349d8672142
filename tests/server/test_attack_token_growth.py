"""A sandbox that may save tokens tries to grow the stored token without end.

``save_token`` merges into the stored token, keeping fields the new one lacks.
Each save of new field names used to add to the stored token, until the store
held megabytes for one bucket and ``get_token`` could no longer fit the token in
a frame, failing for every sandbox that shares the bucket.
"""

from __future__ import annotations

from typing import Any

from tests.fixtures.daemon import DaemonFactory

STORED = {
    "access_token": "at-stored",
    "refresh_token": "rt-stored-secret",
    "expiry": 1_900_000_000,
    "token_type": "Bearer",
}


def _token(prefix: str, fields: int, size: int) -> dict[str, Any]:
    token: dict[str, Any] = {"access_token": "at-new", "expiry": 1_900_000_000, "token_type": "B"}
    token.update({f"{prefix}{index}": "y" * size for index in range(fields)})
    return token


def test_saves_cannot_merge_the_stored_token_past_its_field_limit(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--allow", "p", "--allow-save", tokens={("p", "default"): STORED})
    with daemon.client() as client:
        first = client.request("save_token", {"provider": "p", "token": _token("a", 40, 10)})
        assert first["ok"] is True
        second = client.request("save_token", {"provider": "p", "token": _token("b", 40, 10)})
        assert second["ok"] is False
        assert second["code"] == "INVALID_REQUEST"
        assert "fields" in second["error"]
        stored = client.request("get_token", {"provider": "p"})
        assert stored["ok"] is True
        assert "b0" not in stored["data"]


def test_saves_cannot_merge_the_stored_token_past_what_a_frame_can_carry(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--allow", "p", "--allow-save", tokens={("p", "default"): STORED})
    with daemon.client() as client:
        # Each save fits a v2 frame (4 MiB); together they would not.
        for round_ in range(3):
            saved = client.request(
                "save_token", {"provider": "p", "token": _token(f"r{round_}-", 4, 300_000)}
            )
            assert saved["ok"] is True, saved
        stored = client.request("get_token", {"provider": "p"})
        assert stored["ok"] is True
        refused = client.request("save_token", {"provider": "p", "token": _token("z", 1, 600_000)})
        assert refused["code"] == "INVALID_REQUEST"
        assert "bytes" in refused["error"]
        assert client.request("get_token", {"provider": "p"})["ok"] is True
