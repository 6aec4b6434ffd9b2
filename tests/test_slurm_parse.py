"""Parsers of Slurm command output, over real output of 22.05 (captured from the lab) and
25.11 (a real cluster), plus one hand-made 23.02 document (marked CONSTRUCTED)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metasched.agent.slurm import parse
from metasched.agent.slurm.base import SlurmError, SlurmJob

DATA = Path(__file__).parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


def by_id(jobs: list[SlurmJob]) -> dict[str, SlurmJob]:
    return {j.job_id: j for j in jobs}


def transcript(name: str) -> list[tuple[str, int, str]]:
    """The sbatch-test-only.txt transcripts: ($ command, rc=N, --- stderr: block)."""
    out = []
    for block in read(name).split("$ sbatch")[1:]:
        rc = int(re.search(r"rc=(\d+)", block).group(1))  # type: ignore[union-attr]
        stderr = block.split("--- stderr:", 1)[1]
        out.append((block.splitlines()[0], rc, stderr))
    return out


# ------------------------------------------------------------------ small values
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("gpu:a100:4", {"a100": 4}),
        ("gpu:a100:4(S:0-1)", {"a100": 4}),
        ("gpu:a100:0(IDX:N/A)", {"a100": 0}),
        ("gpu:h100:4(IDX:0-3)", {"h100": 4}),
        ("gres/gpu:h100:2", {"h100": 2}),  # 23.11+ tres_per_node
        ("gres:gpu:a100:1", {"a100": 1}),  # 22.05 tres_per_node
        ("gpu:2", {"": 2}),
        ("gpu", {"": 1}),
        ("gpu:a100:2(S:0,1),gpu:v100:1", {"a100": 2, "v100": 1}),
        ("craynetwork:1,gpu:a100:2", {"a100": 2}),
        ("(null)", {}),
        ("", {}),
        (None, {}),
    ],
)
def test_parse_gres(text: str | None, want: dict[str, int]) -> None:
    assert parse.parse_gres(text) == want


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (0, 0),
        (768, 3),  # 22.05: wait status, exit(3) << 8
        (15, 143),  # 22.05: killed by SIGTERM (scancel)
        (9, 137),
        ({"set": True, "infinite": False, "number": 768}, 3),  # 23.02 uint32_no_val
        ({"set": False, "infinite": False, "number": 0}, 0),  # still running
        (
            {
                "status": ["SIGNALED"],
                "return_code": {"set": False, "number": 0},
                "signal": {"id": {"set": True, "number": 15}, "name": "TERM"},
            },
            143,
        ),
        (
            {
                "status": ["ERROR"],
                "return_code": {"set": True, "number": 3},
                "signal": {"id": {"set": False, "number": 0}, "name": ""},
            },
            3,
        ),
        ("3:0", 3),  # sacct / jobcomp text
        ("0:15", 143),
        ("0:0", 0),
        (None, 0),
    ],
)
def test_exit_status(raw: object, want: int) -> None:
    assert parse.exit_status(raw) == want


@pytest.mark.parametrize(
    "raw",
    [
        15,  # 22.05 squeue
        {
            "status": ["SIGNALED"],
            "return_code": {"set": False, "number": 0},
            "signal": {"id": {"set": True, "number": 15}, "name": "TERM"},
        },  # 23.11+ squeue
        "0:15",  # sacct
        "0:0",  # 22.05 and 25.11 jobcomp: no signal kept
    ],
)
def test_a_job_slurm_ended_has_one_exit_code_in_every_view(raw: object) -> None:
    """Cancelled (or timed out): squeue keeps scancel's signal, the completion log does not.
    The job must not change exit code when it leaves squeue for the log."""
    assert parse.exit_status(raw, "CANCELLED") == 0
    assert parse.exit_status(raw, "TIMEOUT") == 0
    assert parse.exit_code(0, 15, "FAILED") == 143  # a signal the job did not get from Slurm


def test_number_and_state_normalisers() -> None:
    assert parse.number(7) == 7
    assert parse.number({"set": True, "infinite": False, "number": 7}) == 7
    assert parse.number({"set": False, "infinite": False, "number": 7}) == 0
    assert parse.number({"set": True, "infinite": True, "number": 0}, default=-1) == -1
    assert parse.base_state("RUNNING") == "RUNNING"
    assert parse.base_state(["RUNNING", "COMPLETING"]) == "RUNNING"
    assert parse.base_state("CANCELLED by 0") == "CANCELLED"
    assert parse.node_state("idle", ["DRAIN"]) == "idle+drain"
    assert parse.node_state(["IDLE", "DRAIN"]) == "idle+drain"


def test_expand_hostlist() -> None:
    assert parse.expand_hostlist("gpu-n[1-2]") == ["gpu-n1", "gpu-n2"]
    assert parse.expand_hostlist("a-n[1-3,5],b-n07") == ["a-n1", "a-n2", "a-n3", "a-n5", "b-n07"]
    assert parse.expand_hostlist("n[08-10]") == ["n08", "n09", "n10"]
    assert parse.expand_hostlist("(null)") == []


# ------------------------------------------------------------------ squeue --json
def test_squeue_22_05() -> None:
    doc = read("22.05/squeue.json")
    assert parse.data_parser(parse._load(doc, "t")) == "v0.0.38"
    jobs = by_id(parse.parse_squeue_json(doc))
    # every state the lab produced, with its exit status
    want = {
        "1": ("COMPLETED", 0),
        "2": ("FAILED", 3),  # exit 3: exit_code 768
        "3": ("RUNNING", 0),
        # scancel's SIGTERM (wait status 15) is Slurm's doing: the return code, as jobcomp says
        "4": ("CANCELLED", 0),
        "5": ("PENDING", 0),
        "6": ("PENDING", 0),
        "7": ("FAILED", 137),  # batch shell killed by SIGKILL
        "8": ("TIMEOUT", 0),
        "11": ("FAILED", 129),  # refused --gres still got an id; FAILED BadConstraints
        "14": ("FAILED", 143),
    }
    for jid, (state, code) in want.items():
        assert (jobs[jid].state, jobs[jid].exit_code) == (state, code), jid
    gpu = jobs["3"]
    assert (gpu.gpus, gpu.gpu_type, gpu.cpus, gpu.time_limit_minutes) == (2, "a100", 2, 10)
    assert gpu.comment == "metasched:0123abcd:2:1"
    assert jobs["5"].reason == "Resources" and jobs["5"].start_time > 0  # backfill estimate
    assert jobs["6"].reason == "JobHeldUser" and jobs["6"].start_time == 0
    assert jobs["11"].reason == "BadConstraints"


def test_squeue_25_11_shapes() -> None:
    jobs = by_id(parse.parse_squeue_json(read("25.11/squeue-after-cancel.json")))
    j8 = jobs["8"]
    assert (j8.state, j8.exit_code, j8.nodes, j8.cpus) == ("CANCELLED", 0, 2, 128)
    assert (j8.gpus, j8.gpu_type) == (4, "h100")  # 2 per node x 2 nodes
    assert j8.comment == "metasched:1"
    assert j8.node_names == ("site-x-n1", "site-x-n2")
    assert jobs["10"].node_names == ()
    assert j8.start_time == 1795616503 and j8.time_limit_minutes == 20
    assert (jobs["12"].state, jobs["12"].reason) == ("FAILED", "BadConstraints")
    assert jobs["11"].user == "alice"
    mixed = by_id(parse.parse_squeue_json(read("25.11/squeue-mixed.json")))
    assert mixed["36"].state == "RUNNING" and mixed["36"].start_time == 1795616912
    assert mixed["10"].start_time == 0


def test_squeue_25_11_older_data_parser() -> None:
    jobs = by_id(parse.parse_squeue_json(read("25.11/squeue-v0.0.41.json")))
    assert (jobs["8"].state, jobs["8"].gpus, jobs["8"].gpu_type) == ("RUNNING", 4, "h100")
    assert jobs["9"].state == "PENDING"


def test_squeue_23_02_constructed() -> None:
    # CONSTRUCTED from the documented v0.0.39 schema: no real 23.02 output was available
    jobs = by_id(parse.parse_squeue_json(read("23.02/squeue-CONSTRUCTED.json")))
    assert (jobs["21"].state, jobs["21"].gpus, jobs["21"].gpu_type, jobs["21"].cpus) == (
        "RUNNING",
        2,
        "a100",
        4,
    )
    assert (jobs["22"].exit_code, jobs["22"].user) == (3, "alice")
    assert jobs["23"].time_limit_minutes == 0 and jobs["23"].nodes == 2


def test_squeue_unreachable_22_05_is_an_error() -> None:
    # 22.05 squeue --json exits 0 with only "errors" when slurmctld is down
    with pytest.raises(SlurmError, match="Failed while looking for jobs"):
        parse.parse_squeue_json(read("22.05/squeue-unreachable.json"))


# ------------------------------------------------------------------ sinfo --json
def test_sinfo_22_05() -> None:
    nodes = {n.name: n for n in parse.parse_sinfo_json(read("22.05/sinfo.json"))}
    n1 = nodes["gpu-n1"]
    assert (n1.state, n1.cpus, n1.alloc_cpus, n1.mem_mb, n1.alloc_mem_mb) == (
        "mixed",
        64,
        2,
        512000,
        2048,
    )
    assert n1.gpus == {"a100": 4} and n1.alloc_gpus == {"a100": 2}
    assert n1.partitions == ("batch",) and n1.usable


@pytest.mark.parametrize("name", ["25.11/sinfo-N-mixed.json", "25.11/sinfo-mixed.json"])
def test_sinfo_25_11(name: str) -> None:
    nodes = {n.name: n for n in parse.parse_sinfo_json(read(name))}
    n1, n2 = nodes["site-x-n1"], nodes["site-x-n2"]
    assert (n1.state, n1.cpus, n1.alloc_cpus, n1.alloc_mem_mb) == ("mixed", 64, 4, 4096)
    assert n1.gpus == {"h100": 4} and n1.alloc_gpus == {"h100": 1}
    assert (n2.state, n2.alloc_cpus, n2.alloc_gpus) == ("idle", 0, {"h100": 0})
    assert n1.partitions == ("batch",)


# ------------------------------------------------------------------ completion records
def test_jobcomp_file_22_05() -> None:
    jobs = by_id(parse.parse_jobcomp_text(read("22.05/jobcomp.txt")))
    assert (jobs["2"].state, jobs["2"].exit_code, jobs["2"].name) == ("FAILED", 3, "exit3")
    # jobcomp records no signal for cancelled or timed-out jobs
    assert (jobs["4"].state, jobs["4"].exit_code) == ("CANCELLED", 0)
    assert (jobs["8"].state, jobs["8"].time_limit_minutes) == ("TIMEOUT", 1)
    assert jobs["14"].exit_code == 143 and jobs["7"].exit_code == 137
    assert jobs["1"].user == "root" and jobs["1"].end_time > 0
    assert jobs["1"].comment == ""  # 22.05's jobcomp/filetxt keeps no comment


def test_jobcomp_values_with_spaces() -> None:
    line = (
        "JobId=5 UserId=a(1) Name=my job x JobState=COMPLETED "
        "WcKey=metasched:0a1b2c3d:1:0 ExitCode=0:0"
    )
    (job,) = parse.parse_jobcomp_text(line)
    assert (job.name, job.comment, job.user) == ("my job x", "metasched:0a1b2c3d:1:0", "a")


def test_sacct_c_parsable_22_05() -> None:
    jobs = by_id(parse.parse_sacct_text(read("22.05/sacct-c-P.txt")))
    assert set(jobs) == {"1", "2", "4", "7", "8", "11", "14", "15"}
    assert (jobs["2"].state, jobs["2"].exit_code, jobs["2"].partition) == ("FAILED", 3, "batch")
    assert jobs["8"].end_time - jobs["8"].start_time == 86
    assert jobs["1"].user == "root"


def test_sacct_c_wckey_carries_the_tag() -> None:
    text = "JobID|JobName|State|ExitCode|WCKey|Comment\n7|x|COMPLETED|0:0|metasched:0a1b2c3d:4:1|\n"
    (job,) = parse.parse_sacct_text(text)
    assert job.comment == "metasched:0a1b2c3d:4:1"


def test_sacct_c_default_text_25_11() -> None:
    # `sacct -c --json` in 25.11: --json ignored, default columns, no header
    jobs = by_id(parse.parse_sacct_text(read("25.11/sacct-c--json-NOT-JSON.txt")))
    assert {k: j.state for k, j in jobs.items()} == {
        "12": "FAILED",
        "13": "CANCELLED",
        "8": "CANCELLED",
    }
    assert jobs["8"].name == "run-gpu" and jobs["8"].nodes == 2 and jobs["8"].end_time > 0


def test_sacct_json_constructed() -> None:
    # CONSTRUCTED from the documented slurmdbd job schema (no slurmdbd here):
    # 22.05-style plain values and 23.11+-style wrapped values side by side
    doc = """{"jobs": [
      {"job_id": 41, "name": "a", "partition": "batch", "user": "bob",
       "comment": {"job": "metasched:0a1b2c3d:9:0"},
       "state": {"current": "FAILED", "reason": "None"}, "allocation_nodes": 1,
       "time": {"submission": 100, "start": 110, "end": 120, "limit": 30},
       "exit_code": {"status": "FAILED", "return_code": 3},
       "tres": {"allocated": [{"type": "cpu", "count": 4},
                              {"type": "gres", "name": "gpu", "count": 2},
                              {"type": "gres", "name": "gpu:a100", "count": 2}]}},
      {"job_id": 42, "name": "b", "partition": "batch", "user": "bob", "comment": {"job": ""},
       "state": {"current": ["CANCELLED"], "reason": "None"},
       "allocation_nodes": 2,
       "time": {"submission": 100, "start": 110, "end": 130,
                "limit": {"set": true, "infinite": false, "number": 60}},
       "exit_code": {"status": ["SIGNALED"], "return_code": {"set": false, "number": 0},
                     "signal": {"id": {"set": true, "number": 9}, "name": "KILL"}},
       "tres": {"allocated": []}}]}"""
    jobs = by_id(parse.parse_sacct_json(doc))
    a, b = jobs["41"], jobs["42"]
    assert (a.state, a.exit_code, a.cpus, a.gpus, a.gpu_type) == ("FAILED", 3, 4, 2, "a100")
    assert a.comment == "metasched:0a1b2c3d:9:0" and a.time_limit_minutes == 30
    assert (b.state, b.exit_code, b.nodes, b.time_limit_minutes) == ("CANCELLED", 0, 2, 60)


# ------------------------------------------------------------------ sbatch, scontrol
@pytest.mark.parametrize("version", ["22.05", "25.11"])
def test_test_only_transcripts(version: str) -> None:
    results = [
        (cmd, parse.parse_test_only(err, rc))
        for cmd, rc, err in transcript(f"{version}/sbatch-test-only.txt")
    ]
    assert results
    for cmd, res in results:
        if "-p nope" in cmd:
            assert not res.ok and res.error == "Invalid partition name specified"
        elif res.ok:
            assert res.job_id.isdigit() and res.start_time > 0 and res.partition == "batch"
            assert res.processors >= 1 and res.nodes
        else:
            assert res.error == "Requested node configuration is not available"
    assert any(r.ok for _, r in results) and any(not r.ok for _, r in results)


def test_test_only_stray_a_25_05() -> None:
    line = "sbatch: Job 26 to start at 2026-11-25T14:35:08 a using 128 processors on nodes "
    res = parse.parse_test_only(line + "site-x-n[1-2] in partition batch\n", 0)
    assert (res.ok, res.job_id, res.processors, res.nodes) == (True, "26", 128, "site-x-n[1-2]")


def test_sbatch_messages() -> None:
    assert parse.sbatch_error(read("22.05/sbatch-bad-partition.stderr")) == (
        "Invalid partition name specified"
    )
    unreachable = read("22.05/sbatch-unreachable.stderr")
    assert parse.is_unavailable(unreachable)
    assert not parse.is_unavailable(read("22.05/sbatch-bad-partition.stderr"))
    assert parse.sbatch_error(unreachable).startswith("Unable to contact slurm controller")
    assert parse.parse_sbatch_parsable("12345;site-a\n") == "12345"
    assert parse.parse_sbatch_parsable("77\n") == "77"
    with pytest.raises(SlurmError):
        parse.parse_sbatch_parsable("")


def test_partitions_text() -> None:
    (p,) = parse.parse_partitions_text(read("22.05/scontrol-show-partition-o.txt"))
    assert (p.name, p.nodes, p.is_default, p.state) == ("batch", ("gpu-n1", "gpu-n2"), True, "up")
    assert (p.max_time_minutes, p.default_time_minutes, p.max_nodes_per_job) == (10080, 60, 0)


def test_config_text() -> None:
    conf = parse.parse_config_text(
        "Configuration data as of 2026-11-25T15:49:30\n"
        "AccountingStorageType   = accounting_storage/none\n"
        "JobCompLoc              = /tmp/x/jobcomp.txt\n"
        "JobCompType             = jobcomp/filetxt\n"
    )
    assert conf["JobCompType"] == "jobcomp/filetxt" and conf["JobCompLoc"] == "/tmp/x/jobcomp.txt"


def test_node_features_in_every_shape() -> None:
    old = parse.parse_sinfo_json((DATA / "22.05" / "sinfo.json").read_text())
    assert old[0].features == ("gpu",)  # "active_features": "gpu"
    new = parse.parse_sinfo_json((DATA / "25.11" / "sinfo-N-mixed.json").read_text())
    assert new[0].features == ("site-x",)  # {"total": "site-x", "active": "site-x"}
    assert parse.features(["a", "b "]) == ("a", "b") and parse.features(None) == ()
