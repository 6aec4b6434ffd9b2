"""A partition's free capacity over time, and the earliest slot where a job fits.

The profile is a step function: from times[i] until times[i+1] the partition has
free_cpus[i] CPUs and free_gpus[i] GPUs free (the last step lasts forever). It starts from
what is free now, gives back what running jobs hold when they are expected to end, and then
reserves, in queue order, the pending work ahead (conservative backfill, as Slurm's backfill
scheduler plans it). The earliest slot for a new job is the first window long enough with
enough of both.

Why pooled CPUs and GPUs rather than per node: a per-node timeline costs nodes x steps per
query and placement asks thousands of queries per cycle; node fragmentation is second
order next to the error in predicted runtimes, and a job's per-node shape is checked
against the node sizes before a site is eligible at all.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

INF = math.inf


@dataclass(frozen=True)
class Need:
    """What one job takes from a partition's pool while it runs."""

    cpus: int
    gpus: int
    seconds: float


class Profile:
    __slots__ = (
        "_rooms",
        "_rooms_version",
        "free_cpus",
        "free_gpus",
        "times",
        "total_cpus",
        "total_gpus",
        "version",
    )

    def __init__(
        self, now: float, free_cpus: int, free_gpus: int, total_cpus: int, total_gpus: int
    ):
        self.times: list[float] = [now]
        self.free_cpus: list[int] = [free_cpus]
        self.free_gpus: list[int] = [free_gpus]
        self.total_cpus = total_cpus
        self.total_gpus = total_gpus
        self.version = 0  # bumped on every change, so cached answers know they are stale
        # room_now per (cpus, gpus) at _rooms_version: every shape class of one size asks.
        self._rooms: dict[tuple[int, int], float] = {}
        self._rooms_version = 0

    @classmethod
    def from_releases(
        cls,
        now: float,
        free_cpus: int,
        free_gpus: int,
        total_cpus: int,
        total_gpus: int,
        releases: list[tuple[float, int, int]],
    ) -> Profile:
        """The profile after release(at, cpus, gpus) for each entry, built in one sorted pass
        (the same steps as releasing one by one, without the quadratic list rebuilding)."""
        prof = cls(now, free_cpus, free_gpus, total_cpus, total_gpus)
        if not releases:
            return prof
        times, fc, fg = prof.times, prof.free_cpus, prof.free_gpus
        c, g = free_cpus, free_gpus
        for at, dc, dg in sorted(releases):
            if at <= now:
                c += dc
                g += dg
                fc[0], fg[0] = c, g
                continue
            c += dc
            g += dg
            if times[-1] == at:
                fc[-1], fg[-1] = c, g
            else:
                times.append(at)
                fc.append(c)
                fg.append(g)
        prof.version = len(releases)
        return prof

    def _split(self, t: float) -> int:
        """Make t a step boundary; return the index of the step starting at t."""
        i = bisect.bisect_right(self.times, t) - 1
        if i < 0:
            # before the profile starts: the past is not plannable, clamp to now
            return 0
        if self.times[i] == t:
            return i
        self.times.insert(i + 1, t)
        self.free_cpus.insert(i + 1, self.free_cpus[i])
        self.free_gpus.insert(i + 1, self.free_gpus[i])
        return i + 1

    def release(self, at: float, cpus: int, gpus: int) -> None:
        """A running job ends at `at`, giving back what it holds from then on."""
        i = self._split(max(at, self.times[0]))
        self.free_cpus[i:] = [c + cpus for c in self.free_cpus[i:]]
        if gpus:
            self.free_gpus[i:] = [g + gpus for g in self.free_gpus[i:]]
        self.version += 1

    def fits_ever(self, need: Need) -> bool:
        return need.cpus <= self.total_cpus and need.gpus <= self.total_gpus

    def earliest(self, need: Need, not_before: float = 0.0) -> float:
        """Earliest start >= not_before at which `need` fits for its whole duration (INF: never)."""
        if not self.fits_ever(need):
            return INF
        times, fc, fg = self.times, self.free_cpus, self.free_gpus
        cpus, gpus, secs = need.cpus, need.gpus, need.seconds
        n = len(times)
        i = max(0, bisect.bisect_right(times, not_before) - 1)
        start = max(times[i], not_before)
        while True:
            if fc[i] < cpus or fg[i] < gpus:
                # No window can hold a step that is short by itself: skip such steps one by
                # one (cheap, and on a busy partition most steps are short).
                i += 1
                while i < n and (fc[i] < cpus or fg[i] < gpus):
                    i += 1
                if i >= n:
                    return INF  # the last step is short of capacity forever (should not happen)
                start = times[i]
            # the steps the window [start, start + secs) overlaps are i .. j-1
            j = bisect.bisect_left(times, start + secs, i + 1) if secs != INF else n
            # fast accept (C-speed min over the window): the common case of a job that fits
            if min(fc[i:j]) >= cpus and (not gpus or min(fg[i:j]) >= gpus):
                return start
            bad = -1
            for k in range(j - 1, i, -1):  # from the end: jump past the last shortfall
                if fc[k] < cpus or fg[k] < gpus:
                    bad = k
                    break
            if bad < 0:
                return start
            i = bad + 1
            if i >= n:
                return INF
            start = times[i]

    def fits_now(self, need: Need) -> bool:
        """Does `need` fit from the profile's start (now) for its whole duration?"""
        if need.cpus > self.total_cpus or need.gpus > self.total_gpus:
            return False
        times = self.times
        j = (
            bisect.bisect_left(times, times[0] + need.seconds, 1)
            if need.seconds != INF
            else len(times)
        )
        if min(self.free_cpus[:j]) < need.cpus:
            return False
        return not need.gpus or min(self.free_gpus[:j]) >= need.gpus

    def room_now(self, need: Need) -> float:
        """How long from the profile's start (now) need.cpus and need.gpus stay free: a job of
        that size fits now iff its duration is at most this (0: it does not fit now)."""
        if need.cpus > self.total_cpus or need.gpus > self.total_gpus:
            return 0.0
        if self._rooms_version != self.version:
            self._rooms = {}
            self._rooms_version = self.version
        key = (need.cpus, need.gpus)
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = self._room(need.cpus, need.gpus)
        return room

    def _room(self, cpus: int, gpus: int) -> float:
        fc, fg, times = self.free_cpus, self.free_gpus, self.times
        n = len(times)
        # Skip whole chunks that have room at C speed (min over a slice), then scan the first
        # chunk that does not.
        lo = 0
        while lo < n:
            hi = lo + 32
            if min(fc[lo:hi]) >= cpus and min(fg[lo:hi]) >= gpus:
                lo = hi
                continue
            for k in range(lo, min(hi, n)):
                if fc[k] < cpus or fg[k] < gpus:
                    return times[k] - times[0]
        return INF

    def reserve(self, start: float, need: Need) -> None:
        """Take `need` from start for its duration (a job placed or planned here)."""
        if start == INF:
            return
        i = self._split(start)
        k = self._split(start + need.seconds) if need.seconds != INF else len(self.times)
        c, g = need.cpus, need.gpus
        self.free_cpus[i:k] = [x - c for x in self.free_cpus[i:k]]
        if g:
            self.free_gpus[i:k] = [x - g for x in self.free_gpus[i:k]]
        self.version += 1

    def free_at(self, t: float) -> tuple[int, int]:
        i = max(0, bisect.bisect_right(self.times, t) - 1)
        return self.free_cpus[i], self.free_gpus[i]
