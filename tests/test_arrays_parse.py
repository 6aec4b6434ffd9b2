"""sbatch's syntax for arrays, dependencies, --begin and output names, read as sbatch reads
it (sbatch(1), Slurm 22.05-25.11), and refused with a one-line reason when sbatch would."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from metasched import jobspec, output_names
from metasched.arrays import fold, parse_job_ref
from metasched.cli import msub
from metasched.cli.errors import UsageError
from metasched.output_names import Ids
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb


@pytest.mark.parametrize(
    ("text", "tasks", "limit", "step"),
    [
        ("0-15", list(range(16)), 0, 1),
        ("0,6,16-32", [0, 6, *range(16, 33)], 0, 1),
        ("0-15:4", [0, 4, 8, 12], 0, 4),
        ("0-15%4", list(range(16)), 4, 1),
        ("1-1000%50", list(range(1, 1001)), 50, 1),
        ("3,1,2,2", [1, 2, 3], 0, 1),
        ("1-5:2%2", [1, 3, 5], 2, 2),
    ],
)
def test_array_indexes_as_sbatch_reads_them(
    text: str, tasks: list[int], limit: int, step: int
) -> None:
    a = jobspec.parse_array(text)
    assert (list(a.tasks), a.max_running, a.step) == (tasks, limit, step)


@pytest.mark.parametrize(
    "text", ["", "x", "5-1", "1-10:0", "1-10%0", "1-10%", "-1", "1-4000001", "0-100000"]
)
def test_bad_arrays_are_refused(text: str) -> None:
    with pytest.raises(jobspec.SpecError):
        jobspec.parse_array(text)


def test_array_environment_is_what_slurm_sets() -> None:
    env = jobspec.parse_array("2-40:2%5").environment(17, 8)
    assert env == {
        "SLURM_ARRAY_JOB_ID": "17",
        "SLURM_ARRAY_TASK_ID": "8",
        "SLURM_ARRAY_TASK_COUNT": "20",
        "SLURM_ARRAY_TASK_MIN": "2",
        "SLURM_ARRAY_TASK_MAX": "40",
        "SLURM_ARRAY_TASK_STEP": "2",
    }


def test_folding_and_job_names() -> None:
    assert fold([1, 2, 3, 5, 7, 9]) == "1-3,5-9:2"
    assert fold(range(3, 1000), 50) == "3-999%50"
    assert fold([4, 1]) == "1,4"
    assert str(parse_job_ref("17_[1-100,200]")) == "17_[1-100,200]"
    assert parse_job_ref("17_5").tasks == (5,)
    assert parse_job_ref("17").tasks is None


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("afterok:17:18_3,singleton", "afterok:17,afterok:18_3,singleton"),
        ("17:18", "afterany:17,afterany:18"),  # a bare list: afterany, sbatch's default
        ("afterany:1?after:2+10", "afterany:1?after:2+10"),
        ("aftercorr:5", "aftercorr:5"),
        ("afternotok:3", "afternotok:3"),
    ],
)
def test_dependencies_as_sbatch_reads_them(text: str, normal: str) -> None:
    assert str(jobspec.parse_dependency(text)) == normal
    assert jobspec.parse_dependency(normal) == jobspec.parse_dependency(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("afterok:1,after:2?afterany:3", "not both"),
        ("afterok", "use after"),
        ("afterburstbuffer:1", "burst buffers"),
        ("afterok:1+5", r"\+MINUTES belongs to after"),
        ("afterok:17_[1-3]", "name one task"),
        ("expand:1", "use after"),
        ("afterok:x", "bad job id"),
    ],
)
def test_bad_dependencies_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(jobspec.SpecError, match=why):
        jobspec.parse_dependency(text)


def test_begin_times_in_slurms_formats() -> None:
    now = time.mktime((2030, 6, 15, 12, 0, 0, 0, 0, -1))

    def at(text: str) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(jobspec.parse_begin(text, now)))

    assert at("now") == "2030-06-15 12:00:00"
    assert at("now+1hour") == "2030-06-15 13:00:00"
    assert at("now+60") == "2030-06-15 12:01:00"  # seconds by default
    assert at("now+2days") == "2030-06-17 12:00:00"
    assert at("16:00") == "2030-06-15 16:00:00"
    assert at("11:00") == "2030-06-16 11:00:00"  # already past today: tomorrow
    assert at("4pm") == "2030-06-15 16:00:00"
    assert at("teatime") == "2030-06-15 16:00:00"
    assert at("midnight") == "2030-06-16 00:00:00"
    assert at("tomorrow") == "2030-06-16 00:00:00"
    assert at("2030-07-01T08:30") == "2030-07-01 08:30:00"
    assert at("2030-07-01") == "2030-07-01 00:00:00"
    assert at("070130") == "2030-07-01 00:00:00"
    assert at("07/01/30") == "2030-07-01 00:00:00"
    assert at("05/01") == "2031-05-01 00:00:00"  # MM/DD already past this year
    for bad in ("yesterday", "25:00", "13pm", "2030-02-30", "now+3fortnights"):
        with pytest.raises(jobspec.SpecError):
            jobspec.parse_begin(bad, now)


def test_output_names_carry_the_federations_ids() -> None:
    job = Ids(job_id=42, name="train", user="alice")
    task = Ids(job_id=45, name="sweep", user="alice", array_id=42, array_task=3)
    assert output_names.resolve("", job, "/w") == "/w/slurm-42.out"
    assert output_names.resolve("", task, "/w") == "/w/slurm-42_3.out"
    assert output_names.resolve("/o/%x-%j.%u.log", job) == "/o/train-42.alice.log"
    assert output_names.resolve("r-%A-%a-%4a.out", task) == "r-42-3-0003.out"
    assert output_names.resolve("n-%N-%%.out", job) == "n-%N-%.out"  # %N: the node's
    assert output_names.resolve("a\\%j.out", job) == "a%j.out"  # a backslash: taken as is
    # what sbatch is given: ours resolved, the node's left to Slurm, a literal % escaped
    assert output_names.for_slurm("", task) == "slurm-42_3.out"
    assert output_names.for_slurm("%x-%N-%%-%j", Ids(7, "a%b", "u")) == "a%%b-%N-%%-7"
    assert output_names.for_slurm("a\\%j", job) == "a\\%j"


def test_validate_checks_the_new_fields() -> None:
    base = dict(script="#!/bin/sh\ntrue\n")
    spec = jobspec.validate(jobspec.pb.JobSpec(dependency="17:18", **base))
    assert spec.dependency == "afterany:17,afterany:18"
    for bad in (
        jobspec.pb.JobSpec(array="1-0", **base),
        jobspec.pb.JobSpec(dependency="after", **base),
        jobspec.pb.JobSpec(begin_time=float("nan"), **base),
        jobspec.pb.JobSpec(begin_time=-1, **base),
    ):
        with pytest.raises(jobspec.SpecError):
            jobspec.validate(bad)


def test_msub_takes_them_from_sbatch_lines_and_the_command_line(tmp_path: Path) -> None:
    script = tmp_path / "sweep.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --array=1-10%2\n#SBATCH -d afterok:5\n#SBATCH -H\necho $X\n"
    )
    sub = msub.parse_submission(["--begin", "now+1hour", str(script)], environ={})
    spec = sub.spec
    assert (spec.array, spec.dependency, spec.hold) == ("1-10%2", "afterok:5", True)
    assert time.time() + 3500 < spec.begin_time < time.time() + 3700
    assert not spec.keep_invalid_dependency and not sub.warnings
    spec = msub.parse_submission(
        ["-a", "3", "--kill-on-invalid-dep=no", str(script)], environ={}
    ).spec
    assert spec.array == "3" and spec.keep_invalid_dependency  # the command line wins
    with pytest.raises(UsageError, match="bad --array"):
        msub.parse_submission(["--array", "9-1", str(script)], environ={})


def test_msub_status_folds_arrays_as_squeue() -> None:
    def job(i: int, task: int, state: JobState, array: str = "1-6%2") -> pb.Job:
        return pb.Job(
            id=i, array_id=10, array_task=task, state=state.to_pb(), spec=pb.JobSpec(array=array)
        )

    jobs = [
        job(10, 1, JobState.RUNNING),
        job(11, 2, JobState.PENDING),
        job(12, 3, JobState.QUEUED),
        job(13, 4, JobState.QUEUED),
        job(14, 6, JobState.QUEUED),
        pb.Job(id=20, state=JobState.QUEUED.to_pb()),
    ]
    assert [name for name, _ in msub.fold_arrays(jobs)] == ["10_1", "10_2", "10_[3-4,6%2]", "20"]
