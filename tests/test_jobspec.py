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


@pytest.mark.parametrize("text", ["0", "0:00:00", "UNLIMITED", "infinite", "-1"])
def test_no_time_limit_is_zero(text: str) -> None:
    assert jobspec.parse_time(text) == 0  # -t 0: sbatch's "no time limit"


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", ":5", "1::", "1.5", "99999999-0"])
def test_bad_time_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(SpecError, match="--time"):
        jobspec.parse_time(text)


def test_memory_and_gres() -> None:
    assert jobspec.parse_mem("4G") == 4096
    assert jobspec.parse_mem("4GB") == 4096
    assert jobspec.parse_mem("500") == 500
    assert jobspec.parse_mem("1025K") == 2  # rounded up
    assert jobspec.parse_mem("0") == 0  # --mem=0: the whole node
    g = jobspec.parse_gres("gpu:a100:2")
    assert (g.gpu_type, g.gpus, g.other) == ("a100", 2, "")
    assert jobspec.parse_gres("gpu:4").gpus == 4
    assert jobspec.parse_gres("gpu").gpus == 1
    assert jobspec.parse_gres("gpu:A100:1").gpu_type == "A100"  # case-sensitive, as Slurm
    assert jobspec.parse_gres("fpga:1,gpu:1").other == "fpga:1"  # kept for the site
    assert jobspec.parse_gres("none").none
    for bad in ("gpu:a100:x:1", "gpu:1,gpu:v100:1", "a b"):
        with pytest.raises(SpecError):
            jobspec.parse_gres(bad)
    for bad_mem in ("-1G", "1.5G", "4X"):
        with pytest.raises(SpecError):
            jobspec.parse_mem(bad_mem)


def test_validate_normalises_and_keeps_what_slurm_decides() -> None:
    spec = jobspec.validate(
        pb.JobSpec(script=SCRIPT, precision="FP64", gpu_type="A100", gpus_per_node=1)
    )
    assert spec.precision == "fp64"
    assert spec.gpu_type == "A100"  # Slurm's GPU types are case-sensitive
    assert spec.time_limit_minutes == 0  # not given: the partition's default at the site
    shape = jobspec.shape_of(spec)
    assert (shape.nodes, shape.tasks, shape.cpus_per_task) == (1, 1, 1)
    assert shape.time_limit_minutes == jobspec.DEFAULT_TIME_MINUTES  # what placement plans
    # sbatch: "can't run 1 processes on 2 nodes, setting nnodes to 1"
    fewer = jobspec.shape_of(jobspec.validate(pb.JobSpec(script=SCRIPT, nodes=2, ntasks=1)))
    assert (fewer.nodes, fewer.tasks) == (1, 1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (pb.JobSpec(script=""), "empty"),
        (pb.JobSpec(script="echo no shebang"), "#!"),
        (pb.JobSpec(script="#!/bin/sh\n\x00"), "not text"),
        (pb.JobSpec(script=SCRIPT, precision="fp128"), "unknown precision"),
        (pb.JobSpec(script=SCRIPT, nodes=2, max_nodes=1), "less than"),
        (pb.JobSpec(script=SCRIPT, mem_per_node_mb=1, mem_per_cpu_mb=1), "mutually exclusive"),
        (pb.JobSpec(script=SCRIPT, comment="metasched:0a0a0a0a:9:1"), "metasched:"),
        (pb.JobSpec(script=SCRIPT, partition="a,,b"), "bad partition"),
        (pb.JobSpec(script=SCRIPT, exclusive="maybe"), "exclusive"),
        (pb.JobSpec(script=SCRIPT, gpu_type="a100"), "without a GPU count"),
        (pb.JobSpec(script=SCRIPT, sites=["a"], exclude_sites=["a"]), "both required and excluded"),
        (pb.JobSpec(script=SCRIPT, name="two\nlines"), "bad job name"),
        (pb.JobSpec(script=SCRIPT, environment={"1X": "y"}), "environment variable"),
        (pb.JobSpec(script="#!/bin/sh\n" + "x" * (jobspec.MAX_SCRIPT_BYTES + 1)), "limit"),
    ],
)
def test_malformed_specs_get_one_line_reasons(spec: pb.JobSpec, message: str) -> None:
    with pytest.raises(SpecError, match=message) as e:
        jobspec.validate(spec)
    assert "\n" not in str(e.value)
