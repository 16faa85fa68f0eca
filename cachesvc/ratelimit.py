"""Per-user token buckets (in this process: each replica limits on its own)."""

from __future__ import annotations

import math
import time
import uuid


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.buckets: dict[uuid.UUID, tuple[float, float]] = {}  # user -> (tokens, at)
        self._next_prune = time.monotonic() + 60

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, user: uuid.UUID) -> float:
        """0 when the request may go ahead, else the seconds until a token is there."""
        if not self.enabled:
            return 0.0
        now = time.monotonic()
        tokens, at = self.buckets.get(user, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1:
            self.buckets[user] = (tokens - 1, now)
            wait = 0.0
        else:
            self.buckets[user] = (tokens, now)
            wait = (1 - tokens) / self.rate
        if now >= self._next_prune:
            self._prune(now)
        return wait

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely (they behave as new ones)."""
        full_after = self.burst / self.rate
        self.buckets = {u: (t, at) for u, (t, at) in self.buckets.items() if now - at < full_after}
        self._next_prune = now + 60


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
