"""A token bucket for route calls. Pure: the caller passes ``now``."""

from __future__ import annotations

_ROUNDING = 1e-9  # refilling to exactly ready_at() may land a float step short of a token


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; starts full."""

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._stamp = now
        self._blocked_until = now

    def _tokens_at(self, now: float) -> float:
        earned = max(0.0, now - self._stamp) * self.rate_per_s
        return min(self.burst, self._tokens + earned)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = self._tokens_at(now)
            self._stamp = now

    def set_rate(self, rate_per_s: float, burst: float, now: float) -> None:
        """A new rate from ``now`` on: what was earned until then counts at the old rate."""
        self._refill(now)
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, burst)
        self._tokens = min(self._tokens, self.burst)

    def try_take(self, now: float) -> bool:
        if now < self._blocked_until:
            return False
        self._refill(now)
        if self._tokens >= 1.0 - _ROUNDING:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def ready_at(self, now: float) -> float:
        """The earliest time ``try_take`` can succeed (a question: it changes nothing)."""
        tokens = self._tokens_at(now)
        if tokens >= 1.0:
            return max(now, self._blocked_until)
        return max(self._blocked_until, now + (1.0 - tokens) / self.rate_per_s)

    def block_until(self, until: float) -> None:
        """The autoscaler said 429: take no token before ``until``."""
        self._blocked_until = max(self._blocked_until, until)
