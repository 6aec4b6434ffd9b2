"""Slurm command output -> our dataclasses. Pure functions: text in, values out.

One function per command output. The JSON shapes differ by Slurm version (openapi / data_parser
plugin version in meta); where fields differ the difference is in one small table or one
normaliser below, never spread over the parsers:

  version       Slurm   job_state     numbers / times          exit_code           gres in tres
  v0.0.37/38    21.08+  "RUNNING"     plain ints               wait status int     gres:gpu:a100:1
  v0.0.39       23.02   "RUNNING"     counts {set,inf,number}  int, later object   gres:gpu:a100:1
                                      times plain ints
  v0.0.40-44    23.11+  ["RUNNING"]   {set,infinite,number}    {status, return_   gres/gpu:h100:1
                                                               code, signal}
sinfo --json: 21.08-23.02 print {"nodes": [one dict per node]}; 23.11+ print {"sinfo": [...]}
(one entry per node *and partition* with -N, aggregated per node group without -N).

Text outputs (no JSON exists for them): sbatch --test-only's stderr line, the jobcomp/filetxt
file (key=value per line) and `sacct -c -P` (reads that file). Exit codes are normalised to the
job's own exit status: exit(n) -> n, killed by signal s -> 128+s (the shell's convention),
except for a job Slurm itself ended (cancelled, timed out, preempted): that one reports its
return code, because the completion log keeps no signal for it (22.05 and 25.11 write 0:0)
while squeue does, and a job must not change exit code when it moves from one to the other.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from metasched.agent.slurm.base import Node, PartitionInfo, SlurmError, SlurmJob

JsonObj = Mapping[str, Any]


# ------------------------------------------------------------------ value normalisers
def number(value: Any, default: int = 0) -> int:
    """A count or time: a plain int (22.05) or {"set", "infinite", "number"} (23.02+).
    Unset or infinite -> default."""
    if isinstance(value, Mapping):
        if not value.get("set", True) or value.get("infinite", False):
            return default
        value = value.get("number", default)
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return default


def base_state(value: Any) -> str:
    """'RUNNING' (22.05), ['RUNNING', 'COMPLETING'] (23.11+: base state first, then flags),
    or sacct's 'CANCELLED by 0' -> 'RUNNING' / 'CANCELLED'."""
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "").strip().split(" ", 1)[0].rstrip("+").upper()


def node_state(state: Any, flags: Iterable[str] = ()) -> str:
    """Node state as one lower-case string: 'mixed', 'idle+drain', 'down*' stays as given."""
    parts = list(state) if isinstance(state, list) else [str(state or "")]
    parts += [f for f in flags if f]
    return "+".join(p.lower() for p in parts if p) or "unknown"


# States in which Slurm, not the job, ended the job: their signal is Slurm's (see module doc).
ENDED_BY_SLURM = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE"})


def exit_code(return_code: int, signal: int, state: str = "") -> int:
    """The one rule every backend and view applies: killed by signal s -> 128+s, unless Slurm
    ended the job (state in ENDED_BY_SLURM): then its return code."""
    if signal and state not in ENDED_BY_SLURM:
        return 128 + signal
    return return_code


def exit_status(value: Any, state: str = "") -> int:
    """Slurm's exit code in any of its shapes -> the job's exit status (see exit_code).

    22.05 squeue gives the raw wait(2) status (exit 3 -> 768, SIGTERM -> 15); 23.02 wraps it
    in {set, number}; 23.11+ give {"status": [...], "return_code": N, "signal": {"id": N}};
    sacct / jobcomp text gives "exit:signal" ("3:0", "0:15"). -1: unreadable."""
    if value is None:
        return 0
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)(?::(\d+))?\s*", value)
        if not m:
            return -1
        return exit_code(int(m.group(1)), int(m.group(2) or 0), state)
    if isinstance(value, Mapping) and ("return_code" in value or "signal" in value):
        status = value.get("status") or []
        signal = value.get("signal") or {}
        sig = number(signal.get("id") if isinstance(signal, Mapping) else signal)
        return exit_code(
            number(value.get("return_code")), sig if "SIGNALED" in status else 0, state
        )
    if isinstance(value, Mapping) and not value.get("set", True):
        return 0  # still running: no exit code yet
    raw = number(value)
    return exit_code((raw >> 8) & 0xFF, raw & 0x7F, state)  # WIFSIGNALED: raw & 0x7F


_GRES_ITEM = re.compile(r"^(?:gres[:/])?gpu(?::([^:(]+))?(?::(\d+))?(?:\(.*\))?$")


def parse_gres(text: str | None) -> dict[str, int]:
    """GPU counts by type from any Slurm GRES string; other GRES are ignored.

    'gpu:a100:4', 'gpu:a100:4(S:0-1)', 'gpu:a100:0(IDX:N/A)', 'gres/gpu:h100:2' (23.11+
    tres_per_node), 'gres:gpu:a100:1' (22.05 tres_per_node), 'gpu:2', 'gpu', '(null)', 'N/A',
    comma-separated lists. Untyped GPUs are counted under ''."""
    out: dict[str, int] = {}
    if not text:
        return out
    # commas also occur inside "(S:0-1,3)": split only on commas outside parentheses
    for item in re.split(r",(?![^(]*\))", text):
        m = _GRES_ITEM.match(item.strip())
        if not m:
            continue
        gtype, count = m.group(1) or "", m.group(2)
        if gtype.isdigit() and count is None:  # 'gpu:2': a count, not a type
            gtype, count = "", gtype
        n = int(count) if count is not None else 1
        out[gtype] = out.get(gtype, 0) + n
    return out


def _text_time(value: str) -> float:
    """sacct / jobcomp timestamps ('2026-11-25T15:49:30', local time); 'Unknown', 'None' -> 0."""
    try:
        return time.mktime(datetime.strptime(value.strip(), "%Y-%m-%dT%H:%M:%S").timetuple())
    except ValueError:
        return 0.0


def _text_minutes(value: str) -> int:
    """'60' (jobcomp: minutes), '01:00:00', '7-00:00:00', 'UNLIMITED' -> minutes (0 = none)."""
    v = value.strip()
    if v.isdigit():
        return int(v)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+)(?::(\d+))?", v)
    if not m:
        return 0
    days, a, b, c = (int(x) if x else 0 for x in m.groups())
    if m.group(4) is None:  # days-hours:minutes or minutes:seconds
        hours, minutes, seconds = (a, b, 0) if m.group(1) else (0, a, b)
    else:
        hours, minutes, seconds = a, b, c
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


# ------------------------------------------------------------------ JSON documents
def _load(text: str, what: str) -> JsonObj:
    # a client may print warnings before the document
    start = text.find("{")
    if start < 0:
        raise SlurmError(f"{what}: no JSON in output: {text.strip()[:200]!r}")
    try:
        doc = json.loads(text[start:])
    except ValueError as e:
        raise SlurmError(f"{what}: bad JSON: {e}") from None
    if not isinstance(doc, Mapping):
        raise SlurmError(f"{what}: JSON is not an object")
    return doc


def json_errors(doc: JsonObj) -> list[str]:
    """The 'errors' of a --json document. 22.05 squeue/sinfo exit 0 with an error here (and
    no jobs) when slurmctld cannot be reached."""
    out = []
    for e in doc.get("errors") or []:
        if isinstance(e, Mapping):
            out.append(str(e.get("description") or e.get("error") or e))
        else:
            out.append(str(e))
    return out


def data_parser(doc: JsonObj) -> str:
    """'v0.0.38' (openapi plugin, <= 22.05), 'v0.0.44' (data_parser plugin, 23.02+), or ''."""
    plugin = (doc.get("meta") or {}).get("plugin") or {}
    name = str(plugin.get("data_parser") or plugin.get("type") or "")
    m = re.search(r"v\d+\.\d+\.\d+", name)
    return m.group(0) if m else ""


def _job_from_json(j: JsonObj) -> SlurmJob:
    nodes = number(j.get("node_count"), 1) or 1
    per_node = parse_gres(j.get("tres_per_node"))
    per_job = parse_gres(j.get("tres_per_job"))
    gpu_types = [t for t in (*per_node, *per_job) if t]
    state = base_state(j.get("job_state"))
    return SlurmJob(
        job_id=str(j.get("job_id", "")),
        state=state,
        partition=str(j.get("partition") or ""),
        reason=str(j.get("state_reason") or ""),
        name=str(j.get("name") or ""),
        user=str(j.get("user_name") or ""),
        comment=str(j.get("comment") or ""),
        nodes=nodes,
        cpus=number(j.get("cpus"), 1),
        gpus=sum(per_node.values()) * nodes + sum(per_job.values()),
        gpu_type=gpu_types[0] if gpu_types else "",
        time_limit_minutes=number(j.get("time_limit")),
        submit_time=float(number(j.get("submit_time"))),
        start_time=float(number(j.get("start_time"))),
        end_time=float(number(j.get("end_time"))),
        exit_code=exit_status(j.get("exit_code"), state),
        priority=number(j.get("priority")),
        node_names=tuple(expand_hostlist(str(j.get("nodes") or ""))),
    )


def parse_squeue_json(text: str) -> list[SlurmJob]:
    """`squeue --json` (any version). Raises SlurmError if the document reports errors."""
    doc = _load(text, "squeue --json")
    errors = json_errors(doc)
    if errors and not doc.get("jobs"):
        raise SlurmError("squeue: " + "; ".join(errors))
    return [_job_from_json(j) for j in doc.get("jobs") or []]


def parse_sinfo_json(text: str) -> list[Node]:
    """`sinfo -N --json` (or plain `sinfo --json`) of any version -> one Node per node."""
    doc = _load(text, "sinfo --json")
    errors = json_errors(doc)
    if errors and not (doc.get("nodes") or doc.get("sinfo")):
        raise SlurmError("sinfo: " + "; ".join(errors))
    if "sinfo" in doc:
        return _nodes_from_sinfo_entries(doc["sinfo"] or [])
    out = []
    for n in doc.get("nodes") or []:
        out.append(
            Node(
                name=str(n.get("name", "")),
                partitions=tuple(n.get("partitions") or ()),
                state=node_state(n.get("state"), n.get("state_flags") or ()),
                cpus=number(n.get("cpus")),
                alloc_cpus=number(n.get("alloc_cpus")),
                mem_mb=number(n.get("real_memory")),
                alloc_mem_mb=number(n.get("alloc_memory")),
                gpus=parse_gres(n.get("gres")),
                alloc_gpus=parse_gres(n.get("gres_used")),
                features=features(n.get("active_features") or n.get("features")),
            )
        )
    return out


def features(value: Any) -> tuple[str, ...]:
    """A node's features: "a,b" (22.05), {"active": "a,b", "total": ...} (23.11+) or a list."""
    if isinstance(value, Mapping):
        value = value.get("active") or value.get("total")
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(f).strip() for f in value or () if str(f).strip())


def _nodes_from_sinfo_entries(entries: Iterable[JsonObj]) -> list[Node]:
    """23.11+ entries: one per (node group, partition). With -N a group is one node; an
    aggregated group's allocations are split evenly (sinfo gives no finer numbers)."""
    by_name: dict[str, Node] = {}
    for e in entries:
        names = [str(x) for x in (e.get("nodes") or {}).get("nodes") or []]
        if not names:
            continue
        k = len(names)
        cpus, mem, gres = e.get("cpus") or {}, e.get("memory") or {}, e.get("gres") or {}
        partition = str((e.get("partition") or {}).get("name") or "")
        total_gpus = parse_gres(gres.get("total"))
        used_gpus = (
            {t: c // k for t, c in parse_gres(gres.get("used")).items()}
            if k > 1
            else (parse_gres(gres.get("used")))
        )
        for name in names:
            prev = by_name.get(name)
            parts = (*prev.partitions, partition) if prev else (partition,)
            by_name[name] = Node(
                name=name,
                partitions=tuple(p for p in dict.fromkeys(parts) if p),
                state=node_state((e.get("node") or {}).get("state")),
                cpus=number(cpus.get("maximum")) or number(cpus.get("total")) // k,
                alloc_cpus=number(cpus.get("allocated")) // k,
                mem_mb=number(mem.get("maximum")) or number(mem.get("minimum")),
                alloc_mem_mb=number(mem.get("allocated")) // k,
                gpus=total_gpus,
                alloc_gpus=used_gpus,
                features=features(e.get("features")),
            )
    return list(by_name.values())


# sacct --json (slurmdbd only): where each of our fields lives, per shape. 21.08-23.02 keep
# plain values, 23.11+ wrap numbers and make state.current a list; the paths are the same.
_SACCT_PATHS: dict[str, tuple[str, ...]] = {
    "state": ("state", "current"),
    "reason": ("state", "reason"),
    "submit": ("time", "submission"),
    "start": ("time", "start"),
    "end": ("time", "end"),
    "limit": ("time", "limit"),
    "nodes": ("allocation_nodes",),
    "user": ("user",),
}


def _path(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _sacct_comment(j: JsonObj) -> str:
    c = j.get("comment")
    if isinstance(c, Mapping):  # {"administrator", "job", "system"}
        return str(c.get("job") or "")
    return str(c or "")


def _sacct_exit(value: Any, state: str) -> int:
    """sacct JSON exit_code: {"status": "COMPLETED"|[..], "return_code": N|{..}, "signal":..}."""
    if isinstance(value, Mapping):
        status = value.get("status")
        status_list = status if isinstance(status, list) else [status]
        sig = value.get("signal") or {}
        sig_id = number(sig.get("signal_id", sig.get("id")) if isinstance(sig, Mapping) else sig)
        signalled = sig_id if "SIGNALED" in status_list else 0
        return exit_code(number(value.get("return_code")), signalled, state)
    return exit_status(value, state)


def parse_sacct_json(text: str) -> list[SlurmJob]:
    """`sacct --json` (needs slurmdbd). Steps are ignored: one record per job."""
    doc = _load(text, "sacct --json")
    out = []
    for j in doc.get("jobs") or []:
        tres = _path(j, ("tres", "allocated")) or _path(j, ("tres", "requested")) or []
        gpus, gpu_type, cpus = 0, "", 0
        for t in tres if isinstance(tres, list) else []:
            if t.get("type") == "gres" and str(t.get("name", "")).startswith("gpu"):
                name = str(t.get("name"))
                if ":" in name:
                    gpu_type = name.split(":", 1)[1]
                else:
                    gpus = number(t.get("count"))
            elif t.get("type") == "cpu":
                cpus = number(t.get("count"))
        state = base_state(_path(j, _SACCT_PATHS["state"]))
        out.append(
            SlurmJob(
                job_id=str(j.get("job_id", "")),
                state=state,
                partition=str(j.get("partition") or ""),
                reason=str(_path(j, _SACCT_PATHS["reason"]) or ""),
                name=str(j.get("name") or ""),
                user=str(j.get("user") or ""),
                comment=_sacct_comment(j),
                nodes=number(_path(j, _SACCT_PATHS["nodes"]), 1) or 1,
                cpus=cpus or 1,
                gpus=gpus,
                gpu_type=gpu_type,
                time_limit_minutes=number(_path(j, _SACCT_PATHS["limit"])),
                submit_time=float(number(_path(j, _SACCT_PATHS["submit"]))),
                start_time=float(number(_path(j, _SACCT_PATHS["start"]))),
                end_time=float(number(_path(j, _SACCT_PATHS["end"]))),
                exit_code=_sacct_exit(j.get("exit_code"), state),
            )
        )
    return out


# ------------------------------------------------------------------ completion records (text)
# sacct -c field -> how it becomes part of a SlurmJob. The backend asks for exactly these.
SACCT_C_FIELDS = (
    "JobID",
    "JobName",
    "Partition",
    "State",
    "ExitCode",
    "Submit",
    "Start",
    "End",
    "NCPUS",
    "NNodes",
    "Timelimit",
    "User",
    "WCKey",
    "Comment",
)


def _job_from_record(r: Mapping[str, str]) -> SlurmJob:
    """One completion record (keys lower-cased) from jobcomp or sacct text."""
    user = r.get("user") or r.get("userid") or r.get("uid") or ""
    comment = r.get("comment") or ""
    wckey = r.get("wckey") or ""
    state = base_state(r.get("state") or r.get("jobstate") or "")
    return SlurmJob(
        job_id=(r.get("jobid") or "").strip(),
        state=state,
        partition=r.get("partition") or "",
        name=r.get("jobname") or r.get("name") or "",
        user=user.split("(", 1)[0],  # 'root(0)'
        # jobcomp/filetxt keeps no comment in 22.05; the backend also puts the tag in WCKey
        comment=comment or wckey,
        nodes=number(r.get("nnodes") or r.get("nodecnt"), 1) or 1,
        cpus=number(r.get("ncpus") or r.get("proccnt"), 1) or 1,
        time_limit_minutes=_text_minutes(r.get("timelimit") or ""),
        submit_time=_text_time(r.get("submit") or r.get("submittime") or ""),
        start_time=_text_time(r.get("start") or r.get("starttime") or ""),
        end_time=_text_time(r.get("end") or r.get("endtime") or ""),
        exit_code=exit_status(r.get("exitcode") or "0:0", state),
    )


_KV = re.compile(r"(\w+)=(.*?)(?= \w+=|\s*$)")


def parse_jobcomp_text(text: str) -> list[SlurmJob]:
    """The jobcomp/filetxt file itself (JobCompLoc): one 'Key=value Key=value ...' line per
    job. Values may contain spaces (job names), so a value runs until the next ' Key='."""
    out = []
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        rec = {k.lower(): v.strip() for k, v in _KV.findall(line.strip())}
        rec["jobid"] = rec.pop("jobid", "")
        out.append(_job_from_record(rec))
    return out


def parse_sacct_text(text: str, fields: Iterable[str] = SACCT_C_FIELDS) -> list[SlurmJob]:
    """`sacct -c` text. With -P (what the backend runs) the first line is the '|'-separated
    header. Without -P and with `--json` (ignored by sacct -c, 25.11) Slurm prints the default
    columns JobID UID JobName Partition NNodes NodeList State End without a header."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    if "|" in lines[0]:
        header = [h.strip().lower() for h in lines[0].split("|")]
        rows = lines[1:]
        if "jobid" not in header:  # -P -n: no header, the caller's fields
            header = [f.lower() for f in fields]
            rows = lines
        out = []
        for row in rows:
            rec = dict(zip(header, row.split("|"), strict=False))
            if "." in rec.get("jobid", ""):  # a step (12.batch): the job line has it all
                continue
            out.append(_job_from_record(rec))
        return out
    out = []
    for row in lines:
        cols = row.split()
        if not cols[0][:1].isdigit():  # header or '-----' rule
            continue
        if len(cols) < 8:
            continue
        # JobID UID <JobName...> Partition NNodes NodeList State End: the name may hold spaces
        rec = {
            "jobid": cols[0],
            "uid": cols[1],
            "jobname": " ".join(cols[2:-5]),
            "partition": cols[-5],
            "nnodes": cols[-4],
            "state": cols[-2],
            "end": cols[-1],
        }
        out.append(_job_from_record(rec))
    return out


# ------------------------------------------------------------------ partitions (scontrol -o)
def expand_hostlist(expr: str) -> list[str]:
    """'a-n[1-3,5],b-n07' -> ['a-n1', 'a-n2', 'a-n3', 'a-n5', 'b-n07'] (zero padding kept)."""
    out: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", expr or ""):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not m:
            if item and item != "(null)":
                out.append(item)
            continue
        prefix, ranges, rest = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                out.extend(prefix + str(i).zfill(width) + s for s in expand_hostlist(rest) or [""])
    return out


def _limit_minutes(value: str) -> int:
    return 0 if value.upper() in ("UNLIMITED", "INFINITE", "NONE", "") else _text_minutes(value)


def parse_partitions_text(text: str) -> list[PartitionInfo]:
    """`scontrol show partition -o` (the same in every version; 22.05 has no --json)."""
    out = []
    for line in text.splitlines():
        if "PartitionName=" not in line:
            continue
        rec = dict(re.findall(r"(\w+)=(\S*)", line))
        max_nodes = rec.get("MaxNodes", "UNLIMITED")
        out.append(
            PartitionInfo(
                name=rec["PartitionName"],
                nodes=tuple(expand_hostlist(rec.get("Nodes", ""))),
                max_time_minutes=_limit_minutes(rec.get("MaxTime", "")),
                default_time_minutes=_limit_minutes(rec.get("DefaultTime", "")),
                max_nodes_per_job=int(max_nodes) if max_nodes.isdigit() else 0,
                is_default=rec.get("Default", "NO").upper() == "YES",
                state=rec.get("State", "UP").lower(),
            )
        )
    return out


def parse_config_text(text: str) -> dict[str, str]:
    """`scontrol show config`: 'Key                     = value' lines -> {Key: value}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------ errors
# Fragments of Slurm's messages meaning "slurmctld (or munge) could not be reached", as
# opposed to a refusal: the first is worth retrying later, the second is not.
UNAVAILABLE_MESSAGES = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "connect failure",
    "zero bytes were transmitted",
    "communication connection failure",
    "slurm backup controller in standby mode",
    "munge",
    "authentication failure",
    "slurmctld is not responding",
    "temporarily unable to accept job",
)


def is_unavailable(message: str) -> bool:
    low = message.lower()
    return any(s in low for s in UNAVAILABLE_MESSAGES)


# ------------------------------------------------------------------ sbatch
@dataclass(frozen=True)
class TestOnly:
    """sbatch --test-only: Slurm's (optimistic) will-run answer for one request."""

    ok: bool
    job_id: str = ""  # the id the test used up
    start_time: float = 0.0
    processors: int = 0
    nodes: str = ""
    partition: str = ""
    error: str = ""  # why not, when not ok


_TEST_ONLY = re.compile(
    # 25.05+ put a stray ' a ' before 'using': match anything between the time and 'using'
    r"Job (\d+) to start at (\S+).*? using (\d+) processors on nodes (\S+) in partition (\S+)"
)


def parse_test_only(stderr: str, returncode: int = 0) -> TestOnly:
    """`sbatch --test-only` writes its answer to stderr, with exit 0 (a start estimate) or
    1 ('allocation failure: Requested node configuration is not available', ...)."""
    m = _TEST_ONLY.search(stderr)
    if m and returncode == 0:
        return TestOnly(
            ok=True,
            job_id=m.group(1),
            start_time=_text_time(m.group(2)),
            processors=int(m.group(3)),
            nodes=m.group(4),
            partition=m.group(5),
        )
    return TestOnly(ok=False, error=sbatch_error(stderr) or f"sbatch exited {returncode}")


def sbatch_error(stderr: str) -> str:
    """Slurm's one-line reason from an sbatch failure's stderr."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for prefix in ("allocation failure: ", "sbatch: error: Batch job submission failed: "):
        for ln in reversed(lines):
            if ln.startswith(prefix):
                return ln[len(prefix) :]
    # one error may span lines ("... DOS line breaks (\\r\\n)" / "instead of expected ...")
    errors = [ln[len("sbatch: error: ") :] for ln in lines if ln.startswith("sbatch: error: ")]
    if errors:
        return " ".join(errors)
    said = [ln[len("sbatch: ") :] for ln in lines if ln.startswith("sbatch: ")]
    return said[-1] if said else (lines[-1] if lines else "")


# sbatch refusals that say the job itself is wrong, wherever it is sent (its script or its
# options), as opposed to wrong for this site (partition, account, node shapes, limits)
JOB_INVALID_MESSAGES = (
    "dos line breaks",
    "does not look like a batch script",
    "batch script is empty",
    "contains null character",
    "unrecognized option",
    "invalid option",
    "option requires an argument",
    "invalid job array specification",
    "argument list too long",
)
_INVALID_SPEC = re.compile(r"invalid --[a-z-]+ specification")


def is_job_invalid(stderr: str) -> bool:
    low = stderr.lower()
    return any(s in low for s in JOB_INVALID_MESSAGES) or bool(_INVALID_SPEC.search(low))


def parse_sbatch_parsable(stdout: str) -> str:
    """`sbatch --parsable`: 'JOBID' or 'JOBID;CLUSTER' -> 'JOBID'."""
    for line in stdout.splitlines():
        head = line.strip().split(";", 1)[0]
        if head.isdigit():
            return head
    raise SlurmError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
