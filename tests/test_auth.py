"""Who may do what: the authorization matrix, over real gRPC on real sockets.

metaschedd runs in-process with mutual TLS on its agents' port (certificates from a throwaway
CA), a TLS users' port for remote tokens, and its Unix socket plus ident socket for local
users. Agents are fake (they send a hand-made SiteReport) so that every refusal can be
provoked exactly; the real-agent, real-Slurm path is covered by the federation tests, whose
harness uses the same mutual TLS and local identity.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import queue
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from metasched import auth
from metasched.daemon import config as daemon_config
from metasched.daemon.main import Daemon
from metasched.lab.pki import CertFiles, LabCA
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

S = JobState
HPC_TOKEN = "hpc-secret-token-0123456789"
SCRIPT = "#!/bin/sh\ntrue\n"
LOCAL_USER = "msuser1"  # a real local account for the runuser tests (created if missing)


def spec(**kw: Any) -> pb.JobSpec:
    s = pb.JobSpec(script=SCRIPT, time_limit_minutes=5)
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(s, k).extend(v)
        elif isinstance(v, dict):
            getattr(s, k).update(v)
        else:
            setattr(s, k, v)
    return s


def code_of(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details() or ""


# ---------------------------------------------------------------- a daemon and fake agents


@dataclass
class Env:
    root: Path
    ca: LabCA
    daemon: Daemon
    agents_addr: str
    users_addr: str
    socket: str
    sites: dict[str, CertFiles] = field(default_factory=dict)
    _agents: list[FakeAgent] = field(default_factory=list)

    # -- channels

    def mtls(self, cert: CertFiles | None, ca: Path | None = None, addr: str = "") -> grpc.Channel:
        root = (ca or self.ca.cert).read_bytes()
        creds = (
            grpc.ssl_channel_credentials(root, cert.key.read_bytes(), cert.cert.read_bytes())
            if cert
            else grpc.ssl_channel_credentials(root)
        )
        return grpc.secure_channel(addr or self.agents_addr, creds)

    def unix(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.socket}")

    def users_tls(self) -> grpc.Channel:
        return grpc.secure_channel(
            self.users_addr, grpc.ssl_channel_credentials(self.ca.cert.read_bytes())
        )

    # -- users

    def local_md(self) -> tuple[tuple[str, str], ...]:
        return auth.client_metadata(f"unix:{self.socket}")

    def token_for(self, user: str, ttl: float = 3600) -> str:
        r = pb_grpc.AdminStub(self.unix()).CreateToken(
            pb.CreateTokenRequest(user=user, ttl_seconds=ttl), metadata=self.local_md()
        )
        return str(r.token)

    def as_user(self, user: str) -> Callable[..., Any]:
        """call(method, request): Scheduler RPCs as `user` (a user token, over TLS)."""
        md = (("authorization", f"Bearer {self.token_for(user)}"),)
        stub = pb_grpc.SchedulerStub(self.users_tls())

        def call(method: str, request: Any) -> Any:
            return getattr(stub, method)(request, metadata=md, timeout=10)

        return call

    def as_root(self, method: str, request: Any) -> Any:
        stub = pb_grpc.SchedulerStub(self.unix())
        return getattr(stub, method)(request, metadata=self.local_md(), timeout=10)

    def admin(self, method: str, request: Any, md: Any = None) -> Any:
        stub = pb_grpc.AdminStub(self.unix())
        return getattr(stub, method)(request, metadata=md or self.local_md(), timeout=10)

    def job(self, job_id: int) -> pb.Job:
        job: pb.Job = self.as_root("GetJob", pb.GetJobRequest(job_id=job_id))
        return job

    # -- agents

    def agent(
        self, site: str, cert: CertFiles | None = None, token: str = "", **kw: Any
    ) -> FakeAgent:
        a = FakeAgent(self.mtls(cert if cert else self.sites[site]), site, token, **kw)
        self._agents.append(a)
        return a

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what}")

    def state(self, job_id: int) -> JobState:
        return JobState.from_pb(self.job(job_id).state)


class FakeAgent:
    """One agent stream: says Hello, reports a small site, records what the daemon sends."""

    def __init__(
        self,
        channel: grpc.Channel,
        site: str,
        token: str = "",
        mapped: list[str] | None = None,
        report: bool = True,
    ) -> None:
        self.site = site
        self._out: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        self.inbox: queue.Queue[pb.DaemonMessage] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._out.put(pb.AgentMessage(hello=pb.Hello(site=site, token=token, agent_version="t")))
        if report:
            self._out.put(pb.AgentMessage(report=site_report(mapped)))
        self.call = pb_grpc.AgentServiceStub(channel).Connect(self._requests())
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator[pb.AgentMessage]:
        while True:
            m = self._out.get()
            if m is None:
                return
            yield m

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.inbox.put(msg)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def send(self, msg: pb.AgentMessage) -> None:
        self._out.put(msg)

    def refused(self) -> tuple[grpc.StatusCode, str]:
        assert self.ended.wait(10), "the daemon neither refused nor ended the stream"
        assert self.error is not None, f"not refused; got {list(self.inbox.queue)}"
        return self.error.code(), self.error.details() or ""

    def expect(self, kind: str, timeout: float = 10) -> pb.DaemonMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.inbox.get(timeout=0.1)
            except queue.Empty:
                if self.ended.is_set():
                    raise AssertionError(f"stream ended: {self.error}") from None
                continue
            if msg.WhichOneof("body") == kind:
                return msg
        raise TimeoutError(f"no {kind} for {self.site}")

    def close(self) -> None:
        self._out.put(None)
        with contextlib.suppress(Exception):
            self.call.cancel()  # type: ignore[no-untyped-call]


def site_report(mapped: list[str] | None) -> pb.SiteReport:
    rep = pb.SiteReport(slurm_reachable=True, slurm_version="22.05", backend="fake")
    rep.partitions.append(
        pb.Partition(
            name="batch",
            nodes=2,
            cpus_per_node=8,
            mem_per_node_mb=16000,
            is_default=True,
            precisions=[pb.Precision(name="fp64"), pb.Precision(name="fp32")],
        )
    )
    for i in range(2):
        rep.nodes.append(
            pb.NodeReport(name=f"n{i}", partitions=["batch"], state="idle", cpus=8, mem_mb=16000)
        )
    if mapped is None:
        rep.maps_all_users = True
    else:
        rep.mapped_users.extend(mapped)
    return rep


@pytest.fixture
def make_env() -> Iterator[Callable[..., Env]]:
    made: list[tuple[Env, Path]] = []

    def make(tls: bool = True, **daemon_keys: Any) -> Env:
        root = Path(tempfile.mkdtemp(prefix="msa-", dir="/tmp"))  # short: Unix socket paths
        root.chmod(0o755)
        ca = LabCA(root / "tls")
        server = ca.server()
        sites = {"hpc": ca.site("hpc"), "gpu": ca.site("gpu")}
        d: dict[str, Any] = {
            "state_dir": str(root / "state"),
            "listen": "127.0.0.1:0",
            "users_listen": "127.0.0.1:0",
            "socket": str(root / "d.sock"),
            "placement_interval": 0.2,
            "admins": ["root"],
            "log_level": "warning",
            **daemon_keys,
        }
        if tls:
            d |= {"tls_cert": str(server.cert), "tls_key": str(server.key)}
            d["tls_client_ca"] = str(ca.cert)
        raw = {
            "daemon": d,
            # hpc: certificate and token; gpu: certificate alone
            "sites": {"hpc": {"token_sha256": auth.sha256_hex(HPC_TOKEN)}, "gpu": {}},
        }
        if not tls:
            raw["sites"] = {"hpc": {"token_sha256": auth.sha256_hex(HPC_TOKEN)}}
        daemon = Daemon(daemon_config.from_dict(raw))
        daemon.start()
        agents, users = daemon.addresses[0], daemon.addresses[1]
        env = Env(root, ca, daemon, agents, users, str(root / "d.sock"), sites)
        made.append((env, root))
        return env

    yield make
    for env, root in made:
        for a in env._agents:
            a.close()
        env.daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (the harness runs as root; other users through runuser)")


# ---------------------------------------------------------------- agents


def test_agent_with_its_own_site_certificate_is_welcomed(make_env: Callable[..., Env]) -> None:
    env = make_env()
    hpc = env.agent("hpc", token=HPC_TOKEN)
    gpu = env.agent("gpu")  # a site configured without a token: the certificate alone
    assert hpc.expect("welcome").welcome.federation == env.daemon.store.federation
    assert gpu.expect("welcome").welcome.federation
    env.wait(lambda: env.daemon.sites.ensure("gpu").online, "gpu online")


def test_agent_without_certificate_is_refused(make_env: Callable[..., Env]) -> None:
    env = make_env()
    # on the agents' port the TLS handshake itself refuses it: no gRPC status can be sent
    code, _ = FakeAgent(env.mtls(None), "hpc", HPC_TOKEN).refused()
    assert code == grpc.StatusCode.UNAVAILABLE
    # on the users' port (TLS without client certificates) the agent service refuses it
    code, msg = FakeAgent(env.mtls(None, addr=env.users_addr), "hpc", HPC_TOKEN).refused()
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "no client certificate" in msg
    # and over the local Unix socket, where there is no TLS at all
    code, msg = FakeAgent(env.unix(), "hpc", HPC_TOKEN).refused()
    assert code == grpc.StatusCode.UNAUTHENTICATED and "mutual TLS" in msg
    assert env.daemon.sites.ensure("hpc").link is None


def test_certificate_from_another_ca_is_refused(make_env: Callable[..., Env]) -> None:
    env = make_env()
    rogue = LabCA(env.root / "rogue", name="not the federation CA")
    code, _ = FakeAgent(env.mtls(rogue.site("hpc")), "hpc", HPC_TOKEN).refused()
    assert code == grpc.StatusCode.UNAVAILABLE  # handshake refused: the CA is not ours
    assert env.daemon.sites.ensure("hpc").link is None


def test_certificate_of_one_site_cannot_claim_another(make_env: Callable[..., Env]) -> None:
    env = make_env()
    code, msg = env.agent("gpu", cert=env.sites["hpc"], token=HPC_TOKEN).refused()
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate is for site 'hpc'; it may not speak for site 'gpu'" in msg
    # a certificate that names no site (CN only) speaks for none
    cn_only = env.ca.issue("cn-only", "hpc")
    code, msg = env.agent("hpc", cert=cn_only, token=HPC_TOKEN).refused()
    assert code == grpc.StatusCode.PERMISSION_DENIED and "metasched-site:<site>" in msg
    # a site the daemon does not know, even with a valid certificate for it
    code, msg = env.agent("rogue", cert=env.ca.site("rogue")).refused()
    assert code == grpc.StatusCode.PERMISSION_DENIED and "unknown site 'rogue'" in msg
    assert env.daemon.sites.ensure("gpu").link is None


def test_right_certificate_wrong_token_is_refused(make_env: Callable[..., Env]) -> None:
    env = make_env()
    code, msg = env.agent("hpc", token="not-the-token-of-hpc").refused()
    assert code == grpc.StatusCode.UNAUTHENTICATED and "wrong token for site 'hpc'" in msg


def test_token_mode_without_tls(make_env: Callable[..., Env]) -> None:
    env = make_env(tls=False)
    ch = grpc.insecure_channel(env.agents_addr)
    code, msg = FakeAgent(ch, "hpc", "guessed-token-0123456789").refused()
    assert code == grpc.StatusCode.UNAUTHENTICATED and "wrong token" in msg
    ok = FakeAgent(ch, "hpc", HPC_TOKEN)
    env._agents.append(ok)
    assert ok.expect("welcome").welcome.federation


def test_a_stream_speaks_only_for_its_own_site(make_env: Callable[..., Env]) -> None:
    env = make_env()
    hpc = env.agent("hpc", token=HPC_TOKEN)
    gpu = env.agent("gpu")
    env.wait(lambda: all(env.daemon.sites.ensure(s).online for s in ("hpc", "gpu")), "online")
    job_id = env.as_root("SubmitJob", pb.SubmitJobRequest(spec=spec(sites=["gpu"]))).job_id
    cmd = gpu.expect("submit").submit
    assert cmd.job_id == job_id
    # hpc's stream claims to have submitted gpu's job: ignored (and its Slurm job cancelled)
    hpc.send(
        pb.AgentMessage(
            submit_result=pb.SubmitResult(job_id=job_id, attempt=cmd.attempt, slurm_job_id="666")
        )
    )
    stray = hpc.expect("cancel").cancel
    assert (stray.job_id, stray.slurm_job_id) == (job_id, "666")
    assert env.state(job_id) == S.FORWARDING and env.job(job_id).slurm_job_id == ""
    # and reports a final state for it: ignored too
    upd = pb.JobUpdate(job_id=job_id, attempt=cmd.attempt, final=True, resolved_from="sacct")
    upd.job.CopyFrom(pb.SlurmJobReport(slurm_job_id="666", state="COMPLETED", job_id=job_id))
    hpc.send(pb.AgentMessage(job_update=upd))
    time.sleep(0.5)
    assert env.state(job_id) == S.FORWARDING
    gpu.send(
        pb.AgentMessage(
            submit_result=pb.SubmitResult(job_id=job_id, attempt=cmd.attempt, slurm_job_id="7")
        )
    )
    env.wait(lambda: env.state(job_id) == S.PENDING, "gpu's own answer to count")
    assert env.job(job_id).site == "gpu" and env.job(job_id).slurm_job_id == "7"


# ---------------------------------------------------------------- users


def test_no_credentials_or_a_claimed_name_is_refused(make_env: Callable[..., Env]) -> None:
    env = make_env()
    stub = pb_grpc.SchedulerStub(env.unix())
    for md in [(), (("x-metasched-user", "root"),), (("authorization", "Basic cm9vdA=="),)]:
        code, msg = code_of(functools.partial(stub.ListJobs, pb.ListJobsRequest(), metadata=md))
        assert code == grpc.StatusCode.UNAUTHENTICATED, md
    code, msg = code_of(lambda: stub.ListJobs(pb.ListJobsRequest()))
    assert "metasched-admin token create" in msg


def test_local_identity_comes_from_the_kernel(make_env: Callable[..., Env]) -> None:
    env = make_env()
    me = pwd.getpwuid(os.geteuid()).pw_name
    job_id = env.as_root("SubmitJob", pb.SubmitJobRequest(spec=spec())).job_id
    assert env.job(job_id).user == me
    # a local token is good only over the Unix socket: not over TCP, even with TLS
    stub = pb_grpc.SchedulerStub(env.users_tls())
    code, msg = code_of(lambda: stub.ListJobs(pb.ListJobsRequest(), metadata=env.local_md()))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "only valid over" in msg
    # a local token for another user cannot be made without the daemon's key
    forged = auth.LocalTokens().issue("alice", 1000)
    md = (("authorization", f"Bearer {forged}"),)
    code, msg = code_of(lambda: _list(env.unix(), md))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "not valid" in msg
    # ... nor by editing a real one
    real = dict(env.local_md())["authorization"].removeprefix("Bearer ")
    edited = real.replace(f":{me}:", ":alice:")
    code, _ = code_of(lambda: _list(env.unix(), (("authorization", f"Bearer {edited}"),)))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def _list(ch: grpc.Channel, md: Any) -> Any:
    return pb_grpc.SchedulerStub(ch).ListJobs(pb.ListJobsRequest(), metadata=md, timeout=10)


def test_msub_as_another_local_user(make_env: Callable[..., Env], tmp_path: Path) -> None:
    need_root()
    try:
        pwd.getpwnam(LOCAL_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", LOCAL_USER], check=True)
    env = make_env()
    env.agent("hpc", token=HPC_TOKEN)
    script = env.root / "job.sh"  # readable by the user (tmp_path is not)
    script.write_text(SCRIPT)
    script.chmod(0o644)
    envv = {**os.environ, "METASCHED_DAEMON": f"unix:{env.socket}"}
    envv.pop("METASCHED_TOKEN", None)

    def msub(*args: str, user: str = LOCAL_USER) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metasched.lab.asuser", user, "msub", *args],
            env=envv,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )

    out = msub("--json", "-t", "5", str(script))
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["job_id"]
    assert isinstance(job_id, int)  # a number, as docs/json.md says
    assert env.job(job_id).user == LOCAL_USER
    # the user sees it, but not root's jobs; and cannot list everybody's
    root_job = env.as_root("SubmitJob", pb.SubmitJobRequest(spec=spec())).job_id
    shown = msub("show", str(root_job))
    assert shown.returncode == 1 and f"job {root_job} is not yours" in shown.stderr
    listed = msub("list", "--all")
    assert listed.returncode == 1 and "only admins may list all users" in listed.stderr
    assert msub("show", str(job_id)).returncode == 0
    # no admin tool for them either
    adm = subprocess.run(
        [sys.executable, "-m", "metasched.lab.asuser", LOCAL_USER, "admin", "token", "list"],
        env=envv,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert adm.returncode == 1 and "only admins may list tokens" in adm.stderr


def test_another_users_job_is_out_of_reach(make_env: Callable[..., Env]) -> None:
    env = make_env()
    alice, bob = env.as_user("alice"), env.as_user("bob")
    job_id = alice("SubmitJob", pb.SubmitJobRequest(spec=spec())).job_id
    for method, req in [
        ("GetJob", pb.GetJobRequest(job_id=job_id)),
        ("CancelJob", pb.CancelJobRequest(job_id=job_id)),
    ]:
        code, msg = code_of(functools.partial(bob, method, req))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "is not yours" in msg
    code, _ = code_of(lambda: next(iter(bob("WatchJob", pb.WatchJobRequest(job_id=job_id)))))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, msg = code_of(lambda: bob("ListJobs", pb.ListJobsRequest(all_users=True)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert job_id not in [j.id for j in bob("ListJobs", pb.ListJobsRequest()).jobs]
    assert S.from_pb(alice("GetJob", pb.GetJobRequest(job_id=job_id)).state) == S.QUEUED
    # an admin can do what bob cannot
    assert env.as_root("GetJob", pb.GetJobRequest(job_id=job_id)).user == "alice"
    everyone = env.as_root("ListJobs", pb.ListJobsRequest(all_users=True)).jobs
    assert job_id in [j.id for j in everyone]
    env.as_root("CancelJob", pb.CancelJobRequest(job_id=job_id))
    assert env.state(job_id) == S.CANCELLED


def test_wrong_expired_and_revoked_tokens(make_env: Callable[..., Env]) -> None:
    env = make_env()
    stub = pb_grpc.SchedulerStub(env.users_tls())

    def with_token(token: str) -> Any:
        md = (("authorization", f"Bearer {token}"),)
        return stub.ListJobs(pb.ListJobsRequest(), metadata=md, timeout=10)

    good = env.token_for("carol")
    with_token(good)
    tid, secret = auth.split_remote_token(good)
    cases = {
        "wrong": (f"mst1_{tid}_{secret[:-2]}xx", "unknown or wrong token"),
        "unknown id": (f"mst1_{'0' * 12}_{secret}", "unknown or wrong token"),
        "garbage": ("mst1_nonsense", "malformed token"),
        "not ours": ("eyJhbGciOiJIUzI1NiJ9.e30.x", "not a metasched token"),
    }
    for name, (token, message) in cases.items():
        code, msg = code_of(functools.partial(with_token, token))
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
        assert message in msg, (name, msg)
    short = env.token_for("carol", ttl=1)
    with_token(short)
    time.sleep(1.2)
    code, msg = code_of(lambda: with_token(short))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "expired at" in msg
    env.admin("RevokeToken", pb.RevokeTokenRequest(id=tid))
    code, msg = code_of(lambda: with_token(good))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "was revoked" in msg
    # only the hash is stored: the database holds no usable token
    with sqlite3.connect(env.daemon.cfg.db_path) as db:
        stored = [r[0] for r in db.execute("SELECT secret_sha256 FROM user_tokens")]
    assert auth.sha256_hex(secret) in stored and secret not in stored


def test_unmapped_user_gets_a_clear_refusal(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.agent("hpc", token=HPC_TOKEN, mapped=["alice"])
    env.agent("gpu", mapped=["alice", "dave"])
    env.wait(lambda: all(env.daemon.sites.ensure(s).online for s in ("hpc", "gpu")), "online")
    carol = env.as_user("carol")
    code, msg = code_of(lambda: carol("SubmitJob", pb.SubmitJobRequest(spec=spec())))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert msg == (
        "user carol has no account at any site that could run this job "
        "(gpu: not mapped; hpc: not mapped)"
    )
    # dave is mapped at gpu only: an fp64 job pinned to hpc says so, one left free is taken
    dave = env.as_user("dave")
    code, msg = code_of(lambda: dave("SubmitJob", pb.SubmitJobRequest(spec=spec(sites=["hpc"]))))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "(gpu: not among the requested sites; hpc: not mapped)" in msg
    job_id = dave("SubmitJob", pb.SubmitJobRequest(spec=spec(precision="fp64"))).job_id
    env.wait(lambda: env.job(job_id).site == "gpu", "dave's job to go to gpu")


def test_limits_rate_queue_and_size(make_env: Callable[..., Env]) -> None:
    env = make_env(
        submit_rate=0.5,
        submit_burst=3,
        max_queued_per_user=4,
        max_request_bytes=64 * 1024,
        max_message_bytes=1 << 20,
    )
    erin = env.as_user("erin")
    for _ in range(3):
        erin("SubmitJob", pb.SubmitJobRequest(spec=spec()))
    code, msg = code_of(lambda: erin("SubmitJob", pb.SubmitJobRequest(spec=spec())))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "user erin submits too fast" in msg and "retry in 2 s" in msg
    time.sleep(2.1)
    erin("SubmitJob", pb.SubmitJobRequest(spec=spec()))  # the bucket refilled
    # the live-job limit, per user (others are not affected)
    time.sleep(2.1)
    code, msg = code_of(lambda: erin("SubmitJob", pb.SubmitJobRequest(spec=spec())))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "already has 4 jobs queued" in msg
    env.as_user("frank")("SubmitJob", pb.SubmitJobRequest(spec=spec()))
    # a request over max_request_bytes, and a message over gRPC's max_message_bytes
    big = spec(environment={f"V{i}": "x" * 200 for i in range(400)})
    code, msg = code_of(lambda: env.as_root("SubmitJob", pb.SubmitJobRequest(spec=big)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "the limit is 65536" in msg
    huge = spec(script="#!/bin/sh\n" + "#" * (2 << 20))
    code, msg = code_of(lambda: env.as_root("SubmitJob", pb.SubmitJobRequest(spec=huge)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in msg


# ---------------------------------------------------------------- admins


def test_admin_rpcs_are_for_admins_only(make_env: Callable[..., Env]) -> None:
    env = make_env()
    md = (("authorization", f"Bearer {env.token_for('mallory')}"),)
    stub = pb_grpc.AdminStub(env.users_tls())
    calls: list[Callable[[], Any]] = [
        lambda: stub.CreateToken(pb.CreateTokenRequest(user="root"), metadata=md),
        lambda: stub.ListTokens(pb.ListTokensRequest(), metadata=md),
        lambda: stub.RevokeToken(pb.RevokeTokenRequest(id="x"), metadata=md),
        lambda: stub.SetSiteState(pb.SetSiteStateRequest(site="hpc", state="retired"), metadata=md),
        lambda: next(iter(stub.Backup(pb.BackupRequest(), metadata=md))),
    ]
    for call in calls:
        code, msg = code_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "only admins may" in msg
    assert env.daemon.sites.ensure("hpc").admin_state == "online"
    # an admin with a user token may, from afar
    root_md = (("authorization", f"Bearer {env.token_for('root')}"),)
    assert stub.ListTokens(pb.ListTokensRequest(), metadata=root_md).tokens
    code, msg = code_of(
        lambda: stub.SetSiteState(pb.SetSiteStateRequest(site="x"), metadata=root_md)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_admin_tool_tokens_sites_backup(make_env: Callable[..., Env], tmp_path: Path) -> None:
    env = make_env()
    envv = {**os.environ, "METASCHED_DAEMON": f"unix:{env.socket}"}
    envv.pop("METASCHED_TOKEN", None)

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metasched.cli.admin", *args],
            env=envv,
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = admin("token", "create", "gina", "--expires", "1h", "--note", "laptop")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    tid, _ = auth.split_remote_token(token)
    listed = admin("token", "list")
    assert tid in listed.stdout and "gina" in listed.stdout and "laptop" in listed.stdout
    assert token not in listed.stdout
    gina = pb_grpc.SchedulerStub(env.users_tls())
    md = (("authorization", f"Bearer {token}"),)
    gina.ListJobs(pb.ListJobsRequest(), metadata=md)
    assert admin("token", "revoke", tid).returncode == 0
    code, _ = code_of(lambda: gina.ListJobs(pb.ListJobsRequest(), metadata=md))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    bad = admin("token", "create", "gina", "--expires", "soon")
    assert bad.returncode == 2 and "bad duration" in bad.stderr

    assert admin("site", "drain", "hpc").stdout.strip() == "site hpc is now draining"
    assert env.daemon.sites.ensure("hpc").state == "draining"
    assert admin("site", "resume", "hpc").returncode == 0
    assert env.daemon.sites.ensure("hpc").admin_state == "online"
    no = admin("site", "retire", "hpc")
    assert no.returncode == 2 and "--yes" in no.stderr
    unknown = admin("site", "drain", "atlantis")
    assert unknown.returncode == 1 and "unknown site 'atlantis'" in unknown.stderr

    # online backup while the daemon runs and takes jobs
    ids = [env.as_root("SubmitJob", pb.SubmitJobRequest(spec=spec())).job_id for _ in range(3)]
    dest = tmp_path / "copy.db"
    out = admin("backup", str(dest))
    assert out.returncode == 0, out.stderr
    assert "integrity check ok" in out.stdout
    assert dest.stat().st_mode & 0o077 == 0
    with sqlite3.connect(dest) as db:
        copied = {r[0] for r in db.execute("SELECT id FROM jobs")}
    assert set(ids) <= copied
    again = admin("backup", str(dest))
    assert again.returncode == 2 and "--force" in again.stderr


def test_retire_moves_jobs_that_never_started_elsewhere(make_env: Callable[..., Env]) -> None:
    env = make_env()
    hpc = env.agent("hpc", token=HPC_TOKEN)
    env.wait(lambda: env.daemon.sites.ensure("hpc").online, "hpc online")
    ids = [env.as_root("SubmitJob", pb.SubmitJobRequest(spec=spec())).job_id for _ in range(3)]
    cmds = {}
    for _ in ids:
        c = hpc.expect("submit").submit
        cmds[c.job_id] = c
    pending, running, forwarding = ids
    for jid, sid in ((pending, "11"), (running, "12")):
        r = pb.SubmitResult(job_id=jid, attempt=cmds[jid].attempt, slurm_job_id=sid)
        hpc.send(pb.AgentMessage(submit_result=r))
    env.wait(lambda: env.state(running) == S.PENDING, "confirmed")
    rep = site_report(None)
    rep.jobs.append(
        pb.SlurmJobReport(
            slurm_job_id="12",
            state="RUNNING",
            start_time=time.time(),
            job_id=running,
            attempt=cmds[running].attempt,
            federation=env.daemon.store.federation,
        )
    )
    hpc.send(pb.AgentMessage(report=rep))
    env.wait(lambda: env.state(running) == S.RUNNING, "running")
    assert env.state(forwarding) == S.FORWARDING

    r = env.admin("SetSiteState", pb.SetSiteStateRequest(site="hpc", state="retired"))
    assert sorted(r.requeued) == sorted(ids) and not r.ended
    for jid in ids:
        assert env.state(jid) == S.QUEUED  # no other site yet: they wait in the global queue
    details = [e.detail for e in env.job(running).events]
    assert "site hpc retired by an admin while running: retrying elsewhere" in details
    assert "site hpc retired by an admin before it started" in [
        e.detail for e in env.job(pending).events
    ]
    # the retired site is told to cancel whatever it may still have
    told = {hpc.expect("cancel").cancel.job_id for _ in ids}
    assert told == set(ids)
    # a new site takes them, with a new attempt (so the old one is a stray if it shows up)
    gpu = env.agent("gpu")
    moved = {gpu.expect("submit").submit.job_id for _ in ids}
    assert moved == set(ids)
    assert all(env.job(j).site == "gpu" and env.job(j).attempt == 2 for j in ids)
    sites = {s.name: s.state for s in env.as_root("ListSites", pb.ListSitesRequest()).sites}
    assert sites["hpc"] == "retired"
