"""Request checks shared by msub and the daemon: what a user types and what they are told."""

from __future__ import annotations

import pytest

from metasched import jobspec
from metasched.jobspec import SpecError
from metasched.v1 import metasched_pb2 as pb

SCRIPT = "#!/bin/bash\necho hi\n"


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("30", 30),
        ("1:30", 2),  # minutes:seconds, rounded up
        ("2:00:00", 120),
        ("1-0", 1440),
        ("1-2:30", 1590),
        ("0-0:0:1", 1),
    ],
)
def test_slurm_time_formats(text: str, minutes: int) -> None:
    assert jobspec.parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "-5", "0", "0:00:00", "UNLIMITED", "400-0"])
def test_bad_time_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(SpecError, match="time limit"):
        jobspec.parse_time(text)


def test_memory_and_gres() -> None:
    assert jobspec.parse_mem("4G") == 4096
    assert jobspec.parse_mem("500") == 500
    assert jobspec.parse_gres("gpu:a100:2") == ("a100", 2)
    assert jobspec.parse_gres("gpu:4") == ("", 4)
    assert jobspec.parse_gres("gpu") == ("", 1)
    for bad in ("gpu:a100:0", "gpu:a100:x", "fpga:1"):
        with pytest.raises(SpecError):
            jobspec.parse_gres(bad)
    with pytest.raises(SpecError):
        jobspec.parse_mem("-1G")


def test_validate_fills_defaults_and_normalises() -> None:
    spec = jobspec.validate(
        pb.JobSpec(script=SCRIPT, precision="FP64", gpu_type="A100", gpus_per_node=1)
    )
    assert spec.precision == "fp64"
    assert spec.gpu_type == "a100"
    assert spec.time_limit_minutes == jobspec.DEFAULT_TIME_MINUTES
    shape = jobspec.shape_of(spec)
    assert (shape.nodes, shape.tasks, shape.cpus_per_task) == (1, 1, 1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (pb.JobSpec(script=""), "empty"),
        (pb.JobSpec(script="echo no shebang"), "#!"),
        (pb.JobSpec(script="#!/bin/sh\n\x00"), "not text"),
        (pb.JobSpec(script=SCRIPT, precision="fp128"), "unknown precision"),
        (pb.JobSpec(script=SCRIPT, nodes=2, ntasks=1), "fewer than nodes"),
        (pb.JobSpec(script=SCRIPT, gpu_type="a100"), "without a GPU count"),
        (pb.JobSpec(script=SCRIPT, sites=["a"], exclude_sites=["a"]), "both required and excluded"),
        (pb.JobSpec(script=SCRIPT, name="bad name!"), "bad job name"),
        (pb.JobSpec(script=SCRIPT, environment={"1X": "y"}), "environment variable"),
        (pb.JobSpec(script="#!/bin/sh\n" + "x" * (jobspec.MAX_SCRIPT_BYTES + 1)), "limit"),
    ],
)
def test_malformed_specs_get_one_line_reasons(spec: pb.JobSpec, message: str) -> None:
    with pytest.raises(SpecError, match=message) as e:
        jobspec.validate(spec)
    assert "\n" not in str(e.value)
