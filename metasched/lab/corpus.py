"""Real job scripts, sbatch direct against msub, at the same lab site.

The corpus is tests/data/scripts/ (sources, commits and licences in its MANIFEST.json). Each
script is submitted twice from the same directory: by the site's own sbatch, and by msub
through metaschedd and the site's agent. The two Slurm jobs are read back with
`scontrol show job -o` and compared field by field (nodes, CPUs, tasks, memory, GRES/TRES,
limit, name, output paths, workdir, mail, exclusive, constraint...), the metasched tag
aside. A script sbatch refuses must be refused by msub at submit.

The lab site is built to be a site these scripts were written for: big nodes, the features,
licences and GRES they name, and one partition in state DOWN so that no job ever runs (both
jobs stay PENDING and are compared as Slurm recorded them). What must change for the lab
is changed mechanically, the same way for both submissions (adapt()):
  - partition names: every -p/--partition value becomes the lab's partition, "batch";
  - GPU types: every type in --gres=gpu:TYPE:N, --gpus[-per-*]=TYPE:N becomes the lab's.
Nothing else in a script is touched.

    python -m bench.sbatch_corpus          prints the table (bench/README.md)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from metasched import arrays, output_names, tags
from metasched.lab.federation import Federation, wait_for
from metasched.lab.harness import SlurmLab
from metasched.lab.profiles import Partition, SiteProfile
from metasched.v1 import metasched_pb2 as pb

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "scripts"
LAB_PARTITION = "batch"
LAB_GPU = "a100"
SITE = "corpus"

# The fields compared, as `scontrol show job -o` names them (22.05 and later).
FIELDS = (
    "JobName",
    "Partition",
    "Account",
    "QOS",
    "NumNodes",
    "NumCPUs",
    "NumTasks",
    "CPUs/Task",
    "ReqB:S:C:T",
    "TRES",
    "MinCPUsNode",
    "MinMemoryNode",
    "MinMemoryCPU",
    "MinTmpDiskNode",
    "Features",
    "Licenses",
    "Network",
    "TimeLimit",
    "TimeMin",
    "Requeue",
    "OverSubscribe",
    "Contiguous",
    "CoreSpec",
    "Dependency",
    "ExcNodeList",
    "ReqNodeList",
    "Nice",
    "MailUser",
    "MailType",
    "StdIn",
    "StdOut",
    "StdErr",
    "WorkDir",
    "Comment",
    "TresPerNode",
    "TresPerJob",
    "TresPerTask",
    "CpusPerTres",
    "MemPerTres",
    "ArrayTaskId",
    "DelayBoot",
)


def manifest() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = json.loads((CORPUS / "MANIFEST.json").read_text())
    return rows


_PARTITION = re.compile(r"((?:^|\s)(?:-p\s*|--partition[=\s]\s*|--part[a-z]*[=\s]\s*))(\S+)")
_GPU_TYPED = re.compile(r"(gpu:)([A-Za-z][A-Za-z0-9._-]*)(:\d+)")
_GPUS_TYPED = re.compile(r"(--gpus(?:-per-[a-z]+)?[=\s]\s*|-G\s*)([A-Za-z][A-Za-z0-9._-]*)(:\d+)")


def adapt(text: str) -> str:
    """The script as run at the lab: partitions and GPU types replaced in #SBATCH lines only."""
    out = []
    for line in text.split("\n"):
        if line.startswith(("#SBATCH", "#SLURM")):
            line = _PARTITION.sub(lambda m: m.group(1) + LAB_PARTITION, line)
            line = _GPU_TYPED.sub(lambda m: m.group(1) + LAB_GPU + m.group(3), line)
            line = _GPUS_TYPED.sub(lambda m: m.group(1) + LAB_GPU + m.group(3), line)
        out.append(line)
    return "\n".join(out)


def _directive_values(option: re.Pattern[str]) -> set[str]:
    found: set[str] = set()
    for row in manifest():
        text = (CORPUS / row["file"]).read_text()
        for line in text.split("\n"):
            if line.startswith("#SBATCH"):
                found |= {m.group(1) for m in option.finditer(line)}
    return found


def site_profile() -> tuple[SiteProfile, dict[str, str]]:
    """A site the corpus's scripts fit (and slurm.conf overrides for it): the features and
    licences they name exist, their GRES are there, and no job ever starts."""
    features: set[str] = set()
    for value in _directive_values(re.compile(r"(?:-C\s*|--constraint[=\s]\s*)(\S+)")):
        features |= {re.sub(r"\*\d+$", "", f) for f in re.split(r"[&|,\[\]()]+", value) if f}
    licenses: set[str] = set()
    for value in _directive_values(re.compile(r"(?:-L\s*|--licen[a-z]*[=\s]\s*)(\S+)")):
        licenses |= {x.split(":")[0] for x in value.split(",") if x}
    gres_names: set[str] = set()
    for value in _directive_values(re.compile(r"--gres[=\s]\s*(\S+)")):
        gres_names |= {x.split(":")[0] for x in value.split(",") if x and not x.startswith("gpu")}
    site = SiteProfile(
        SITE,
        nodes=16,
        cpus=288,
        sockets=4,
        cores_per_socket=72,
        mem_mb=1_536_000,
        gpu_type=LAB_GPU,
        gpu_count=8,
        partitions=(Partition(LAB_PARTITION, max_time_minutes=0, default=True, state="DOWN"),),
        features=tuple(sorted(features)),
        other_gres=tuple(f"{g}:1000" for g in sorted(gres_names)),
    )
    # Long, distinctive job ids: normalise() writes a job's own id as %j in its paths.
    overrides = {"GresTypes": ",".join(["gpu", *sorted(gres_names)]), "FirstJobId": "7340001"}
    if licenses:
        overrides["Licenses"] = ",".join(f"{x}:1000" for x in sorted(licenses))
    return site, overrides


def show_job(env: dict[str, str], job_id: str) -> dict[str, str]:
    """`scontrol show job -o`, as key=value (values may hold spaces: split on ' Key=')."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    fields: dict[str, str] = {}
    for m in re.finditer(
        r"(?:^|\s)([A-Za-z][A-Za-z0-9/:_]*)=(.*?)(?=\s[A-Za-z][A-Za-z0-9/:_]*=|$)", out
    ):
        fields.setdefault(m.group(1), m.group(2))
    return fields


@dataclass(frozen=True)
class Placed:
    """Where msub's job went: the Slurm job of its (first) task, and the federation's ids
    that stand for %j / %A / %a in its file names."""

    slurm_job_id: str
    job_id: int
    array_id: int = 0
    array_task: int = 0
    tasks: str = ""  # the array's tasks, folded as Slurm prints ArrayTaskId


def _ids_as_symbols(path: str, ids: dict[str, str]) -> str:
    """A path's file name with each id written as its symbol (%j, %A, %a)."""
    head, sep, name = path.rpartition("/")
    if ids:
        pattern = "|".join(re.escape(k) for k in sorted(ids, key=len, reverse=True))
        name = re.sub(rf"(?<!\d)(?:{pattern})(?!\d)", lambda m: ids[m.group(0)], name)
    return head + sep + name


def normalise(job: dict[str, str], ids: dict[str, str], tasks: str = "") -> dict[str, str]:
    """The compared fields, with the job's own ids written as symbols (ids: '7340002' ->
    '%j'; sbatch expands them in paths, the agent with the federation's ids), metasched's
    tag taken out of the comment, and for msub's array task the array's tasks as Slurm
    would print them (tasks; each task is a plain Slurm job at the site)."""
    out = {}
    for f in FIELDS:
        v = job.get(f, "")
        if f in ("StdOut", "StdErr", "StdIn"):
            v = _ids_as_symbols(v, ids)
        if f == "Comment":
            v = tags.user_comment("" if v == "(null)" else v) or "(null)"
        if f == "ArrayTaskId" and tasks:
            v = tasks
        out[f] = v
    return out


def sbatch_ids(job: dict[str, str], job_id: str) -> dict[str, str]:
    """What stands for what in the paths of sbatch's own job. An array's pending record is
    all its tasks: its ArrayJobId is %A, and %a is printed as Slurm's NO_VAL."""
    array = job.get("ArrayJobId", "")
    return {array: "%A", output_names.NO_TASK: "%a"} if array else {job_id: "%j"}


@dataclass
class Outcome:
    """One script: what sbatch and msub made of it."""

    file: str
    sbatch: str  # "accepted" or sbatch's error
    msub: str  # "accepted" or msub's error
    differences: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.sbatch == "accepted" and self.msub == "accepted":
            return "same" if not self.differences else "DIFFERENT"
        if self.sbatch != "accepted" and self.msub != "accepted":
            return "both refuse"
        return "sbatch only" if self.sbatch == "accepted" else "msub only"


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def compare(
    file: str,
    workdir: Path,
    slurm_env: dict[str, str],
    msub: Callable[[list[str], Path], subprocess.CompletedProcess[str]],
    placed: Callable[[str], Placed],
    cancel: Callable[[str], None],
) -> Outcome:
    """Submit one corpus script both ways from workdir and compare the Slurm jobs."""
    script = workdir / Path(file).name
    script.write_text(adapt((CORPUS / file).read_text()))
    direct = subprocess.run(
        ["sbatch", "--parsable", script.name],
        env=slurm_env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    via = msub(["--parsable", script.name], workdir)
    outcome = Outcome(
        file,
        "accepted" if direct.returncode == 0 else _one_line(direct.stderr),
        "accepted" if via.returncode == 0 else _one_line(via.stderr),
    )
    sid = direct.stdout.strip().split(";")[0] if direct.returncode == 0 else ""
    mid = via.stdout.strip() if via.returncode == 0 else ""
    try:
        if sid and mid:
            there = placed(mid)
            direct_job = show_job(slurm_env, sid)
            a = normalise(direct_job, sbatch_ids(direct_job, sid))
            ours = {str(there.job_id): "%j"}
            if there.array_id:  # its first task, whose %j is the array's id (%A)
                ours = {str(there.array_id): "%A", str(there.array_task): "%a"}
            b = normalise(show_job(slurm_env, there.slurm_job_id), ours, there.tasks)
            outcome.differences = {f: (a[f], b[f]) for f in FIELDS if a[f] != b[f]}
    finally:
        if sid:
            subprocess.run(["scancel", sid], env=slurm_env, check=False, timeout=60)
        if mid:
            cancel(mid)
    return outcome


def table(outcomes: list[Outcome]) -> Iterator[str]:
    width = max((len(o.file) for o in outcomes), default=10)
    yield f"{'SCRIPT':<{width}}  {'RESULT':<12} DETAIL"
    for o in outcomes:
        if o.differences:
            detail = "; ".join(
                f"{k}: sbatch {v[0]!r} msub {v[1]!r}" for k, v in o.differences.items()
            )
        elif o.verdict == "both refuse":
            detail = f"sbatch: {o.sbatch} | msub: {o.msub}"
        elif o.verdict == "same":
            detail = ""
        else:
            detail = f"sbatch: {o.sbatch} | msub: {o.msub}"
        yield f"{o.file:<{width}}  {o.verdict:<12} {detail}"
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    yield ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" ({len(outcomes)} scripts)"


def slurm_env(slurm_conf: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SBATCH_", "SLURM_"))}
    return {**base, "SLURM_CONF": str(slurm_conf)}


def run(fed: Federation, workdir: Path, files: list[str] | None = None) -> list[Outcome]:
    """Every corpus script (or those named), sbatch direct against msub at the corpus site
    of a running federation (lab_for_corpus)."""
    env = slurm_env(fed.lab.slurm_conf(SITE))
    msub_env = {k: v for k, v in env.items() if k != "SLURM_CONF"}
    msub_env["METASCHED_DAEMON"] = f"unix:{fed.socket}"

    def msub(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metasched.cli.msub", *args],
            cwd=cwd,
            env=msub_env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def placed(job_id: str) -> Placed:
        box = [pb.Job()]

        def there() -> bool:
            box[0] = fed.job(int(job_id))
            return bool(box[0].slurm_job_id)

        wait_for(there, 300, f"job {job_id} to reach the site", fed.log("metaschedd"))
        job, tasks = box[0], ""
        if job.array_id:
            listed = fed.call(
                "ListJobs", pb.ListJobsRequest(array_id=job.array_id, include_final=True)
            ).jobs
            tasks = arrays.fold(t.array_task for t in listed)
        return Placed(job.slurm_job_id, job.id, job.array_id, job.array_task, tasks)

    def cancel(job_id: str) -> None:  # a job, or every task of an array
        with contextlib.suppress(grpc.RpcError):
            fed.call("CancelJobs", pb.CancelJobsRequest(jobs=[job_id]))

    workdir.mkdir(parents=True, exist_ok=True)
    names = files or [row["file"] for row in manifest()]
    return [compare(f, workdir, env, msub, placed, cancel) for f in names]


def lab_for_corpus(root: Path) -> SlurmLab:
    """The corpus site (not started)."""
    site, overrides = site_profile()
    return SlurmLab(root, [site], overrides={"MessageTimeout": "5", **overrides})
