"""Job arrays in Slurm's syntax: `--array` index lists, task ids as users write them, and
the folded form squeue prints (`17_[3-999%50]`).

An array is one id with N tasks; each task is a job of its own in the global queue, placed
and followed on its own, and known to users as `<array id>_<task>`. Pure functions: msub and
the daemon share them, so both read and print arrays alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Slurm's MaxArraySize is at most 4,000,001 (task ids 0..4,000,000); a site's own limit
# does not apply, as each task runs there as a plain job.
MAX_TASK_ID = 4_000_000
# Tasks of one array: each is a job in the global queue (and counts towards the user's limit).
MAX_TASKS = 100_000


class ArrayError(ValueError):
    """A malformed array or task id; the message is one line meant for the user."""


@dataclass(frozen=True)
class ArraySpec:
    """What `--array` asks for: the task ids (ascending, distinct), the % throttle, and the
    step Slurm reports as SLURM_ARRAY_TASK_STEP (the number after the first ':', else 1)."""

    tasks: tuple[int, ...]
    max_running: int = 0  # 0 = no limit
    step: int = 1

    @property
    def count(self) -> int:
        return len(self.tasks)

    def environment(self, array_id: int, task: int) -> dict[str, str]:
        """The variables sbatch's array jobs see (slurmctld's _create_job_array and the
        batch launch set them; here the agent does, as each task is a plain job)."""
        return {
            "SLURM_ARRAY_JOB_ID": str(array_id),
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_TASK_COUNT": str(self.count),
            "SLURM_ARRAY_TASK_MIN": str(self.tasks[0]),
            "SLURM_ARRAY_TASK_MAX": str(self.tasks[-1]),
            "SLURM_ARRAY_TASK_STEP": str(self.step),
        }


_ELEMENT = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")


def parse_indexes(text: str, what: str = "--array") -> tuple[tuple[int, ...], int]:
    """'0-15:4,20,30-32' -> (sorted distinct ids, the step of the first 'a-b:s' else 1)."""
    ids: set[int] = set()
    step_seen = 0
    if not text:
        raise ArrayError(f"bad {what} {text!r}: no task ids")
    for part in text.split(","):
        m = _ELEMENT.fullmatch(part.strip())
        if not m:
            raise ArrayError(f"bad {what} {text!r}: use e.g. 1-100, 0,6,16-32, 0-15:4 or 1-1000%50")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if m.group(3) is not None and not step_seen:
            step_seen = step
        if hi < lo:
            raise ArrayError(f"bad {what} {text!r}: {lo}-{hi} runs backwards")
        if step <= 0:
            raise ArrayError(f"bad {what} {text!r}: the step must be at least 1")
        if hi > MAX_TASK_ID:
            raise ArrayError(f"bad {what} {text!r}: task ids go up to {MAX_TASK_ID}")
        if (hi - lo) // step + 1 + len(ids) > MAX_TASKS:
            raise ArrayError(f"bad {what} {text!r}: more than {MAX_TASKS} tasks")
        ids.update(range(lo, hi + 1, step))
    return tuple(sorted(ids)), step_seen or 1


def parse_array(text: str) -> ArraySpec:
    """sbatch --array: '1-1000%50', '0,6,16-32', '0-15:4' (Slurm's syntax and meaning)."""
    s = text.strip()
    body, pct, limit = s.partition("%")
    max_running = 0
    if pct:
        if not limit.isdigit() or int(limit) <= 0:
            raise ArrayError(f"bad --array {text!r}: after % give how many tasks may run at once")
        max_running = int(limit)
    tasks, step = parse_indexes(body)
    return ArraySpec(tasks, max_running, step)


def fold(tasks: Iterable[int], max_running: int = 0) -> str:
    """Task ids as squeue folds them: [1, 2, 3, 5, 7, 9] -> '1-3,5-9:2' ('%N' with a limit)."""
    ids = sorted(set(tasks))
    parts: list[str] = []
    k = 0
    while k < len(ids):
        j = k
        if k + 1 < len(ids):
            step = ids[k + 1] - ids[k]
            while j + 1 < len(ids) and ids[j + 1] - ids[j] == step:
                j += 1
            # a run of two at a step other than 1 reads better as two ids
            if j - k < 2 and step != 1:
                j = k
        if j == k:
            parts.append(str(ids[k]))
        elif ids[k + 1] - ids[k] == 1:
            parts.append(f"{ids[k]}-{ids[j]}")
        else:
            parts.append(f"{ids[k]}-{ids[j]}:{ids[k + 1] - ids[k]}")
        k = j + 1
    return ",".join(parts) + (f"%{max_running}" if max_running else "")


def task_name(array_id: int, task: int) -> str:
    return f"{array_id}_{task}"


@dataclass(frozen=True)
class JobRef:
    """A job as a user names it: '17' (a job, or all of array 17), '17_5', '17_[1-100,200]'."""

    job_id: int
    tasks: tuple[int, ...] | None = None  # None: the job itself / every task of the array

    def __str__(self) -> str:
        if self.tasks is None:
            return str(self.job_id)
        if len(self.tasks) == 1:
            return task_name(self.job_id, self.tasks[0])
        return f"{self.job_id}_[{fold(self.tasks)}]"


_REF = re.compile(r"(\d+)(?:_(\d+|\[[0-9,:\-]+\]))?")
MAX_JOB_ID = 2**63 - 1


def parse_job_ref(text: str) -> JobRef:
    m = _REF.fullmatch(text.strip())
    if not m:
        raise ArrayError(f"bad job id {text[:40]!r}: use e.g. 17, 17_5 or 17_[1-100]")
    job_id = int(m.group(1))
    if not 0 < job_id <= MAX_JOB_ID:
        raise ArrayError(f"bad job id {text[:40]!r}")
    tail = m.group(2)
    if tail is None:
        return JobRef(job_id)
    if tail.startswith("["):
        tasks, _ = parse_indexes(tail[1:-1], "task range")
        return JobRef(job_id, tasks)
    task = int(tail)
    if task > MAX_TASK_ID:
        raise ArrayError(f"bad job id {text[:40]!r}: task ids go up to {MAX_TASK_ID}")
    return JobRef(job_id, (task,))
