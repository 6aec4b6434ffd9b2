"""How long a job is expected to run: the user's recent history, capped by the time limit.

Tsafrir, Etsion and Feitelson (2007): the mean of a user's last two runtimes predicts far
better than the requested limit, which users overstate several-fold; keep the limit as the
kill time, and raise a prediction that turns out too short (a job still running past it).
"""

from __future__ import annotations

from collections import defaultdict, deque

MIN_RUNTIME_S = 30.0


class RuntimePredictor:
    def __init__(self, history: int = 2) -> None:
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=history))

    def observe(self, user: str, runtime_s: float, limit_s: float) -> None:
        """Record a finished job's runtime (jobs killed at their limit count at the limit)."""
        if runtime_s >= 0:
            self._recent[user].append(min(runtime_s, limit_s) if limit_s > 0 else runtime_s)

    def predict(self, user: str, limit_s: float) -> float:
        """Expected runtime of a new job of `user` with time limit `limit_s`."""
        recent = self._recent.get(user)
        if not recent:
            return limit_s
        guess = sum(recent) / len(recent)
        return max(MIN_RUNTIME_S, min(limit_s, guess)) if limit_s > 0 else max(MIN_RUNTIME_S, guess)

    def remaining(self, user: str, limit_s: float, started: float, now: float) -> float:
        """Expected seconds left for a job running since `started`."""
        elapsed = max(0.0, now - started)
        limit_left = max(0.0, limit_s - elapsed) if limit_s > 0 else math_inf()
        guess_left = self.predict(user, limit_s) - elapsed
        if guess_left > 0:
            return min(guess_left, limit_left)
        # It outlived its prediction: it is one of the long ones. Expect it to run as long
        # again as it has so far (bounded by the limit), rather than "about to end".
        return min(max(elapsed, MIN_RUNTIME_S), limit_left)


def math_inf() -> float:
    return float("inf")
