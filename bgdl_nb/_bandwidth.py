"""The session's bandwidth limit: a token bucket the engine charges with every chunk it receives."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """A bandwidth limit: ``rate`` bytes per second with bursts up to ``burst`` bytes.

    :meth:`reserve` takes ``n`` bytes and says how long to wait before sending more, so
    over any window of ``t`` seconds at most ``rate * t + burst`` bytes pass. ``rate``
    ``None`` means no limit; it can change at any time.
    """

    def __init__(self, rate: float | None, burst: float | None = None, *, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else (rate / 4 if rate else 0.0)
        self.tokens = self.burst
        self.stamp = now

    def set_rate(self, rate: float | None, now: float, burst: float | None = None) -> None:
        self._refill(now)
        self.rate = rate
        self.burst = burst if burst is not None else (rate / 4 if rate else 0.0)
        self.tokens = min(self.tokens, self.burst)

    def _refill(self, now: float) -> None:
        if self.rate is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def reserve(self, n: int, now: float) -> float:
        """Account for ``n`` bytes just received; return seconds to pause (0 when none)."""
        if self.rate is None:
            return 0.0
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
