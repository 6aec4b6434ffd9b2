"""msub's own logic, without a daemon: reading its command line the way sbatch reads one,
and showing jobs the way squeue and sacct do."""

from __future__ import annotations

import time

import pytest

from metasched.cli import msub
from metasched.cli.errors import UsageError
from metasched.daemon.user_api import job_pb
from metasched.states import JobState
from metasched.store import JobRow
from metasched.v1 import metasched_pb2 as pb

S = JobState


def test_the_command_line_is_sbatchs(tmp_path: pytest.TempPathFactory) -> None:
    script = tmp_path / "job.sh"  # type: ignore[operator]
    script.write_text("#!/bin/sh\n#SBATCH -t 10\n#SBATCH -J fromscript\ntrue\n")
    env = {"HOME": "/h", "PATH": "/bin", "SBATCH_TIMELIMIT": "20", "SLURM_JOB_ID": "9"}
    sub = msub.parse_submission(
        ["--precision", "fp64", "--site", "a,b", "-N", "2", str(script), "x", "-y"], env
    )
    s = sub.spec
    assert (s.time_limit_minutes, s.name, s.nodes, s.precision) == (20, "fromscript", 2, "fp64")
    assert list(s.sites) == ["a", "b"] and list(s.script_args) == ["x", "-y"]
    # sbatch's default export: the submitter's environment, minus Slurm's own variables
    assert s.export_mode == "all" and dict(s.environment) == {"HOME": "/h", "PATH": "/bin"}
    assert len(s.submit_key) == 32  # a fresh idempotency key per submission
    wrap = msub.parse_submission(["--wrap", "echo hi", "--parsable"], env)
    assert wrap.spec.script == msub.WRAP_SCRIPT.format("echo hi") and wrap.spec.name == "wrap"
    assert wrap.msub.parsable
    with pytest.raises(UsageError, match="not permitted with --wrap"):
        msub.parse_submission(["--wrap", "true", str(script)], env)
    with pytest.raises(UsageError, match="ambiguous"):
        msub.parse_submission(["--pre=fp64", str(script)], env)  # --precision or --prefer


@pytest.mark.parametrize(
    ("state", "code", "shown"),
    [
        (S.COMPLETED, 0, "0"),
        (S.FAILED, 181, "181"),
        (S.FAILED, 137, "137 (SIGKILL)"),
        (S.TIMEOUT, 0, "-"),  # a time limit is not an exit code 0
        (S.CANCELLED, 0, "-"),
        (S.RUNNING, 0, "-"),
    ],
)
def test_exit_column(state: JobState, code: int, shown: str) -> None:
    assert msub.exit_text(pb.Job(state=state.to_pb(), exit_code=code)) == shown


def test_users_never_see_a_start_before_the_submission_and_always_a_reason() -> None:
    skewed = JobRow(
        1,
        "u",
        pb.JobSpec(),
        S.FAILED,
        submitted_at=1000.0,
        updated_at=1000.0,
        started_at=990.0,
        ended_at=995.0,
        exit_code=181,
    )
    shown = job_pb(skewed)
    assert shown.started_at == 1000.0 and shown.ended_at == 1000.0
    assert shown.reason == "the script exited with code 181"
    timeout = job_pb(JobRow(2, "u", pb.JobSpec(), S.TIMEOUT, 1.0, 1.0))
    assert timeout.reason == "reached its time limit"


def test_squeue_and_sacct_words() -> None:
    assert msub.parse_states("PD,R") == [S.QUEUED, S.FORWARDING, S.PENDING, S.RUNNING]
    assert msub.parse_states("completed,ca") == [S.COMPLETED, S.CANCELLED]
    with pytest.raises(UsageError, match="unknown state"):
        msub.parse_states("done")
    now = time.time()
    assert msub.parse_since("2h", now) == now - 7200
    assert msub.parse_since("now-30minutes", now) == now - 1800
    assert msub.parse_since("2025-01-01T10:00", now) == time.mktime(
        (2025, 1, 1, 10, 0, 0, 0, 0, -1)
    )
    with pytest.raises(UsageError, match="bad time"):
        msub.parse_since("yesterday-ish", now)
    assert msub.clock(3 * 86400 + 3661) == "3-01:01:01" and msub.clock(59) == "00:00:59"
