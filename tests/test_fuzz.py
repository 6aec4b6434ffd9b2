"""Malformed input everywhere: thousands of bad requests to every RPC of a real metaschedd
process (over its real Unix socket and TCP port), and bad arguments to every msub and
metasched-admin command.

The contract: the daemon never crashes (same pid, still answers), every refused request gets
a gRPC status with a one-line, non-empty message and a code that names the problem
(INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED; never UNKNOWN or INTERNAL, which mean an unhandled exception), the
database passes PRAGMA integrity_check afterwards and holds exactly the jobs that were
acknowledged. The CLIs answer bad arguments with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metasched import auth
from metasched.cli import admin as admin_cli
from metasched.cli import msub as msub_cli
from metasched.lab.federation import free_port, wait_for
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

SITE_TOKEN = "fuzz-site-token-0123456789abcdef"
OK_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)

SCHEDULER = {
    "SubmitJob": (pb.SubmitJobRequest, "uu"),
    "Plan": (pb.PlanRequest, "uu"),
    "GetJob": (pb.GetJobRequest, "uu"),
    "ListJobs": (pb.ListJobsRequest, "uu"),
    "CancelJob": (pb.CancelJobRequest, "uu"),
    "WatchJob": (pb.WatchJobRequest, "us"),
    "ListSites": (pb.ListSitesRequest, "uu"),
    "CancelJobs": (pb.CancelJobsRequest, "uu"),
    "HoldJobs": (pb.HoldJobsRequest, "uu"),
    "ReadOutput": (pb.ReadOutputRequest, "uu"),
}
ADMIN = {
    "CreateToken": (pb.CreateTokenRequest, "uu"),
    "ListTokens": (pb.ListTokensRequest, "uu"),
    "RevokeToken": (pb.RevokeTokenRequest, "uu"),
    "SetSiteState": (pb.SetSiteStateRequest, "uu"),
    "Backup": (pb.BackupRequest, "us"),
}


@dataclass
class Daemon:
    root: Path
    proc: subprocess.Popen[bytes]
    socket: str
    tcp: str
    channel: grpc.Channel
    acked: set[int] = field(default_factory=set)
    calls: int = 0
    _md: tuple[tuple[str, str], ...] = ()
    _md_at: float = 0.0
    user_md: tuple[tuple[str, str], ...] = ()

    @property
    def root_md(self) -> tuple[tuple[str, str], ...]:
        if time.monotonic() - self._md_at > 30:
            self._md = auth.client_metadata(f"unix:{self.socket}")
            self._md_at = time.monotonic()
        return self._md

    def raw(self, service: str, method: str, kind: str) -> Any:
        path = f"/metasched.v1.{service}/{method}"
        ident = lambda b: b  # noqa: E731
        if kind == "uu":
            return self.channel.unary_unary(path, ident, ident)
        if kind == "us":
            return self.channel.unary_stream(path, ident, ident)
        return self.channel.stream_stream(path, ident, ident)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="msz-", dir="/tmp"))
    root.chmod(0o755)
    sock = str(root / "d.sock")
    port = free_port()
    cfg = root / "metaschedd.toml"
    cfg.write_text(
        f"""[daemon]
state_dir = "{root / "state"}"
listen = "127.0.0.1:{port}"
socket = "{sock}"
placement_interval = 0.2
submit_rate = 0
max_request_bytes = 65536
log_level = "warning"

[sites.hpc]
token_sha256 = "{auth.sha256_hex(SITE_TOKEN)}"

[sites.gpu]
token_sha256 = "{auth.sha256_hex(SITE_TOKEN + "x")}"
"""
    )
    log = open(root / "metaschedd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasched.daemon.main", "-c", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    d = Daemon(root, proc, sock, f"127.0.0.1:{port}", grpc.insecure_channel(f"unix:{sock}"))

    def up() -> bool:
        try:
            pb_grpc.SchedulerStub(d.channel).ListSites(
                pb.ListSitesRequest(), metadata=d.root_md, timeout=2
            )
            return True
        except (grpc.RpcError, auth.Unreachable, auth.AuthError):
            d._md_at = 0.0
            return False

    try:
        wait_for(up, 20, "metaschedd to answer", root / "metaschedd.log")
        made = pb_grpc.AdminStub(d.channel).CreateToken(
            pb.CreateTokenRequest(user="fuzzuser", ttl_seconds=3600), metadata=d.root_md, timeout=10
        )
        d.user_md = (("authorization", f"Bearer {made.token}"),)
        yield d
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def check_status(e: grpc.RpcError, what: str) -> None:
    code, details = e.code(), e.details() or ""
    assert code in OK_CODES, f"{what}: {code} {details!r}"
    assert details.strip(), f"{what}: {code} without a message"
    assert len(details.strip().splitlines()) == 1, f"{what}: message is not one line: {details!r}"


def call(d: Daemon, fn: Any, request: Any, md: Any, what: str, stream: bool = False) -> Any:
    """Call; on error check the status. Returns the answer (None when refused)."""
    d.calls += 1
    try:
        if stream:
            out = []
            for m in fn(request, metadata=md, timeout=5):
                out.append(m)
                if len(out) >= 3:
                    break
            return out
        return fn(request, metadata=md, timeout=10)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and stream:
            return []  # a watch of a live job: it simply has not ended
        check_status(e, what)
        return None


# ---------------------------------------------------------------- strategies

weird_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "",
            " ",
            "\n",
            "\x00",
            "a\nb",
            "../../etc/passwd",
            "hpc",
            "gpu",
            "HPC",
            "fp64",
            "bf16",
            "int8",
            "gpu:a100:2",
            "x" * 5000,
            "é" * 100,
            "🙂",
            "-1",
            "1e9",
            "nan",
            "*",
            "retired",
            "online",
            "draining",
            "%s%n",
        ]
    ),
)
big_int = st.one_of(
    st.integers(0, 5),
    st.integers(0, 2**32 - 1),
    st.sampled_from([2**31 - 1, 2**31, 2**32 - 1, 10**6, 100_001]),
)
big_u64 = st.one_of(
    st.integers(0, 10),
    st.integers(0, 2**64 - 1),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1]),
)
# sbatch options, well-formed or not, for #SBATCH lines and sbatch_options
sbatch_words = st.one_of(
    st.sampled_from(
        [
            "-N 2",
            "--ntasks-per-node=4",
            "--array=1-5",
            "-H",
            "--mem=0",
            "--mem-per-cpu=1G",
            "-t UNLIMITED",
            "--gpus=a100:2",
            "--gpu=1",
            "--mail-type=END",
            "--export=NONE",
            "-D rel",
            "--uid=0",
            "'unmatched",
            "\u2013N 2",
            "--signal=B:USR1@60",
            "--comment=metasched:0a0a0a0a:1:1",
            "hetjob",
        ]
    ),
    weird_text,
)
scripts = st.one_of(
    st.sampled_from(["", "#!", "#!/bin/sh\n", "true\n", "#!/bin/sh\x00\n", "\n\n#!/bin/sh"]),
    st.lists(sbatch_words, max_size=4).map(
        lambda ws: "#!/bin/sh\n" + "".join(f"#SBATCH {w}\n" for w in ws) + "true\n"
    ),
    st.just("#!/bin/sh\n#PBS -N x\ntrue\n"),
    st.text(max_size=200).map(lambda s: "#!/bin/sh\n" + s),
    st.text(max_size=100),
    st.just("#!/bin/sh\n" + "x" * 70_000),
)


array_texts = st.sampled_from(
    ["1-3", "0-4000000", "1-100000%0", "5-1", "1-10:0", "1,1,1", "0-15:4%2", "1-2%99999999999"]
)
dependency_texts = st.sampled_from(
    ["afterok:1", "afterok:1:2?afterany:3", "singleton", "after:1+5", "aftercorr:1",
     "afterok:1_[1-3]", "afterok:99999999999999999999", "afterok:1,afterany:2?x", "1:2"]
)  # fmt: skip
job_names = st.one_of(
    weird_text,
    st.sampled_from(["1", "1_1", "1_[1-3]", "1_[0-4000000]", "0", "18446744073709551615"]),
)


@st.composite
def job_specs(draw: st.DrawFn) -> pb.JobSpec:
    s = pb.JobSpec()
    s.script = draw(scripts)
    for name in (
        "name",
        "precision",
        "gpu_type",
        "partition",
        "account",
        "workdir",
        "output",
        "error",
        "qos",
        "constraint",
        "exclude_nodes",
        "exclusive",
        "comment",
        "other_gres",
        "export_mode",
        "submit_dir",
        "submit_key",
    ):
        if draw(st.booleans()):
            setattr(s, name, draw(weird_text))
    for name in (
        "nodes",
        "max_nodes",
        "ntasks",
        "ntasks_per_node",
        "cpus_per_task",
        "gpus_per_node",
        "gpus",
        "gpus_per_task",
        "cpus_per_gpu",
        "time_limit_minutes",
    ):
        if draw(st.booleans()):
            setattr(s, name, draw(big_int))
    for name in ("mem_per_node_mb", "mem_per_cpu_mb", "mem_per_gpu_mb"):
        if draw(st.booleans()):
            setattr(s, name, draw(st.integers(0, 2**63 - 1)))
    for name in ("mem_whole_node", "time_unlimited", "ignore_pbs"):
        setattr(s, name, draw(st.booleans()))
    if draw(st.booleans()):
        s.script_args.extend(draw(st.lists(weird_text, max_size=3)))
    if draw(st.booleans()):
        s.sbatch_options.extend(draw(st.lists(sbatch_words, max_size=3)))
    if draw(st.booleans()):
        s.sites.extend(draw(st.lists(weird_text, max_size=3)))
    if draw(st.booleans()):
        s.exclude_sites.extend(draw(st.lists(weird_text, max_size=3)))
    if draw(st.booleans()):
        s.environment.update(draw(st.dictionaries(weird_text, weird_text, max_size=3)))
    if draw(st.booleans()):
        s.array = draw(st.one_of(weird_text, array_texts))
    if draw(st.booleans()):
        s.dependency = draw(st.one_of(weird_text, dependency_texts))
    if draw(st.booleans()):
        s.begin_time = draw(st.floats(allow_nan=True, allow_infinity=True))
    s.hold = draw(st.booleans())
    s.keep_invalid_dependency = draw(st.booleans())
    if draw(st.booleans()):  # an app's run (what msub app run sends), or a forged one
        s.app = draw(weird_text)
        s.app_version = draw(weird_text)
        s.app_params.update(draw(st.dictionaries(weird_text, weird_text, max_size=3)))
        if draw(st.booleans()):
            s.script = ""
    if draw(st.booleans()):
        s.app_recipes.add(name=draw(weird_text), command=draw(weird_text))
    return s


def _spec_fields() -> set[str]:
    return {f.name for f in pb.JobSpec.DESCRIPTOR.fields}


def test_the_spec_strategy_covers_every_field() -> None:
    covered = {
        "script",
        "name",
        "precision",
        "gpu_type",
        "partition",
        "account",
        "workdir",
        "output",
        "error",
        "nodes",
        "ntasks",
        "cpus_per_task",
        "gpus_per_node",
        "time_limit_minutes",
        "mem_per_node_mb",
        "sites",
        "exclude_sites",
        "environment",
        "array",
        "dependency",
        "begin_time",
        "hold",
        "keep_invalid_dependency",
        "qos",
        "constraint",
        "exclude_nodes",
        "exclusive",
        "comment",
        "other_gres",
        "export_mode",
        "submit_dir",
        "submit_key",
        "max_nodes",
        "ntasks_per_node",
        "gpus",
        "gpus_per_task",
        "cpus_per_gpu",
        "mem_per_cpu_mb",
        "mem_per_gpu_mb",
        "mem_whole_node",
        "time_unlimited",
        "ignore_pbs",
        "script_args",
        "sbatch_options",
        "app",
        "app_version",
        "app_params",
        "app_recipes",
    }
    assert _spec_fields() <= covered, _spec_fields() - covered


credentials = st.one_of(
    st.just(()),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(
        lambda t: (("authorization", t),)
    ),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80).map(
        lambda t: (("authorization", f"Bearer {t}"),)
    ),
    st.sampled_from(
        [
            (("authorization", "Bearer msl1:root:0:99999999999:00"),),
            (("authorization", "Bearer msl1:root:0:1:" + "0" * 64),),
            (("authorization", "Bearer msl1::::"),),
            (("authorization", "Bearer mst1_"),),
            (("authorization", "Bearer mst1_000000000000_x"),),
            (("authorization", "Bearer mst1_zzzzzzzzzzzz_" + "y" * 500),),
            (("authorization", "Basic cm9vdDpyb290"),),
            (("authorization", "Bearer"),),
            (("x-metasched-user", "root"),),
        ]
    ),
)


# ---------------------------------------------------------------- RPCs: bytes on the wire


@FUZZ
@given(data=st.binary(max_size=300), which=st.sampled_from(sorted(SCHEDULER) + sorted(ADMIN)))
def test_garbage_bytes_to_every_unary_rpc(daemon: Daemon, data: bytes, which: str) -> None:
    service = "Scheduler" if which in SCHEDULER else "Admin"
    _cls, kind = (SCHEDULER | ADMIN)[which]
    md = daemon.root_md if data[:1] != b"\x01" else daemon.user_md
    fn = daemon.raw(service, which, kind)
    call(daemon, fn, data, md, f"{which}({data!r})", stream=kind == "us")


@FUZZ
@given(messages=st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_garbage_bytes_on_the_agent_stream(daemon: Daemon, messages: list[bytes]) -> None:
    fn = daemon.raw("AgentService", "Connect", "ss")
    daemon.calls += 1
    try:
        for _ in fn(iter(messages), timeout=5):
            pass
    except grpc.RpcError as e:
        check_status(e, f"Connect({messages!r})")


# ---------------------------------------------------------------- RPCs: well-formed, wrong


@FUZZ
@given(spec=job_specs(), as_user=st.booleans(), no_wait=st.booleans())
def test_submit_and_plan_with_fuzzed_specs(
    daemon: Daemon, spec: pb.JobSpec, as_user: bool, no_wait: bool
) -> None:
    stub = pb_grpc.SchedulerStub(daemon.channel)
    md = daemon.user_md if as_user else daemon.root_md
    call(daemon, stub.Plan, pb.PlanRequest(spec=spec), md, f"Plan({spec})")
    resp = call(
        daemon,
        stub.SubmitJob,
        pb.SubmitJobRequest(spec=spec, no_wait=True),
        md,
        f"SubmitJob({spec})",
    )
    if resp is not None:
        assert resp.job_id > 0
        daemon.acked.add(int(resp.job_id))


@FUZZ
@given(
    job_id=big_u64,
    as_user=st.booleans(),
    states=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3),
    limit=st.integers(0, 2**32 - 1),
    flags=st.tuples(st.booleans(), st.booleans()),
)
def test_job_rpcs_with_fuzzed_ids_and_filters(
    daemon: Daemon,
    job_id: int,
    as_user: bool,
    states: list[int],
    limit: int,
    flags: tuple[bool, bool],
) -> None:
    stub = pb_grpc.SchedulerStub(daemon.channel)
    md = daemon.user_md if as_user else daemon.root_md
    if daemon.acked and job_id < 10:  # sometimes a job that exists
        job_id = sorted(daemon.acked)[job_id % len(daemon.acked)]
    call(daemon, stub.GetJob, pb.GetJobRequest(job_id=job_id), md, f"GetJob({job_id})")
    call(daemon, stub.CancelJob, pb.CancelJobRequest(job_id=job_id), md, f"CancelJob({job_id})")
    call(
        daemon,
        stub.WatchJob,
        pb.WatchJobRequest(job_id=job_id),
        md,
        f"WatchJob({job_id})",
        stream=True,
    )
    req = pb.ListJobsRequest(all_users=flags[0], include_final=flags[1], limit=limit)
    req.states.extend(states)
    call(daemon, stub.ListJobs, req, md, f"ListJobs({req})")
    call(daemon, stub.ListSites, pb.ListSitesRequest(), md, "ListSites")


@FUZZ
@given(names=st.lists(job_names, max_size=4), as_user=st.booleans(), flags=st.booleans())
def test_array_and_output_rpcs_with_fuzzed_names(
    daemon: Daemon, names: list[str], as_user: bool, flags: bool
) -> None:
    stub = pb_grpc.SchedulerStub(daemon.channel)
    md = daemon.user_md if as_user else daemon.root_md
    call(daemon, stub.HoldJobs, pb.HoldJobsRequest(jobs=names, release=flags), md, f"Hold({names})")
    call(daemon, stub.CancelJobs, pb.CancelJobsRequest(jobs=names), md, f"CancelJobs({names})")
    for name in names[:1]:
        req = pb.ReadOutputRequest(job=name, stderr=flags, offset=2**64 - 1, max_bytes=2**32 - 1)
        call(daemon, stub.ReadOutput, req, md, f"ReadOutput({name})")


@FUZZ
@given(
    md=credentials,
    which=st.sampled_from(sorted(SCHEDULER) + sorted(ADMIN)),
    tcp=st.booleans(),
)
def test_every_rpc_refuses_bad_credentials(
    daemon: Daemon, md: tuple[tuple[str, str], ...], which: str, tcp: bool
) -> None:
    cls, kind = (SCHEDULER | ADMIN)[which]
    service = "Scheduler" if which in SCHEDULER else "Admin"
    channel = grpc.insecure_channel(daemon.tcp) if tcp else daemon.channel
    path = f"/metasched.v1.{service}/{which}"
    request = cls()
    if which in ("SubmitJob", "Plan"):
        request.spec.script = "#!/bin/sh\ntrue\n"
    fn = (
        channel.unary_stream(path, cls.SerializeToString, lambda b: b)
        if kind == "us"
        else channel.unary_unary(path, cls.SerializeToString, lambda b: b)
    )
    daemon.calls += 1
    try:
        if kind == "us":
            list(fn(request, metadata=md, timeout=10))
        else:
            fn(request, metadata=md, timeout=10)
    except grpc.RpcError as e:
        check_status(e, f"{which} with {md!r}")
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (which, md, e.details())
    else:
        raise AssertionError(f"{which} accepted {md!r}")
    finally:
        if tcp:
            channel.close()


@FUZZ
@given(
    user=weird_text,
    ttl=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0])),
    note=weird_text,
    token_id=weird_text,
    site=weird_text,
    state=weird_text,
    as_user=st.booleans(),
)
def test_admin_rpcs_with_fuzzed_arguments(
    daemon: Daemon,
    user: str,
    ttl: float,
    note: str,
    token_id: str,
    site: str,
    state: str,
    as_user: bool,
) -> None:
    stub = pb_grpc.AdminStub(daemon.channel)
    md = daemon.user_md if as_user else daemon.root_md
    req = pb.CreateTokenRequest(user=user, ttl_seconds=ttl, note=note)
    made = call(daemon, stub.CreateToken, req, md, f"CreateToken({req})")
    if made is not None:
        assert not as_user
        call(daemon, stub.RevokeToken, pb.RevokeTokenRequest(id=made.info.id), md, "revoke")
    call(daemon, stub.ListTokens, pb.ListTokensRequest(user=user), md, f"ListTokens({user!r})")
    call(
        daemon,
        stub.RevokeToken,
        pb.RevokeTokenRequest(id=token_id),
        md,
        f"RevokeToken({token_id!r})",
    )
    if state in ("retired",):  # retiring is legitimate; keep the sites usable for others
        state = "draining"
    ssr = pb.SetSiteStateRequest(site=site, state=state)
    r = call(daemon, stub.SetSiteState, ssr, md, f"SetSiteState({ssr})")
    if r is not None and site in ("hpc", "gpu"):
        call(
            daemon,
            stub.SetSiteState,
            pb.SetSiteStateRequest(site=site, state="online"),
            md,
            "resume",
        )


# ---------------------------------------------------------------- the agents' stream

report_jobs = st.builds(
    pb.SlurmJobReport,
    slurm_job_id=weird_text,
    state=st.sampled_from(["", "PENDING", "RUNNING", "COMPLETED", "FAILED", "NODE_FAIL", "BOGUS"]),
    job_id=big_u64,
    attempt=st.integers(0, 2**32 - 1),
    federation=st.sampled_from(["", "0123456789ab", "zz"]),
    cpus=st.integers(0, 2**32 - 1),
    nodes=st.integers(0, 2**32 - 1),
    start_time=st.floats(allow_nan=True, allow_infinity=True),
    end_time=st.floats(allow_nan=True, allow_infinity=True),
    time_limit_minutes=st.integers(0, 2**32 - 1),
    user=weird_text,
    partition=weird_text,
)
agent_messages = st.one_of(
    st.builds(
        lambda site, token: pb.AgentMessage(hello=pb.Hello(site=site, token=token)),
        weird_text,
        weird_text,
    ),
    st.builds(
        lambda jobs: pb.AgentMessage(report=pb.SiteReport(slurm_reachable=True, jobs=jobs)),
        st.lists(report_jobs, max_size=3),
    ),
    st.builds(
        lambda j, a, sid, err: pb.AgentMessage(
            submit_result=pb.SubmitResult(job_id=j, attempt=a, slurm_job_id=sid, error=err)
        ),
        big_u64,
        st.integers(0, 2**32 - 1),
        weird_text,
        weird_text,
    ),
    st.builds(
        lambda j, a, done: pb.AgentMessage(
            cancel_result=pb.CancelResult(job_id=j, attempt=a, done=done)
        ),
        big_u64,
        st.integers(0, 2**32 - 1),
        st.booleans(),
    ),
    st.builds(
        lambda j, a, sj: pb.AgentMessage(
            job_update=pb.JobUpdate(job_id=j, attempt=a, job=sj, final=True)
        ),
        big_u64,
        st.integers(0, 2**32 - 1),
        report_jobs,
    ),
    st.just(pb.AgentMessage()),
)


@FUZZ
@given(
    first=agent_messages,
    rest=st.lists(agent_messages, max_size=4),
    authenticated=st.booleans(),
)
def test_agent_streams_malformed_or_unauthenticated(
    daemon: Daemon, first: pb.AgentMessage, rest: list[pb.AgentMessage], authenticated: bool
) -> None:
    """Over the agents' TCP port: Hello first (right or wrong), then anything at all. A stream
    with a valid Hello may send nonsense: it must not take the daemon down."""
    if authenticated:
        first = pb.AgentMessage(hello=pb.Hello(site="hpc", token=SITE_TOKEN))
    with grpc.insecure_channel(daemon.tcp) as ch:
        stub = pb_grpc.AgentServiceStub(ch)
        outbox: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        for m in [first, *rest]:
            outbox.put(m)
        outbox.put(None)

        def requests() -> Iterator[pb.AgentMessage]:
            while (m := outbox.get()) is not None:
                yield m

        daemon.calls += 1
        try:
            stream = stub.Connect(requests(), timeout=5)
            for _ in stream:
                pass
        except grpc.RpcError as e:
            if authenticated and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return  # an accepted agent's stream stays open: fine
            check_status(e, f"Connect({first}, {rest})")
            if not authenticated and first.WhichOneof("body") != "hello":
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            elif not authenticated:
                assert e.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ), (first, e.details())


# ---------------------------------------------------------------- the CLIs, in process

MSUB_WORDS = [
    *msub_cli.COMMANDS,
    "--json",
    "--all",
    "--finished",
    "-N",
    "-n",
    "-c",
    "--mem",
    "--gres",
    "--gpus-per-node",
    "-t",
    "--time",
    "-p",
    "-J",
    "--export",
    "--precision",
    "--site",
    "--exclude-site",
    "-D",
    "-o",
    "-A",
    "--daemon",
    "0",
    "-1",
    "999999999999",
    "1:00:00",
    "gpu:x:0",
    "fp65",
    "A=1,B",
    "empty.sh",
    "nobang.sh",
    "binary.sh",
    "missing.sh",
    "sbatchbad.sh",
    "unix:/nonexistent.sock",
    "127.0.0.1:1",
    "::::",
    "",
]
ADMIN_WORDS = [
    "token",
    "create",
    "list",
    "revoke",
    "site",
    "drain",
    "resume",
    "retire",
    "backup",
    "--expires",
    "--note",
    "--user",
    "--revoked",
    "--yes",
    "--force",
    "--json",
    "--daemon",
    "hpc",
    "nosuchsite",
    "0d",
    "never",
    "-5h",
    "bad user",
    "000000000000",
    "unix:/nonexistent.sock",
    "",
]
free_words = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    max_size=12,
)


@pytest.fixture(scope="module")
def cli_dir(daemon: Daemon) -> Iterator[Path]:
    d = daemon.root / "cli"
    d.mkdir()
    (d / "empty.sh").write_text("")
    (d / "nobang.sh").write_text("sleep 1\n")
    (d / "binary.sh").write_bytes(b"#!/bin/sh\n\x00\x01")
    (d / "sbatchbad.sh").write_text("#!/bin/sh\n#SBATCH --time='1\ntrue\n")
    yield d


def run_in_process(main: Any, argv: list[str], prog: str) -> tuple[int, str]:
    err = io.StringIO()
    # stdout with a .buffer, as a real one has (msub output writes the job's bytes there)
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:  # only --help may exit this way
            rc = int(e.code or 0)
    text = err.getvalue()
    if rc != 0:
        lines = [ln for ln in text.splitlines() if ln.strip() and "warning:" not in ln]
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), (argv, rc, text)
    return rc, text


_cwd_lock = threading.Lock()


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(MSUB_WORDS), free_words), max_size=7))
def test_msub_argument_fuzz(
    daemon: Daemon, cli_dir: Path, argv: list[str], monkeypatch_env: None
) -> None:
    if "watch" in argv:  # watch follows a live job until it ends: give it one that cannot exist
        argv = [a if a.isdigit() is False else str(10**12 + int(a[:6] or 0)) for a in argv]
    if any(a in ("-h", "--help") for a in argv):
        return
    rc, text = run_in_process(msub_cli.main, argv, "msub")
    assert rc in (0, 1, 2), (argv, rc, text)
    daemon.calls += 1


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(ADMIN_WORDS), free_words), max_size=6))
def test_admin_argument_fuzz(
    daemon: Daemon, cli_dir: Path, argv: list[str], monkeypatch_env: None
) -> None:
    if any(a in ("-h", "--help") for a in argv):
        return
    if "retire" in argv:
        argv = [a for a in argv if a != "--yes"]
    rc, text = run_in_process(admin_cli.main, argv, "metasched-admin")
    assert rc in (0, 1, 2), (argv, rc, text)
    if rc == 0 and argv[:2] == ["site", "drain"]:
        admin_cli.main(["site", "resume", argv[2]])
    daemon.calls += 1


@pytest.fixture(scope="module")
def monkeypatch_env(daemon: Daemon, cli_dir: Path) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setenv("METASCHED_DAEMON", f"unix:{daemon.socket}")
    mp.delenv("METASCHED_TOKEN", raising=False)
    mp.delenv("METASCHED_TOKEN_FILE", raising=False)
    mp.chdir(cli_dir)
    yield None
    mp.undo()


# ---------------------------------------------------------------- the CLIs, real processes

SUBPROCESS_CASES = [
    ["msub"],
    ["msub", "missing.sh"],
    ["msub", "empty.sh"],
    ["msub", "nobang.sh"],
    ["msub", "binary.sh"],
    ["msub", "sbatchbad.sh"],
    ["msub", "-N", "0", "x.sh"],
    ["msub", "-t", "forever", "x.sh"],
    ["msub", "--mem", "lots", "x.sh"],
    ["msub", "--gres", "fpga:1", "x.sh"],
    ["msub", "--precision", "fp65", "nobang.sh"],
    ["msub", "show"],
    ["msub", "show", "x"],
    ["msub", "show", "99999999999"],
    ["msub", "cancel", "-3"],
    ["msub", "cancel", "18446744073709551616"],
    ["msub", "watch", "123456789012"],
    ["msub", "status", "--bogus"],
    ["msub", "sites", "extra"],
    ["msub", "plan"],
    ["msub", "--daemon", "unix:/nonexistent.sock", "status"],
    ["msub", "--daemon", "127.0.0.1:1", "sites"],
    ["metasched-admin"],
    ["metasched-admin", "token"],
    ["metasched-admin", "token", "create"],
    ["metasched-admin", "token", "create", "bad user"],
    ["metasched-admin", "token", "create", "x", "--expires", "-5h"],
    ["metasched-admin", "token", "revoke", "nope"],
    ["metasched-admin", "site", "explode", "hpc"],
    ["metasched-admin", "site", "drain", "nosuchsite"],
    ["metasched-admin", "site", "retire", "hpc"],
    ["metasched-admin", "backup"],
    ["metasched-admin", "backup", "empty.sh"],
    ["metasched-admin", "--daemon", "unix:/nonexistent.sock", "token", "list"],
]


def test_cli_processes_answer_bad_input_with_one_line_and_non_zero_exit(
    daemon: Daemon, cli_dir: Path
) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("METASCHED_TOKEN", "METASCHED_TOKEN_FILE")
    }
    env["METASCHED_DAEMON"] = f"unix:{daemon.socket}"
    user_env = {**env, "METASCHED_TOKEN": dict(daemon.user_md)["authorization"].split()[1]}
    cases = []
    rounds = int(os.environ.get("FUZZ_PROCESS_ROUNDS", "6"))
    for r in range(rounds):
        for case in SUBPROCESS_CASES:
            cases.append((case, user_env if r % 2 else env))
    # a non-admin's admin commands are refused too
    cases += [(["metasched-admin", "token", "list"], user_env)] * 5

    def run(case: tuple[list[str], dict[str, str]]) -> tuple[list[str], int, str]:
        argv, e = case
        mod = "metasched.cli.msub" if argv[0] == "msub" else "metasched.cli.admin"
        p = subprocess.run(
            [sys.executable, "-m", mod, *argv[1:]],
            capture_output=True,
            text=True,
            env=e,
            cwd=cli_dir,
            timeout=60,
            stdin=subprocess.DEVNULL,  # msub without a script reads one there, as sbatch does
        )
        return argv, p.returncode, p.stderr

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run, cases))
    for argv, rc, err in results:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc != 0, (argv, err)
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith(f"{argv[0]}: "), (argv, err)
        assert "Traceback" not in err
    daemon.calls += len(results)
    print(f"\n{len(results)} CLI processes, each one line and a non-zero exit")


# ---------------------------------------------------------------- afterwards


def test_the_daemon_survived_and_the_database_is_sound(daemon: Daemon) -> None:
    """Runs last (file order): same process, still answering, a sound database that holds
    exactly the acknowledged jobs."""
    assert daemon.proc.poll() is None, "metaschedd died"
    stub = pb_grpc.SchedulerStub(daemon.channel)
    stub.ListSites(pb.ListSitesRequest(), metadata=daemon.root_md, timeout=10)
    r = stub.ListJobs(
        pb.ListJobsRequest(all_users=True, include_final=True, limit=100_000),
        metadata=daemon.root_md,
        timeout=30,
    )
    listed = {j.id for j in r.jobs}
    db = sqlite3.connect(f"file:{daemon.root / 'state' / 'metasched.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        in_db = {int(row[0]) for row in db.execute("SELECT id FROM jobs")}
    finally:
        db.close()
    assert in_db == daemon.acked, (sorted(in_db - daemon.acked), sorted(daemon.acked - in_db))
    assert listed == in_db
    log = (daemon.root / "metaschedd.log").read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:5000]
    print(f"\n{daemon.calls} fuzzed calls; {len(in_db)} jobs acknowledged and in the database")
