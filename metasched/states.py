"""The life of a global job: its states, which moves are allowed, and Slurm's names for them.

One table says which transitions are legal, so the store can refuse an impossible move
instead of silently corrupting a job's history (psij-python's JobState, Parsl's
TERMINAL_STATES). Slurm's state names map onto ours through two plain tables, one for squeue
and one for accounting (sacct / jobcomp), because the two spell some states differently.
"""

from __future__ import annotations

import enum
import signal

from metasched.v1 import metasched_pb2 as pb


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    FORWARDING = "FORWARDING"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    RECALLING = "RECALLING"
    WAITING = "WAITING"  # in the global queue, not placeable yet (dependency, begin, hold)
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    LOST = "LOST"  # ended, outcome unknown: the site has neither the job nor a record of it

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def at_site(self) -> bool:
        """The job may exist in a site's Slurm queue (so it must never be placed again)."""
        return self in AT_SITE_STATES

    def to_pb(self) -> pb.JobState.ValueType:
        return pb.JobState.Value("JOB_STATE_" + self.value)

    @classmethod
    def from_pb(cls, value: int) -> JobState:
        return cls(pb.JobState.Name(value).removeprefix("JOB_STATE_"))  # type: ignore[arg-type]


FINAL_STATES = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.LOST,
    }
)
AT_SITE_STATES = frozenset(
    {
        JobState.FORWARDING,
        JobState.PENDING,
        JobState.RUNNING,
        JobState.CANCELLING,
        JobState.RECALLING,
    }
)

_S = JobState
# from-state -> the states it may move to. A final state moves nowhere.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # WAITING: held by the user (msub hold) while still in the global queue
    _S.QUEUED: frozenset({_S.FORWARDING, _S.CANCELLED, _S.FAILED, _S.WAITING}),
    # QUEUED: its dependencies, begin time and hold all allow it now
    _S.WAITING: frozenset({_S.QUEUED, _S.CANCELLED, _S.FAILED}),
    _S.FORWARDING: frozenset(
        # QUEUED: the site refused it or was lost before the Slurm id was confirmed;
        # RECALLING: an admin's requeue (the agent cancels it only if it is still pending)
        {_S.QUEUED, _S.PENDING, _S.RUNNING, _S.CANCELLING, _S.RECALLING, _S.FAILED, *FINAL_STATES}
    ),
    _S.PENDING: frozenset({_S.RUNNING, _S.CANCELLING, _S.RECALLING, _S.QUEUED, *FINAL_STATES}),
    _S.RUNNING: frozenset({_S.PENDING, _S.CANCELLING, _S.QUEUED, *FINAL_STATES}),
    _S.CANCELLING: frozenset({_S.CANCELLED, *FINAL_STATES}),
    _S.RECALLING: frozenset({_S.QUEUED, _S.RUNNING, _S.CANCELLING, *FINAL_STATES}),
}
for _final in FINAL_STATES:
    TRANSITIONS[_final] = frozenset()
# What metasched does not know it does not state as a fact: a LOST job is settled by a record
# that turns up later (a late accounting record, the job seen again), and by nothing else.
TRANSITIONS[_S.LOST] = FINAL_STATES - {_S.LOST}


def can_move(src: JobState, dst: JobState) -> bool:
    return dst == src or dst in TRANSITIONS[src]


# Slurm job state (squeue/scontrol; the base state, without flags) -> ours.
SQUEUE_STATES: dict[str, JobState] = {
    "PENDING": _S.PENDING,
    "CONFIGURING": _S.RUNNING,
    "RUNNING": _S.RUNNING,
    "COMPLETING": _S.RUNNING,
    "SUSPENDED": _S.RUNNING,
    "STOPPED": _S.RUNNING,
    "RESIZING": _S.RUNNING,
    "SIGNALING": _S.RUNNING,
    "STAGE_OUT": _S.RUNNING,
    "REQUEUED": _S.PENDING,
    "REQUEUE_FED": _S.PENDING,
    "REQUEUE_HOLD": _S.PENDING,
    "RESV_DEL_HOLD": _S.PENDING,
    "SPECIAL_EXIT": _S.PENDING,
    "COMPLETED": _S.COMPLETED,
    "CANCELLED": _S.CANCELLED,
    "FAILED": _S.FAILED,
    "BOOT_FAIL": _S.NODE_FAIL,
    "NODE_FAIL": _S.NODE_FAIL,
    "DEADLINE": _S.TIMEOUT,
    "TIMEOUT": _S.TIMEOUT,
    "OUT_OF_MEMORY": _S.OUT_OF_MEMORY,
    "PREEMPTED": _S.NODE_FAIL,
    "REVOKED": _S.CANCELLED,
}

# sacct / jobcomp spellings that differ ("CANCELLED by 0", "OUT_OF_ME+" truncated in text).
ACCOUNTING_STATES: dict[str, JobState] = {
    **SQUEUE_STATES,
    "CA": _S.CANCELLED,
    "CD": _S.COMPLETED,
    "F": _S.FAILED,
    "TO": _S.TIMEOUT,
    "NF": _S.NODE_FAIL,
    "OOM": _S.OUT_OF_MEMORY,
    "BF": _S.NODE_FAIL,
    "DL": _S.TIMEOUT,
    "PR": _S.NODE_FAIL,
}

# Final states caused by the infrastructure, not by the job: retried elsewhere (with a limit).
INFRASTRUCTURE_FAILURES = frozenset({_S.NODE_FAIL})


# Slurm node state words (sinfo's, possibly combined: "idle+drain", "down*") that mean the
# node takes no new work.
_UNUSABLE_NODE_WORDS = (
    "*",  # sinfo's mark of a node that does not respond ("idle*"); JSON says NOT_RESPONDING
    "not_responding",
    "no_respond",
    "down",
    "drain",
    "fail",
    "inval",
    "unknown",
    "future",
    "power",
    "maint",
    "reboot",
)


def node_usable(state: str) -> bool:
    """Can a node in this Slurm state take new work? (The agent and the daemon both ask.)"""
    s = state.lower()
    return not any(word in s for word in _UNUSABLE_NODE_WORDS)


def from_slurm(state: str) -> JobState | None:
    """Our state for a Slurm state string such as 'RUNNING', 'CANCELLED by 0', 'OUT_OF_ME+'."""
    word = state.strip().split(" ", 1)[0].upper().rstrip("+")
    if word in ACCOUNTING_STATES:
        return ACCOUNTING_STATES[word]
    for name, ours in SQUEUE_STATES.items():  # a truncated sacct column, e.g. OUT_OF_ME
        if word and name.startswith(word) and len(word) >= 6:
            return ours
    return None


def signal_name(exit_code: int) -> str:
    """The signal an exit code 128+N says killed the job ('' if none). Slurm reports a
    signal apart from the exit status; the agent folds it into 128+N, as a shell does, so
    129-159 (the standard signals) is read as a signal and 160-255 as the script's own."""
    if 128 < exit_code < 160:
        try:
            return signal.Signals(exit_code - 128).name
        except ValueError:
            return f"signal {exit_code - 128}"
    return ""


def final_reason(state: JobState, exit_code: int) -> str:
    """Why a job ended, in words (msub shows it as the reason): the script's exit code, the
    signal that killed it, or the limit it hit."""
    if state == JobState.FAILED:
        name = signal_name(exit_code)
        if name:
            return f"killed by {name} (exit code {exit_code})"
        return f"the script exited with code {exit_code}" if exit_code else "failed"
    if state == JobState.TIMEOUT:
        return "reached its time limit"
    if state == JobState.OUT_OF_MEMORY:
        return "ran out of memory"
    if state == JobState.NODE_FAIL:
        return "a node it ran on failed"
    return ""
