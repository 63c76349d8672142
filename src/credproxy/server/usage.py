"""Per-bucket usage counters behind ``get_bucket_stats``.

LLxprt Code's sandbox client asks for bucket statistics (an operation its own
host server answers, though ``protocol.md`` does not list it). The daemon
counts the tokens it served since it started; nothing is persisted. Only
buckets that had a token served are counted, so a sandbox cannot grow the
table with invented names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class BucketCount:
    requests: int = 0
    last_used_ms: int = 0


class BucketUsage:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[tuple[str, str], BucketCount] = {}
        self._provider_totals: dict[str, int] = {}

    def record(self, provider: str, bucket: str) -> None:
        count = self._counts.setdefault((provider, bucket), BucketCount())
        count.requests += 1
        count.last_used_ms = int(self._clock() * 1000)
        self._provider_totals[provider] = self._provider_totals.get(provider, 0) + 1

    def stats(self, provider: str, bucket: str) -> dict[str, object]:
        """LLxprt's shape: request count, share of the provider's requests in
        percent, and the last use in Unix milliseconds (absent if never used)."""
        count = self._counts.get((provider, bucket), BucketCount())
        total = self._provider_totals.get(provider, 0)
        stats: dict[str, object] = {
            "bucket": bucket,
            "requestCount": count.requests,
            "percentage": round(100.0 * count.requests / total, 2) if total else 0.0,
        }
        if count.requests:
            stats["lastUsed"] = count.last_used_ms
        return stats
