"""The command-line backend: sbatch, squeue, sinfo, scancel, scontrol and sacct.

Works with any Slurm from 21.08 on; the version differences live in parse.py. Every command
runs with a fixed, small environment (see _base_env) plus SLURM_CONF, under a timeout, so
a hung slurmctld costs at most `timeout` seconds and an agent's own environment never leaks
into sbatch options (SBATCH_*) or into jobs.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from metasched.agent.slurm import parse
from metasched.agent.slurm.base import (
    Node,
    PartitionInfo,
    SlurmBackend,
    SlurmError,
    SlurmJob,
    SlurmUnavailable,
    SubmitRequest,
)

# scancel of a job that is gone is success: cancel() is idempotent
_ALREADY_GONE = ("invalid job id", "already completing or completed", "job has already finished")
# Variables sbatch must see to work; nothing else of the agent's environment reaches it.
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


class CliBackend(SlurmBackend):
    name = "cli"

    def __init__(
        self,
        slurm_conf: str | None = None,
        bin_dir: str = "",
        timeout: float = 30,
        finished_lookback_days: int = 30,
    ) -> None:
        self.slurm_conf = slurm_conf
        self.bin_dir = bin_dir
        self.timeout = timeout
        self.finished_lookback_days = finished_lookback_days
        self._config: dict[str, str] | None = None
        self._version = ""

    # ------------------------------------------------------------ running commands
    def _base_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        elif "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        return env

    def _exe(self, cmd: str) -> str:
        if self.bin_dir:
            return str(Path(self.bin_dir) / cmd)
        return shutil.which(cmd) or cmd

    def _run(
        self,
        cmd: str,
        args: Sequence[str],
        *,
        stdin: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self._exe(cmd), *args]
        env = self._base_env() | dict(extra_env or {})
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                cwd="/",  # never depend on (or leak) the agent's working directory
            )
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"{cmd} did not answer within {self.timeout:g}s") from None
        except OSError as e:
            raise SlurmUnavailable(f"cannot run {argv[0]}: {e}") from None
        if check and proc.returncode != 0:
            message = _one_line(proc.stderr) or f"{cmd} exited {proc.returncode}"
            if parse.is_unavailable(proc.stderr):
                raise SlurmUnavailable(f"{cmd}: {message}")
            raise SlurmError(f"{cmd}: {message}")
        return proc

    # ------------------------------------------------------------ site facts (cached)
    def config(self) -> dict[str, str]:
        """`scontrol show config`, read once: JobCompType/Loc, AccountingStorageType, ..."""
        if self._config is None:
            self._config = parse.parse_config_text(self._run("scontrol", ["show", "config"]).stdout)
        return self._config

    def has_slurmdbd(self) -> bool:
        return "slurmdbd" in self.config().get("AccountingStorageType", "")

    def version(self) -> str:
        if not self._version:
            out = self._run("sinfo", ["--version"]).stdout.split()
            self._version = out[-1] if out else ""
        return self._version

    # ------------------------------------------------------------ submit / cancel
    def sbatch_args(self, req: SubmitRequest) -> list[str]:
        """The sbatch options for req (the script goes on stdin)."""
        args = [
            "--parsable",
            f"--nodes={req.nodes}",
            f"--ntasks={req.ntasks}",
            f"--cpus-per-task={req.cpus_per_task}",
            f"--time={max(1, req.time_limit_minutes)}",
            f"--comment={req.tag}",
        ]
        if not self.has_slurmdbd():
            # jobcomp/filetxt (22.05) keeps no comment but does keep the WCKey: with the tag
            # there too, a job that left squeue can still be found by tag after a crash.
            args.append(f"--wckey={req.tag}")
        if req.name:
            args.append(f"--job-name={req.name}")
        if req.partition:
            args.append(f"--partition={req.partition}")
        if req.mem_per_node_mb:
            args.append(f"--mem={req.mem_per_node_mb}M")
        if req.gpus_per_node:
            gtype = f"{req.gpu_type}:" if req.gpu_type else ""
            args.append(f"--gres=gpu:{gtype}{req.gpus_per_node}")
        for flag, value in (
            # sbatch runs in "/" (see _run): without a workdir the job starts in its
            # user's home, as a login shell would, never in the agent's directory
            ("--chdir", req.workdir or _home(req.local_user or pwd.getpwuid(os.geteuid()).pw_name)),
            ("--output", req.output),
            ("--error", req.error),
            ("--account", req.account),
        ):
            if value:
                args.append(f"{flag}={value}")
        # Environment: names only. `--export=A,B` takes the values from sbatch's own
        # environment, which we build (see submit), so values may hold commas, '=' or
        # newlines; `--export=A=v,B=w` would split on them. NONE / names-only both make
        # Slurm start from the user's login environment (--get-user-env), never the agent's.
        names = sorted({*req.environment, *req.slurm_environment})
        args.append("--export=" + (",".join(names) or "NONE"))
        if req.local_user and os.geteuid() == 0:
            pw = _user(req.local_user)
            args += [f"--uid={pw.pw_name}", f"--gid={pw.pw_gid}"]
        return args

    def submit(self, req: SubmitRequest) -> str:
        if (
            req.local_user
            and os.geteuid() != 0
            and req.local_user != pwd.getpwuid(os.geteuid()).pw_name
        ):
            raise SlurmError(f"cannot submit as {req.local_user!r}: the agent is not root")
        proc = self._run(
            "sbatch",
            self.sbatch_args(req),
            stdin=req.script,
            extra_env=_job_env(req),
            check=False,
        )
        if proc.returncode != 0:
            message = parse.sbatch_error(proc.stderr) or f"sbatch exited {proc.returncode}"
            if parse.is_unavailable(proc.stderr):
                raise SlurmUnavailable(message)
            raise SlurmError(message)
        return parse.parse_sbatch_parsable(proc.stdout)

    def test_only(self, req: SubmitRequest) -> parse.TestOnly:
        """Slurm's will-run estimate for req. It takes slurmctld's job write lock and uses up
        a job id: call it per placement decision, not per job per poll."""
        args = [a for a in self.sbatch_args(req) if a != "--parsable"]
        proc = self._run(
            "sbatch",
            ["--test-only", *args],
            stdin=req.script,
            extra_env=_job_env(req),
            check=False,
        )
        if proc.returncode != 0 and parse.is_unavailable(proc.stderr):
            raise SlurmUnavailable(parse.sbatch_error(proc.stderr))
        return parse.parse_test_only(proc.stderr, proc.returncode)

    def cancel(self, job_id: str, only_pending: bool = False) -> None:
        # --state=PENDING: slurmctld itself skips the job if it has started meanwhile
        self._scancel([job_id], ["--state=PENDING"] if only_pending else [])

    def cancel_many(self, job_ids: list[str]) -> None:
        for at in range(0, len(job_ids), 1000):  # one scancel per thousand: argv stays short
            self._scancel(job_ids[at : at + 1000], [])

    def _scancel(self, job_ids: list[str], options: list[str]) -> None:
        for job_id in job_ids:
            if not job_id.isdigit():
                raise SlurmError(f"bad job id {job_id!r}")
        proc = self._run("scancel", [*options, *job_ids], check=False)
        # 22.05 exits 0 for unknown ids; older or other setups say so on stderr
        if proc.returncode != 0 and not any(s in proc.stderr.lower() for s in _ALREADY_GONE):
            message = _one_line(proc.stderr) or f"scancel exited {proc.returncode}"
            if parse.is_unavailable(proc.stderr):
                raise SlurmUnavailable(f"scancel: {message}")
            raise SlurmError(f"scancel: {message}")

    # ------------------------------------------------------------ what Slurm shows
    def jobs(self) -> list[SlurmJob]:
        # --states=all: 23.11+ otherwise hide finished jobs still kept (MinJobAge);
        # 22.05 ignores every filter with --json and always shows them.
        proc = self._run("squeue", ["--json", "--states=all"])
        try:
            return parse.parse_squeue_json(proc.stdout)
        except SlurmError as e:
            # 22.05 exits 0 with only {"errors": [...]} when slurmctld is unreachable
            raise SlurmUnavailable(str(e)) from None

    def nodes(self) -> list[Node]:
        # -N: one entry per node (23.11+ aggregate node groups without it)
        proc = self._run("sinfo", ["-N", "--json"])
        try:
            return parse.parse_sinfo_json(proc.stdout)
        except SlurmError as e:
            raise SlurmUnavailable(str(e)) from None

    def partitions(self) -> list[PartitionInfo]:
        # text, not JSON: 22.05's scontrol has no --json, and -o is stable across versions
        return parse.parse_partitions_text(
            self._run("scontrol", ["show", "partition", "-o"]).stdout
        )

    # ------------------------------------------------------------ jobs that left the queue
    def finished(self, job_ids: list[str], tags: list[str]) -> list[SlurmJob]:
        if not job_ids and not tags:
            return []
        if self.has_slurmdbd():
            records = self._sacct_json(job_ids, tags)
        elif "filetxt" in self.config().get("JobCompType", ""):
            records = self._sacct_jobcomp()
        else:
            return []  # no accounting and no completion log: nothing to resolve from
        ids, want_tags = set(job_ids), set(tags)
        best: dict[str, SlurmJob] = {}
        for job in records:
            if job.job_id in ids or (job.comment and job.comment in want_tags):
                # ids are reused after a state wipe: keep each id's latest record
                prev = best.get(job.job_id)
                if prev is None or job.end_time >= prev.end_time:
                    best[job.job_id] = job
        return list(best.values())

    def _since(self) -> str:
        t = time.time() - self.finished_lookback_days * 86400
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))

    def _sacct_jobcomp(self) -> list[SlurmJob]:
        """Completion records via `sacct -c`: Slurm's own reader of the JobCompLoc file (it
        must be readable here, so the agent runs where slurmctld writes it). -P gives a
        header and '|' separators, so names with spaces parse; the raw file does not."""
        fields = ",".join(parse.SACCT_C_FIELDS)
        proc = self._run(
            "sacct", ["-c", "-a", "-P", "-S", self._since(), "-o", fields], check=False
        )
        if proc.returncode != 0:
            if "after end time" in proc.stderr:  # clock skew; nothing to read
                return []
            message = _one_line(proc.stderr) or f"sacct exited {proc.returncode}"
            raise SlurmUnavailable(f"sacct -c: {message}")
        return parse.parse_sacct_text(proc.stdout)

    def _sacct_json(self, job_ids: list[str], tags: list[str]) -> list[SlurmJob]:
        args = ["--json", "-a", "-S", self._since()]
        if job_ids and not tags:
            args += ["-j", ",".join(job_ids)]
        proc = self._run("sacct", args)
        return parse.parse_sacct_json(proc.stdout)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _job_env(req: SubmitRequest) -> dict[str, str]:
    """The job's variables, to be put in sbatch's own environment (see sbatch_args). SBATCH_*
    would silently change sbatch's options and SLURM_* are Slurm's: both are refused."""
    for key in req.environment:
        if not _ENV_NAME.match(key):
            raise SlurmError(f"bad environment variable name {key[:40]!r}")
        if key.startswith(("SBATCH_", "SLURM_")):
            raise SlurmError(f"environment variable {key} is reserved for Slurm")
    return {**req.environment, **req.slurm_environment}


def _one_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise SlurmError(f"no such local user {name!r}") from None


def _home(name: str) -> str:
    return _user(name).pw_dir


def primary_group(name: str) -> str:
    """The name of a user's primary group (for messages and tests)."""
    return grp.getgrgid(_user(name).pw_gid).gr_name
