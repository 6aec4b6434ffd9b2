"""The agent side of issue 9, tried the way a hostile user would, on the real lab with real
Linux users (made here, prefix msa, removed at teardown). docs/security.md's threat model
names each test. Every test here failed on the code before the fix (see the commit notes).

- the job's environment never reaches a root process (a preload library built here writes a
  marker when a process loads it, with the process's uid in the marker's name; a spy sbatch
  records the uid, environment and arguments every sbatch runs with);
- a script's #SBATCH lines read files with the user's rights only;
- option values stay one value; environments too big for exec are refused at submit;
- a tag written by another user is never taken for ours: not adopted, not cancelled, logged.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import need_slurm
from tests_support import bare_agent

from metasched import tags
from metasched.agent.site_agent import SiteAgent
from metasched.agent.slurm.base import SubmitRequest
from metasched.agent.slurm.cli import CliBackend
from metasched.lab import SiteProfile, SlurmLab
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm
S = JobState

VICTIM, FORGER = "msavictim", "msaforger"
SITE = SiteProfile("adva", nodes=2, cpus=4, sockets=1, cores_per_socket=4, mem_mb=8000)

SPY = """#!/bin/bash
# records who runs sbatch, with what environment and arguments, then runs the real one
f=$(mktemp @DIR@/call.XXXXXX)
id -u > "$f.uid"
env -0 > "$f.env"
printf '%s\\0' "$@" > "$f.argv"
exec @REAL@ "$@"
"""

PRELOAD_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/loaded-uid%d-pid%d", MARKS, (int)geteuid(), (int)getpid());
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}
"""


# ------------------------------------------------------------------ fixtures
def _drop_user(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], check=False, capture_output=True)
    subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[str, str]]:
    need_slurm()
    for u in (VICTIM, FORGER):
        try:
            pwd.getpwnam(u)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/bin/sh", u], check=True)
    yield VICTIM, FORGER
    for u in (VICTIM, FORGER):
        _drop_user(u)


class Lab:
    """The module's federation (one site), the spy's directory, the preload library."""

    def __init__(self, root: Path, fed: Federation) -> None:
        self.root = root
        self.fed = fed
        self.spy = root / "spy"
        self.marks = root / "marks"
        self.lib = root / "bin" / "preload.so"

    @property
    def lab(self) -> SlurmLab:
        return self.fed.lab

    def workdir(self) -> Path:
        d = Path(tempfile.mkdtemp(prefix="w", dir=self.root))
        d.chmod(0o777)
        return d

    def sbatch_calls(self) -> list[tuple[int, dict[str, str], list[str]]]:
        """(uid, environment, argv) of every sbatch run so far."""
        out = []
        for f in sorted(self.spy.glob("call.*.argv")):
            base = str(f)[: -len(".argv")]
            env = dict(
                e.split("=", 1) for e in Path(base + ".env").read_text().split("\0") if "=" in e
            )
            argv = f.read_text().split("\0")[:-1]
            out.append((int(Path(base + ".uid").read_text()), env, argv))
        return out

    def sbatch_calls_for(self, job_id: int) -> list[tuple[int, dict[str, str], list[str]]]:
        """The sbatch runs for one global job (found by the tag in its --comment)."""
        return [
            c
            for c in self.sbatch_calls()
            if any(
                a.startswith("--comment=metasched:") and a.split(":")[2] == str(job_id)
                for a in c[2]
            )
        ]

    def root_loaded_preload(self) -> list[str]:
        return sorted(p.name for p in self.marks.glob("loaded-uid0-*"))


@pytest.fixture(scope="module")
def adv(users: tuple[str, str]) -> Iterator[Lab]:
    root = Path(tempfile.mkdtemp(prefix="msa-", dir="/tmp"))
    root.chmod(0o755)
    for sub, mode in (("spy", 0o777), ("marks", 0o777), ("bin", 0o755)):
        (root / sub).mkdir()
        (root / sub).chmod(mode)
    real = shutil.which("sbatch")
    assert real
    spy = root / "bin" / "sbatch"
    spy.write_text(SPY.replace("@DIR@", str(root / "spy")).replace("@REAL@", real))
    spy.chmod(0o755)
    src = root / "preload.c"
    src.write_text(PRELOAD_C)
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            f'-DMARKS="{root / "marks"}"',
            "-o",
            str(root / "bin" / "preload.so"),
            str(src),
        ],
        check=True,
    )
    lab = SlurmLab(root / "l", [SITE], overrides={"MessageTimeout": "3"})
    with pytest.MonkeyPatch.context() as mp:
        # the spy goes first on the PATH the agent inherits (it finds sbatch there)
        mp.setenv("PATH", f"{root / 'bin'}:{os.environ['PATH']}")
        with lab, Federation(lab, root / "f") as fed:
            yield Lab(root, fed)
    shutil.rmtree(root, ignore_errors=True)


def wait_state(fed: Federation, job_id: int, states: set[JobState], timeout: float = 60) -> pb.Job:
    return fed.wait_job(job_id, states, timeout)


def make_agent(adv: Lab, state_dir: Path, backend: CliBackend | None = None) -> SiteAgent:
    """An agent for the module's site, driven by hand (no daemon): what an older daemon, or
    a lying sbatch, would make it do."""
    agent = bare_agent(SITE.name, str(adv.lab.slurm_conf(SITE.name)), state_dir)
    if backend is not None:
        agent.backend = backend
    return agent


def submit_as(fed: Federation, user: str, spec: pb.JobSpec) -> int:
    resp = fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec, no_wait=True), user=user)
    return int(resp.job_id)


def refused(fed: Federation, user: str, spec: pb.JobSpec) -> str:
    """Submit spec as user; it must be refused INVALID_ARGUMENT. Returns the message."""
    with pytest.raises(grpc.RpcError) as err:
        submit_as(fed, user, spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    message = str(err.value.details())
    assert "\n" not in message
    return message


def slurm_jobs(lab: SlurmLab) -> dict[str, tuple[str, str, str]]:
    """Slurm id -> (user, state, comment) of every job the site shows."""
    return {
        j.job_id: (j.user, j.state, j.comment)
        for j in CliBackend(str(lab.slurm_conf(SITE.name))).jobs()
    }


def sbatch_as(lab: SlurmLab, user: str, script: str, *args: str) -> str:
    """What a local user at the site can do by hand: their own sbatch."""
    proc = subprocess.run(
        [
            shutil.which("runuser") or "/usr/sbin/runuser",
            "-u",
            user,
            "--",
            "sbatch",
            "--parsable",
            "--chdir=/tmp",
            "--output=/dev/null",  # not /tmp/slurm-<id>.out: ids restart with every lab
            *args,
        ],
        input=script,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SLURM_CONF": str(lab.slurm_conf(SITE.name))},
        check=True,
        cwd="/",
    )
    return proc.stdout.strip().split(";")[0]


def agent_log(fed: Federation) -> list[dict[str, object]]:
    out = []
    for line in fed.log(f"agent-{SITE.name}").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------ 1. the environment
@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "GLIBC_TUNABLES",
        "SLURM_CONF",
        "SBATCH_UID",
        "SRUN_CPUS_PER_TASK",
        "SPANK_X",
        "BASH_ENV",
        "METASCHED_JOB_ID",
    ],
)
def test_loader_and_slurm_variables_are_refused_at_submit(adv: Lab, name: str) -> None:
    """msub --export NAME=... is refused with one line naming the variable; no root process
    ever loads the user's library."""
    work = adv.workdir()
    script = work / "job.sh"
    script.write_text("#!/bin/sh\nid -u\n")
    script.chmod(0o644)
    value = str(adv.lib) if name.startswith("LD_") else "/tmp/x"
    out = adv.fed.msub(
        "--json",
        "-D",
        str(work),
        "--export",
        f"{name}={value}",
        str(script),
        check=False,
        user=FORGER,
    )
    if out.returncode == 0:  # accepted (the hole): whatever runs it, it has run by its end
        job_id = int(json.loads(out.stdout)["job_id"])
        wait_state(adv.fed, job_id, {S.COMPLETED, S.FAILED, S.LOST, S.CANCELLED})
    assert adv.root_loaded_preload() == []
    assert out.returncode != 0
    assert name in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_job_variables_reach_the_job_only(adv: Lab) -> None:
    """Variables a job may have (PYTHONPATH, PATH, odd values) reach the job, whole, and
    never the environment or arguments of sbatch, which runs as the user, not root."""
    work = adv.workdir()
    multi = "a,b=c\nLD_PRELOAD=" + str(adv.lib) + "\n--uid=0"
    env = {
        "PYTHONPATH": "/tmp/msa-evil-python",
        "PYTHONSTARTUP": "/tmp/msa-evil-start.py",
        "MS_MULTI": multi,
        "MS_SECRET": "msa-secret-value-41",
    }
    job_id = submit_as(
        adv.fed,
        FORGER,
        pb.JobSpec(
            script='#!/bin/sh\nid -un > uid.out\nprintf "%s" "$MS_MULTI" > multi.out\n'
            'printf "%s|%s" "$PYTHONPATH" "${LD_PRELOAD:-unset}" > py.out\n',
            workdir=str(work),
            output=str(work / "job.out"),
            environment=env,
        ),
    )
    job = wait_state(adv.fed, job_id, {S.COMPLETED, S.FAILED})
    assert JobState.from_pb(job.state) == S.COMPLETED, job.reason
    assert (work / "uid.out").read_text().strip() == FORGER
    assert (work / "multi.out").read_text() == multi
    assert (work / "py.out").read_text() == "/tmp/msa-evil-python|unset"
    calls = adv.sbatch_calls_for(job_id)
    assert calls, "the spy saw no sbatch"
    forger_uid = pwd.getpwnam(FORGER).pw_uid
    for uid, sb_env, argv in calls:
        assert uid == forger_uid, f"sbatch ran as uid {uid}"
        assert not set(env) & set(sb_env), sorted(set(env) & set(sb_env))
        assert not any(v in " ".join(sb_env.values()) for v in env.values())
        assert not any("msa-secret-value-41" in a for a in argv)
    assert adv.root_loaded_preload() == []


def test_option_values_stay_one_value(adv: Lab) -> None:
    """A value that looks like an option, or holds commas and spaces, is that option's
    value: the output file is literally named so, the job runs in the odd directory."""
    base = adv.workdir()
    work = base / "a dir, with --uid=0"
    work.mkdir()
    work.chmod(0o777)
    job_id = submit_as(
        adv.fed,
        FORGER,
        pb.JobSpec(
            script="#!/bin/sh\npwd\nid -un\n",
            workdir=str(work),
            output="--uid=0",
            error="-e,--export=ALL",
        ),
    )
    job = wait_state(adv.fed, job_id, {S.COMPLETED, S.FAILED})
    assert JobState.from_pb(job.state) == S.COMPLETED, job.reason
    assert (work / "--uid=0").read_text().splitlines() == [str(work), FORGER]
    assert (work / "-e,--export=ALL").exists()
    ((_uid, _env, argv),) = adv.sbatch_calls_for(job_id)
    assert "--output=--uid=0" in argv and "--error=-e,--export=ALL" in argv
    assert f"--chdir={work}" in argv
    assert "--uid=0" not in argv


def test_nul_in_a_value_is_refused(adv: Lab) -> None:
    """A NUL would end one export-file entry and start another (LD_PRELOAD=...)."""
    message = refused(
        adv.fed,
        FORGER,
        pb.JobSpec(script="#!/bin/sh\ntrue\n", environment={"A": f"x\0LD_PRELOAD={adv.lib}"}),
    )
    assert "NUL" in message and "A" in message


def test_sbatch_directives_read_files_as_the_user(adv: Lab) -> None:
    """#SBATCH --export-file=<a root-only file> in the script: sbatch ran as root and put
    the file's NAME=value into the job. Now the daemon reads #SBATCH lines and refuses the
    option at submit (it names a file on the submit host); behind that, the agent neutralises
    the script's own lines and sbatch runs as the user (test_sbatch_e2e's
    test_the_site_reads_no_line_of_the_script)."""
    secret_dir = Path(tempfile.mkdtemp(prefix="msa-root-"))
    secret = secret_dir / "secret.env"
    secret.write_text("MSA_ROOT_SECRET=s3cr3t-7731\n")
    secret.chmod(0o600)
    work = adv.workdir()
    try:
        why = refused(
            adv.fed,
            FORGER,
            pb.JobSpec(
                script=f"#!/bin/sh\n#SBATCH --export-file={secret}\n/usr/bin/env\n",
                workdir=str(work),
                output=str(work / "env.out"),
                environment={"MS_X": "1"},
            ),
        )
        assert "--export-file" in why
        assert not (work / "env.out").exists()
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)


# ------------------------------------------------------------------ 2. sizes (item 7)
def test_oversized_environments_are_refused_at_submit(adv: Lab) -> None:
    big = refused(
        adv.fed, FORGER, pb.JobSpec(script="#!/bin/sh\ntrue\n", environment={"BIG": "x" * 150_000})
    )
    assert "BIG" in big and "limit" in big
    many = {f"V{i}": "y" * 100_000 for i in range(12)}
    total = refused(adv.fed, FORGER, pb.JobSpec(script="#!/bin/sh\ntrue\n", environment=many))
    assert "environment is" in total and "limit" in total


def test_a_large_environment_within_limits_runs_whole(adv: Lab) -> None:
    """100 KB in one variable, 600 KB in all: more than a pipe holds, less than exec takes."""
    work = adv.workdir()
    env = {f"V{i}": str(i) * 100_000 for i in range(6)}
    job_id = submit_as(
        adv.fed,
        FORGER,
        pb.JobSpec(
            script='#!/bin/sh\nprintf "%s" "$V5" | wc -c > n.out\n',
            workdir=str(work),
            environment=env,
        ),
    )
    job = wait_state(adv.fed, job_id, {S.COMPLETED, S.FAILED})
    assert JobState.from_pb(job.state) == S.COMPLETED, job.reason
    assert (work / "n.out").read_text().strip() == "100000"


def test_the_agent_refuses_what_an_older_daemon_let_through(adv: Lab, tmp_path: Path) -> None:
    """An agent checks the environment itself (jobs queued before the daemon checked):
    refused as wrong anywhere, nothing reaches Slurm, nothing loads the library."""
    agent = make_agent(adv, tmp_path)
    fed_id = "a9e7" * 3
    for n, env in enumerate(
        ({"LD_PRELOAD": str(adv.lib)}, {"BIG": "z" * 200_000}, {"A": "1\0LD_PRELOAD=x"}), 1
    ):
        tag = f"metasched:{fed_id}:{n}:1"
        res = agent.submit(
            pb.SubmitCommand(
                job_id=n,
                attempt=1,
                user=FORGER,
                tag=tag,
                spec=pb.JobSpec(script="#!/bin/sh\ntrue\n", environment=env),
            )
        )
        assert res.error and res.permanent and res.invalid_anywhere, res
        assert not res.slurm_job_id
        assert not [c for c in slurm_jobs(adv.lab).values() if tag in c[2]]
    agent.journal.close()
    assert adv.root_loaded_preload() == []


def test_a_forged_sbatch_answer_never_cancels_another_users_job(adv: Lab, tmp_path: Path) -> None:
    """sbatch runs as the user, who may ptrace it (this kernel allows it) and make it print
    another user's job id. The agent (root) then holds a wrong id for the tag; cancelling the
    job must still never touch the other user's job."""
    lab = adv.lab
    victim_sid = sbatch_as(lab, VICTIM, "#!/bin/sh\nsleep 60\n")

    class Lying(CliBackend):
        def submit(self, req: SubmitRequest) -> str:
            super().submit(req)
            return victim_sid

    agent = make_agent(adv, tmp_path, Lying(str(lab.slurm_conf(SITE.name))))
    tag = f"metasched:{'f0' * 6}:7:1"
    res = agent.submit(
        pb.SubmitCommand(
            job_id=7,
            attempt=1,
            user=FORGER,
            tag=tag,
            spec=pb.JobSpec(script="#!/bin/sh\nsleep 60\n", workdir="/tmp", output="/dev/null"),
        )
    )
    assert res.slurm_job_id == victim_sid  # the lie got through to the answer...
    agent.cancel(pb.CancelCommand(job_id=7, attempt=1, slurm_job_id=victim_sid, tag=tag))
    shown = slurm_jobs(lab)
    assert shown[victim_sid][1] in ("RUNNING", "PENDING"), shown[victim_sid]  # ...not to scancel
    agent.journal.close()
    for sid, (_user, _state, comment) in shown.items():
        if sid == victim_sid or tag in comment:
            lab.scancel(SITE.name, sid)


def test_a_job_sbatch_refuses_anywhere_fails_at_once(
    users: tuple[str, str], make_federation: Callable[..., Federation]
) -> None:
    """A script every sbatch refuses (DOS line breaks) fails with sbatch's reason after one
    site said so, instead of being sent to each site in turn."""
    sites = [
        SiteProfile(n, nodes=1, cpus=4, sockets=1, cores_per_socket=4, mem_mb=8000)
        for n in ("dosa", "dosb")
    ]
    fed = make_federation(sites)
    job_id = submit_as(fed, VICTIM, pb.JobSpec(script="#!/bin/sh\r\ntrue\r\n", workdir="/tmp"))
    job = wait_state(fed, job_id, {S.FAILED, S.COMPLETED, S.LOST}, 60)
    assert JobState.from_pb(job.state) == S.FAILED
    assert "DOS line breaks" in job.reason and job.attempt == 1, job.reason
    refusals = [
        line
        for site in sites
        for line in fed.log(f"agent-{site.name}").read_text().splitlines()
        if "submit_refused" in line
    ]
    assert len(refusals) == 1, refusals


# ------------------------------------------------------------------ 3. forged tags (item 2)
def test_forged_tags_are_neither_adopted_nor_cancelled(adv: Lab) -> None:
    fed, lab = adv.fed, adv.lab
    work = adv.workdir()
    victim = submit_as(
        fed,
        VICTIM,
        pb.JobSpec(
            script="#!/bin/sh\nsleep 12\necho victim-1 > v1.out\n",
            workdir=str(work),
            output="/dev/null",
        ),
    )
    job = wait_state(fed, victim, {S.RUNNING})
    real_sid = job.slurm_job_id
    user, _state, comment = slurm_jobs(lab)[real_sid]
    assert user == VICTIM
    plain = str(tags.parse(comment))
    fed_id = plain.split(":")[1]
    # the forger: a copy of the victim's whole comment (its MAC too), the plain tag, and
    # tags planted for the next jobs of the federation, all on jobs of their own
    copied = sbatch_as(
        lab, FORGER, "#!/bin/sh\nsleep 2\nexit 7\n", f"--comment={comment}", f"--wckey={comment}"
    )
    plain_copy = sbatch_as(
        lab, FORGER, "#!/bin/sh\nsleep 3\nexit 7\n", f"--comment={plain}", f"--wckey={plain}"
    )
    planted = [
        sbatch_as(
            lab,
            FORGER,
            "#!/bin/sh\nsleep 40\n",
            f"--comment=metasched:{fed_id}:{victim + k}:1",
            f"--wckey=metasched:{fed_id}:{victim + k}:1",
        )
        for k in (1, 2)
    ]
    # the victim's next job: its tag is already planted at the site
    nxt = submit_as(
        fed,
        VICTIM,
        pb.JobSpec(
            script="#!/bin/sh\necho victim-2 > v2.out\n", workdir=str(work), output="/dev/null"
        ),
    )
    assert nxt == victim + 1
    first = wait_state(fed, victim, {S.COMPLETED, S.FAILED, S.CANCELLED, S.LOST}, 90)
    second = wait_state(fed, nxt, {S.COMPLETED, S.FAILED, S.CANCELLED, S.LOST}, 90)
    # the victim's jobs: tracked as themselves, ran, completed
    assert (JobState.from_pb(first.state), first.exit_code) == (S.COMPLETED, 0), first.reason
    assert first.slurm_job_id == real_sid
    assert (work / "v1.out").read_text().strip() == "victim-1"
    assert JobState.from_pb(second.state) == S.COMPLETED, second.reason
    assert (work / "v2.out").read_text().strip() == "victim-2"
    assert second.slurm_job_id not in planted
    shown = slurm_jobs(lab)
    assert shown[second.slurm_job_id][0] == VICTIM
    # the forger's jobs: not cancelled by us, ended (or run on) by themselves
    assert shown[copied][1] == "FAILED" and shown[plain_copy][1] == "FAILED"
    assert all(shown[p][1] in ("RUNNING", "PENDING", "COMPLETED") for p in planted), [
        shown[p] for p in planted
    ]
    # and each was logged, once
    forged = [e for e in agent_log(fed) if e.get("event") == "forged_tag_ignored"]
    for sid in (copied, plain_copy, *planted):
        hits = [e for e in forged if e.get("slurm_job_id") == sid]
        assert len(hits) == 1, (sid, hits)
        assert hits[0]["user"] == FORGER and str(hits[0]["tag"]).startswith("metasched:")
    for sid in planted:
        lab.scancel(SITE.name, sid)


# ------------------------------------------------------------------ 4. what Slurm lost (item 10)
def test_drained_nodes_are_not_free(adv: Lab) -> None:
    """msub sites counts as free only what Slurm could start a job on now."""
    lab, fed = adv.lab, adv.fed
    env = lab.env(SITE.name) | {"PATH": "/usr/bin:/bin"}
    drained = f"{SITE.name}-n2"
    backend = CliBackend(str(lab.slurm_conf(SITE.name)))
    subprocess.run(
        ["scontrol", "update", f"nodename={drained}", "state=drain", "reason=msa-test"],
        env=env,
        check=True,
    )
    try:

        def shown() -> int:
            sites = json.loads(fed.msub("sites", "--json").stdout)
            return int(next(s for s in sites if s["name"] == SITE.name).get("free_cpus", 0))

        def truth() -> tuple[int, int]:
            """(free CPUs on usable nodes, free CPUs on the drained node), as Slurm says."""
            nodes = {n.name: n for n in backend.nodes()}
            assert not nodes[drained].usable
            usable = sum(n.cpus - n.alloc_cpus for n in nodes.values() if n.usable)
            return usable, nodes[drained].cpus - nodes[drained].alloc_cpus

        wait_for(lambda: shown() == truth()[0], 30, "msub sites to show what is free")
        assert truth()[1] > 0  # the drained node had idle CPUs to be counted wrongly
    finally:
        subprocess.run(
            ["scontrol", "update", f"nodename={drained}", "state=resume"], env=env, check=True
        )


def test_a_job_slurm_lost_in_a_controller_crash_is_lost_not_failed(
    users: tuple[str, str], make_federation: Callable[..., Federation]
) -> None:
    """slurmctld SIGKILLed while jobs run: those submitted after its last state save are
    gone from its memory when it comes back, and the completion log never hears of them,
    though they ran and exited 0. metasched must say LOST (with what it saw), not FAILED."""
    site = SiteProfile("lost", nodes=2, cpus=4, sockets=1, cores_per_socket=4, mem_mb=8000)
    fed = make_federation([site])
    lab = fed.lab
    work = Path(tempfile.mkdtemp(prefix="msa-w", dir="/tmp"))
    work.chmod(0o777)
    try:
        ids = [
            submit_as(
                fed,
                VICTIM,
                pb.JobSpec(
                    script=f"#!/bin/sh\nsleep {6 + i}\necho done > out{i}\n",
                    workdir=str(work),
                    output="/dev/null",
                ),
            )
            for i in range(4)
        ]
        for i in ids:
            wait_state(fed, i, {S.RUNNING}, 60)
        pid = lab._ctld(site.name).pid()
        assert pid
        os.kill(pid, 9)
        wait_for(lambda: len(list(work.glob("out*"))) == 4, 60, "the jobs to finish")
        lab.start_site(site.name)
        finals = {S.COMPLETED, S.FAILED, S.LOST, S.CANCELLED, S.NODE_FAIL, S.TIMEOUT}
        jobs = [wait_state(fed, i, finals, 120) for i in ids]
        states = [JobState.from_pb(j.state) for j in jobs]
        assert S.FAILED not in states, [(j.id, j.reason) for j in jobs]
        assert set(states) <= {S.COMPLETED, S.LOST}
        # slurmctld saves its state at most every 5 s: jobs submitted within seconds of the
        # kill are among those it forgets
        assert S.LOST in states, [(j.id, j.reason) for j in jobs]
        for j in jobs:
            if JobState.from_pb(j.state) == S.LOST:
                # the evidence: no record, or Slurm holding it after it had started
                assert site.name in j.reason and "unknown" in j.reason, j.reason
                assert "no record" in j.reason or "held" in j.reason, j.reason
                assert j.started_at  # what was seen stays: it had started
    finally:
        shutil.rmtree(work, ignore_errors=True)
