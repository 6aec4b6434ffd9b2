"""`--dependency` and `--begin` in Slurm's syntax and meaning (sbatch(1), Slurm 22.05-25.11).

    after:ID[+MIN][:ID[+MIN]...]  once each has started (or was cancelled), plus MIN minutes
    afterany:ID[:ID...]           once each has ended, in any state (a bare ID list means this)
    afterok:ID[:ID...]            once each has completed with exit code 0
    afternotok:ID[:ID...]         once each has ended in a failed state
    aftercorr:ID[:ID...]          array task N after task N of each ID completed OK
                                  (afterok when the dependent or ID is not an array)
    singleton                     once no other job of the user with its name is active
Joined by ',' (all must hold) or by '?' (any one is enough), never both. An ID is a job, an
array (all its tasks) or one task ('17_3'). afterburstbuffer has no meaning across sites
and is refused. Pure functions: msub and the daemon share them.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from metasched.arrays import ArrayError, JobRef, parse_job_ref

KINDS = ("after", "afterany", "afterok", "afternotok", "aftercorr", "singleton")
MAX_REFS = 1000  # job ids in one --dependency


class DependencyError(ValueError):
    """A malformed --dependency / --begin; the message is one line meant for the user."""


@dataclass(frozen=True)
class Condition:
    kind: str  # one of KINDS
    job: JobRef | None = None  # None for singleton
    after_minutes: int = 0  # after:ID+MIN

    def __str__(self) -> str:
        if self.job is None:
            return self.kind
        return f"{self.kind}:{self.job}" + (f"+{self.after_minutes}" if self.after_minutes else "")


@dataclass(frozen=True)
class Dependency:
    conditions: tuple[Condition, ...]
    any_of: bool = False  # '?': one satisfied condition is enough

    def __str__(self) -> str:
        return ("?" if self.any_of else ",").join(str(c) for c in self.conditions)


def parse_dependency(text: str) -> Dependency:
    """sbatch --dependency -> Dependency; raises DependencyError with the reason."""
    s = text.strip()
    if not s:
        raise DependencyError("empty --dependency")
    if "," in s and "?" in s:
        raise DependencyError(
            f"bad --dependency {text[:60]!r}: use ',' (all) or '?' (any), not both"
        )
    any_of = "?" in s
    conditions: list[Condition] = []
    for item in s.split("?" if any_of else ","):
        kind, colon, ids = item.strip().partition(":")
        if not colon and kind == "singleton":
            conditions.append(Condition("singleton"))
            continue
        if kind and kind[0].isdigit():  # a bare id list: afterany
            kind, ids = "afterany", item.strip()
        if kind == "afterburstbuffer":
            raise DependencyError(
                "afterburstbuffer: burst buffers are a site's own; not across sites"
            )
        if kind not in KINDS or kind == "singleton" or not ids:
            raise DependencyError(
                f"bad --dependency {item[:60]!r}: use after, afterany, afterok, afternotok, "
                "aftercorr (with :ID[:ID...]) or singleton"
            )
        for one in ids.split(":"):
            ref_text, plus, minutes = one.partition("+")
            if plus and (kind != "after" or not minutes.isdigit()):
                raise DependencyError(
                    f"bad --dependency {item[:60]!r}: +MINUTES belongs to after: only"
                )
            try:
                ref = parse_job_ref(ref_text)
            except ArrayError as e:
                raise DependencyError(f"bad --dependency {item[:60]!r}: {e}") from None
            if ref.tasks is not None and len(ref.tasks) != 1:
                raise DependencyError(
                    f"bad --dependency {item[:60]!r}: name one task (17_3) or the whole array (17)"
                )
            conditions.append(Condition(kind, ref, int(minutes) if plus else 0))
        if len(conditions) > MAX_REFS:
            raise DependencyError(f"--dependency names more than {MAX_REFS} jobs")
    return Dependency(tuple(conditions), any_of)


# ---------------------------------------------------------------- --begin

_NAMED_TIMES = {"midnight": (0, 0), "noon": (12, 0), "elevenses": (11, 0), "fika": (15, 0)}
_NAMED_TIMES["teatime"] = (16, 0)
_UNITS = {"": 1, "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_UNITS |= {"h": 3600, "hour": 3600, "d": 86400, "day": 86400, "w": 604800, "week": 604800}
_NOW = re.compile(r"now(?:\s*\+\s*(\d+)\s*([a-z]*?)s?)?")
_CLOCK = re.compile(r"(\d{1,2})(?::(\d{2})(?::(\d{2}))?)?\s*(am|pm)?")


def parse_begin(text: str, now: float | None = None) -> float:
    """sbatch --begin -> seconds since the epoch (local time, as sbatch reads it):
    now[+N[units]], HH:MM[:SS][AM|PM] (tomorrow if already past), midnight, noon, elevenses,
    fika, teatime, today, tomorrow, YYYY-MM-DD[THH:MM[:SS]], MMDDYY, MM/DD[/YY][-HH:MM[:SS]]."""
    now = time.time() if now is None else now
    s = text.strip().lower()
    m = _NOW.fullmatch(s)
    if m:
        count, unit = m.group(1), m.group(2)
        if count is None:
            return now
        if unit not in _UNITS:
            raise DependencyError(
                f"bad --begin {text!r}: units are seconds, minutes, hours, days, weeks"
            )
        return now + int(count) * _UNITS[unit]
    day = time.localtime(now)
    if s in ("today", "tomorrow"):
        t = _local(day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0)
        return t + (86400 if s == "tomorrow" else 0)
    clock_match = _CLOCK.fullmatch(s)
    if s in _NAMED_TIMES or (
        clock_match and (clock_match[2] or clock_match[4])
    ):  # a time of day: today, or tomorrow if past
        h, mi, sec = _clock(s, text)
        t = _local(day.tm_year, day.tm_mon, day.tm_mday, h, mi, sec)
        return t if t > now else t + 86400
    if "t" in s:  # YYYY-MM-DDTHH:MM[:SS]
        date_part, _, clock_part = s.partition("t")
    elif "/" in s and "-" in s:  # MM/DD/YY-HH:MM[:SS]
        date_part, _, clock_part = s.partition("-")
    else:
        date_part, clock_part = s, ""
    date = _date(date_part, text, day)
    clock = _clock(clock_part, text) if clock_part else (0, 0, 0)
    return _local(*date, *clock)


def _clock(s: str, text: str) -> tuple[int, int, int]:
    if s in _NAMED_TIMES:
        return (*_NAMED_TIMES[s], 0)
    m = _CLOCK.fullmatch(s)
    if not m or (m.group(2) is None and m.group(4) is None):  # a bare hour needs AM/PM
        raise DependencyError(f"bad --begin {text!r}: a time of day is HH:MM[:SS]")
    h, mi, sec = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if m.group(4):
        if not 1 <= h <= 12:
            raise DependencyError(f"bad --begin {text!r}: hour {h} with AM/PM")
        h = h % 12 + (12 if m.group(4) == "pm" else 0)
    if h > 23 or mi > 59 or sec > 59:
        raise DependencyError(f"bad --begin {text!r}: no such time of day")
    return h, mi, sec


def _date(s: str, text: str, today: time.struct_time) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", s)
    if m:
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    elif re.fullmatch(r"\d{6}", s):
        mo, d, y = int(s[:2]), int(s[2:4]), 2000 + int(s[4:])
    else:
        m = re.fullmatch(r"(\d{1,2})[/.](\d{1,2})(?:[/.](\d{2}|\d{4}))?", s)
        if not m:
            raise DependencyError(
                f"bad --begin {text!r}: use e.g. now+1hour, 16:00, 2030-01-20T12:34:00 or tomorrow"
            )
        mo, d = int(m.group(1)), int(m.group(2))
        y = today.tm_year if m.group(3) is None else int(m.group(3))
        y += 2000 if y < 100 else 0
        if m.group(3) is None and (mo, d) < (today.tm_mon, today.tm_mday):
            y += 1  # MM/DD already past this year: next year's
    if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1]):
        raise DependencyError(f"bad --begin {text!r}: no such date")
    return y, mo, d


def _local(y: int, mo: int, d: int, h: int, mi: int, s: int) -> float:
    return time.mktime((y, mo, d, h, mi, s, 0, 0, -1))
