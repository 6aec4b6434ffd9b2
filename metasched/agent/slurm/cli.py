"""The command-line backend: sbatch, squeue, sinfo, scancel, scontrol and sacct.

Works with any Slurm from 21.08 on; the version differences live in parse.py. Every command
runs with a fixed, small environment (see _base_env), in "/", under a timeout, so a hung
slurmctld costs at most `timeout` seconds and neither the agent's environment nor a job's
ever reaches a command.

sbatch runs as the job's local user, never as root (see docs/security.md): the agent drops
to that account (uid, gid, supplementary groups, umask) in the child before exec, without a
shell. Whatever sbatch reads (the script's #SBATCH lines, files they name, plugins' options)
is read with the user's own rights. The job's variables reach the job only, through
--export-file on an anonymous file (memfd): NUL-separated, so values keep commas, '=' and
newlines, and never part of any process's environment.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metasched import jobenv, tags
from metasched.agent.slurm import parse
from metasched.agent.slurm.base import (
    JobRefused,
    LocalAccount,
    Node,
    PartitionInfo,
    SlurmBackend,
    SlurmError,
    SlurmJob,
    SlurmUnavailable,
    SubmitRequest,
    submitter,
)

# What a client says when slurmctld runs a Slurm release it cannot talk to (a client speaks
# to its own release and the two before it; 22.05's sinfo at a 25.11 site says only this).
_MISMATCH = "incompatible versions of client and server code"
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
        if self.bin_dir:  # whatever the site's Slurm runs in turn is its own too
            env["PATH"] = f"{self.bin_dir}:{env['PATH']}"
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
        check: bool = True,
        as_user: LocalAccount | None = None,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command with the fixed environment; as_user: drop to that account in the
        child (uid, gid, groups, umask 022) before exec, as login would."""
        argv = [self._exe(cmd), *args]
        drop: dict[str, Any] = {}
        if as_user is not None and as_user.uid != os.geteuid():
            drop = {
                "user": as_user.uid,
                "group": as_user.gid,
                "extra_groups": list(as_user.groups),
                "umask": 0o022,
            }
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                env=self._base_env(),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                cwd="/",  # never depend on (or leak) the agent's working directory
                pass_fds=tuple(pass_fds),
                **drop,
            )
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"{cmd} did not answer within {self.timeout:g}s") from None
        except OSError as e:
            if e.errno == errno.E2BIG:  # only our own bounded arguments reach exec
                raise JobRefused(f"cannot run {cmd}: {e.strerror}") from None
            raise SlurmUnavailable(f"cannot run {argv[0]}: {e}") from None
        if _MISMATCH in proc.stderr.lower():
            raise SlurmError(
                f"{argv[0]} (Slurm {self.client_version()}) cannot talk to this site's "
                "slurmctld, which runs another Slurm release: set the agent's slurm_bin_dir "
                "to the site's Slurm bin directory"
            )
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

    def client_version(self) -> str:
        """The version of the commands run (`sinfo --version`: local, needs no slurmctld)."""
        try:
            return self.version() or "?"
        except SlurmError:
            return "?"

    def describe(self) -> str:
        return f"{self._exe('sinfo')}, Slurm {self.client_version()}"

    # ------------------------------------------------------------ submit / cancel
    def sbatch_args(self, req: SubmitRequest, env_fd: int, script_fd: int = -1) -> list[str]:
        """sbatch's command line for req, each option its own argv element (the script goes
        on stdin, or in the file script_fd when it has arguments; the job's variables in the
        file env_fd). Every option is here: the
        script's #SBATCH lines are neutralised, and --ignore-pbs keeps #PBS / #BSUB lines
        from being translated. A value that starts with '-' or holds commas or spaces stays
        that option's value."""
        args = ["--parsable", "--ignore-pbs", f"--comment={tags.comment(req.tag, req.comment)}"]
        if not self.has_slurmdbd() and not any(o.startswith("--wckey=") for o in req.options):
            # jobcomp/filetxt (22.05) keeps no comment but does keep the WCKey: with the tag
            # there too, a job that left squeue can still be found by tag after a crash
            # (a job with the user's own --wckey is found by the id the journal keeps).
            args.append(f"--wckey={req.tag}")
        for flag, number in (
            ("--nodes", req.nodes),
            ("--ntasks", req.ntasks),
            ("--cpus-per-task", req.cpus_per_task),
            ("--time", req.time_limit_minutes),
        ):
            if number:
                args.append(f"{flag}={number}")
        if req.mem_per_node_mb:
            args.append(f"--mem={req.mem_per_node_mb}M")
        if req.gpus_per_node:
            gtype = f"{req.gpu_type}:" if req.gpu_type else ""
            args.append(f"--gres=gpu:{gtype}{req.gpus_per_node}")
        account = submitter(req)
        home = account.home if account else pwd.getpwuid(os.geteuid()).pw_dir
        for flag, value in (
            ("--job-name", req.name),
            ("--partition", req.partition),
            # sbatch runs in "/" (see _run): without a workdir the job starts in its
            # user's home, as a login shell would, never in the agent's directory
            ("--chdir", req.workdir or home),
            ("--output", req.output),
            ("--error", req.error),
            ("--account", req.account),
            ("--exclude", req.exclude_nodes),
        ):
            if value:
                if "\n" in value or "\x00" in value:
                    raise JobRefused(f"bad {flag[2:]} {value[:40]!r}")
                args.append(f"{flag}={value}")
        args.extend(req.options)
        # The job's environment, from the export file (checked on Slurm 22.05 and in
        # 25.11's sbatch.c: with --export-file, sbatch clears its own environment first, so
        # nothing of the agent's reaches the job):
        # - all (sbatch's default, what msub sends): --export=ALL, the job's environment is
        #   the file's, the submitter's as msub captured it;
        # - none, a list, or a client that names none: --export=<one of its names> keeps the
        #   file and makes slurmd load the user's login environment under it (the names are
        #   looked up in sbatch's own, empty, environment: they add nothing); --export=NONE
        #   (no variable at all) would drop the file;
        # - nil: nothing at all.
        if req.export_mode == "all":
            export = "ALL"
        elif req.export_mode == "nil":
            export = "NIL"
        else:
            export = min({*req.environment, *req.slurm_environment}, default="") or "NONE"
        args += [f"--export-file={env_fd}", f"--export={export}"]
        if req.script_args:
            # sbatch takes arguments only after a script path: the script's anonymous file
            # (not /dev/stdin: sbatch runs as the user, who may not open the agent's pipe)
            args += [f"/proc/self/fd/{script_fd}", *req.script_args]
        return args

    def _sbatch(
        self, req: SubmitRequest, test_only: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """sbatch for req, as its user, with the job's variables in an anonymous file."""
        try:
            # the agent's own SLURM_ARRAY_* next to the job's checked variables
            data = jobenv.export_file({**req.environment, **req.slurm_environment})
        except ValueError as e:
            raise JobRefused(str(e)) from None
        fds = [os.memfd_create("metasched-job-env", 0)]
        try:
            _write_all(fds[0], data)
            os.lseek(fds[0], 0, os.SEEK_SET)
            if req.script_args:
                fds.append(os.memfd_create("metasched-job-script", 0))
                _write_all(fds[1], req.script.encode("utf-8", "surrogatepass"))
                os.lseek(fds[1], 0, os.SEEK_SET)
            args = self.sbatch_args(req, *fds)
            if test_only:
                args = ["--test-only", *(a for a in args if a != "--parsable")]
            return self._run(
                "sbatch",
                args,
                stdin="" if req.script_args else req.script,
                check=False,
                as_user=submitter(req),
                pass_fds=tuple(fds),
            )
        finally:
            for fd in fds:
                os.close(fd)

    def submit(self, req: SubmitRequest) -> str:
        proc = self._sbatch(req)
        if proc.returncode < 0:
            # killed, not refused: whether the job reached Slurm is unknown (the journal's
            # intent makes the agent look before it submits again)
            raise SlurmUnavailable(f"sbatch was killed by signal {-proc.returncode}")
        if proc.returncode != 0:
            message = parse.sbatch_error(proc.stderr) or f"sbatch exited {proc.returncode}"
            if parse.is_unavailable(proc.stderr):
                raise SlurmUnavailable(message)
            if parse.is_job_invalid(proc.stderr):
                raise JobRefused(message)
            raise SlurmError(message)
        return parse.parse_sbatch_parsable(proc.stdout)

    def test_only(self, req: SubmitRequest) -> parse.TestOnly:
        """Slurm's will-run estimate for req. It takes slurmctld's job write lock and uses up
        a job id: call it per placement decision, not per job per poll."""
        proc = self._sbatch(req, test_only=True)
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _one_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
