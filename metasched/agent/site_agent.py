"""metasched-agent's work: keep one stream open to metaschedd, report the site, obey commands.

Two loops share the stream (Balsam's site services, in miniature):
  - the poller reads Slurm every poll_interval and sends a SiteReport when anything changed
    (and at least every report_interval as a heartbeat);
  - the command loop carries out submit / cancel / resolve commands as they arrive and
    answers each one (submissions on a few threads at once: submits.py).
The agent keeps no state of its own beyond the journal and its tag key: after a restart, the
daemon re-sends whatever is unanswered and the first report shows every tagged job the site
still has. A Slurm job is "ours" only if its tag's MAC verifies for its owner and the
journal does not know another Slurm id for that tag (see tagkey.py): anybody can write a
comment, nobody else can sign one. Other jobs are reported as the site's load, never as
ours, so the daemon neither adopts nor cancels them.
"""

from __future__ import annotations

import os
import pwd
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from metasched import arrays, catalog, jobenv, jobspec, log, output_names, tags
from metasched.agent import output
from metasched.agent.config import AgentConfig
from metasched.agent.journal import Journal
from metasched.agent.metrics import AgentMetrics
from metasched.agent.offers import SiteOffers
from metasched.agent.slurm import parse
from metasched.agent.slurm.base import (
    JobRefused,
    Node,
    SlurmBackend,
    SlurmError,
    SlurmJob,
    SlurmUnavailable,
    SubmitRequest,
)
from metasched.agent.submits import SubmitPool
from metasched.agent.tagkey import TagKeys
from metasched.sbatch import argv as sargv
from metasched.sbatch import resolve
from metasched.states import JobState, from_slurm
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

AGENT_VERSION = "0.1.0"
# Reads of job output (msub output, results) waiting for a reader thread before the site
# answers "busy": the daemon bounds each user to a few in flight, this bounds them all.
MAX_READS_WAITING = 32
# After a stop request, how long a command in flight may take to finish before the agent ends
# anyway (its intent is journalled first, so a restart finds the job or submits it once).
STOP_GRACE_SECONDS = 1.5


def job_report(j: SlurmJob, ours: tags.Tag | None = None) -> pb.SlurmJobReport:
    """j as the daemon sees it; ours: its verified tag (None: not one of ours, whatever its
    comment says)."""
    out = pb.SlurmJobReport(
        slurm_job_id=j.job_id,
        partition=j.partition,
        state=j.state,
        reason=j.reason,
        nodes=j.nodes,
        cpus=j.cpus,
        gpus=j.gpus,
        gpu_type=j.gpu_type,
        time_limit_minutes=j.time_limit_minutes,
        submit_time=j.submit_time,
        start_time=j.start_time,
        end_time=j.end_time,
        exit_code=j.exit_code,
        user=j.user,
        priority=max(0, min(j.priority, 2**32 - 1)),
        node_names=list(j.node_names),
    )
    if ours is not None:
        out.job_id, out.attempt, out.federation = ours.job_id, ours.attempt, ours.federation
    return out


def _started(j: SlurmJob) -> bool:
    """Whether a cancelled Slurm job had started: it held nodes, or ran for a second or more
    (Slurm gives a job cancelled while pending a start time equal to its end)."""
    return bool(j.node_names) or (j.start_time > 0 and j.end_time - j.start_time >= 1)


def _cancelled(before: SlurmJob | None, after: SlurmJob | None) -> tuple[bool, str]:
    """Whether our scancel ended the job, from how the site's queue showed it just before and
    just after (done, else why not). Ended: gone, final, or COMPLETING when it was not before
    (Slurm ends a cancelled running job at once and shows it COMPLETING until its nodes are
    clean; 23.11+ say CANCELLED first, 22.05 only COMPLETING)."""
    if after is None:
        return True, ""
    state = from_slurm(after.state)
    if state is not None and state.is_final:
        return True, ""
    if after.state == "COMPLETING":
        if before is None or before.state != "COMPLETING":
            return True, ""
        return False, "it was already ending (COMPLETING) when the cancel came; its end follows"
    return False, f"still {after.state or 'in the queue'} after scancel"


def _outcome(answer: pb.AgentMessage | None) -> str:
    """A command's outcome as the agent's metrics count it, from its answer."""
    if answer is None:
        return "still_queued"  # a resolve of a job still in the queue: its report tells
    kind = answer.WhichOneof("body")
    if kind == "submit_result":
        return "submitted" if answer.submit_result.slurm_job_id else "refused"
    if kind == "cancel_result":
        return "done" if answer.cancel_result.done else "not_done"
    if kind == "cancel_results":
        return "done" if all(r.done for r in answer.cancel_results.results) else "not_done"
    if kind == "job_update":
        return "no_record" if answer.job_update.resolved_from == "none" else "resolved"
    if kind == "output":
        return "error" if answer.output.error else "read"
    return "answered"


def _gpu_counts(d: dict[str, int]) -> list[pb.GpuCount]:
    return [pb.GpuCount(type=t, count=c) for t, c in sorted(d.items()) if c]


def partition_reports(
    nodes: list[Node],
    parts: list[tuple[str, int, int, bool]],
    declared: dict[str, dict[str, float]],
) -> tuple[list[pb.Partition], list[str]]:
    """Partitions with the precisions they offer: declared in the config, else derived from the
    GPU types of their nodes (the most common node shape stands for the partition).
    Returns the partitions and the GPU types the catalog does not know (for a warning)."""
    out, unknown = [], []
    for name, max_time, max_nodes, is_default in parts:
        members = [n for n in nodes if name in n.partitions]
        if not members:
            continue
        shape, _ = Counter(
            (n.cpus, n.mem_mb, tuple(sorted(n.gpus.items()))) for n in members
        ).most_common(1)[0]
        cpus, mem, gpus = shape
        if name in declared:
            rates = declared[name]
        else:
            unknown += catalog.unknown_gpu_types(dict(gpus))
            rates = catalog.partition_precisions(dict(gpus), cpus)
        out.append(
            pb.Partition(
                name=name,
                nodes=len(members),
                cpus_per_node=cpus,
                mem_per_node_mb=mem,
                gpus_per_node=_gpu_counts(dict(gpus)),
                max_time_minutes=max_time,
                max_nodes_per_job=max_nodes,
                is_default=is_default,
                precisions=[pb.Precision(name=k, peak_tflops=v) for k, v in rates.items()],
            )
        )
    return out, sorted(set(unknown))


def job_ids(
    job_id: int, array_id: int, array_task: int, spec: pb.JobSpec, local_user: str
) -> output_names.Ids:
    """The ids a job's file names are made of (the same at submit and when read back)."""
    name = spec.name or f"metasched-{job_id}"
    return output_names.Ids(job_id, name, local_user, array_id, array_task)


class SiteAgent:
    def __init__(
        self,
        cfg: AgentConfig,
        backend: SlurmBackend,
        journal: Journal,
        keys: TagKeys,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.backend = backend
        self.journal = journal
        self.keys = keys
        self.metrics = metrics or AgentMetrics(cfg.site, AGENT_VERSION, backend.name, journal)
        self._forged_seen: set[tuple[str, str]] = set()
        self._next_prune = 0.0  # monotonic time of the journal's next pruning: first report
        # (Slurm id, comment, owner) -> its tag if ours, None if not: verdicts that hold
        self._verdicts: dict[tuple[str, str, str], tags.Tag | None] = {}
        self.log = log.get(site=cfg.site)
        self.report_interval = 30.0
        self._jobs: list[SlurmJob] = []
        self._jobs_lock = threading.Lock()
        self._warned_unknown: set[str] = set()
        self._slurm_ok: bool | None = None
        # the site's node and partition names at the last report (for per-site options)
        self._node_names: frozenset[str] = frozenset()
        self._partitions: tuple[str, ...] = ()
        self.offers = SiteOffers(cfg.offers, cfg.site)
        # Looking at a job's output takes seconds at times (a checksum of a large result, a
        # slow file system): it is done on threads of their own, never on the command loop.
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="output")
        self._reads_lock = threading.Lock()
        self._reads_waiting = 0
        self._stream: grpc.Call | None = None  # the open Connect call, to cancel on stop
        self.submits = SubmitPool(min(cfg.submit_workers, backend.max_concurrent_submits))
        self._stream_lock = threading.Lock()

    # ---------------------------------------------------------------- what the site looks like

    def report(self) -> pb.SiteReport:
        rep = pb.SiteReport(backend=self.backend.name)
        try:
            version = self.backend.version()
            nodes = self.backend.nodes()
            parts = self.backend.partitions()
            jobs = self.backend.jobs()
        except SlurmError as e:
            # Unreachable, or a command that failed (killed, unparsable output): either way
            # there is no trustworthy picture this round; say so rather than go quiet.
            if self._slurm_ok is not False:
                self.log.warning("slurm_unreachable", error=str(e))
            self._slurm_ok = False
            rep.slurm_reachable = False
            rep.error = str(e)
            return rep
        if self._slurm_ok is False:
            self.log.info("slurm_reachable_again")
        self._slurm_ok = True
        with self._jobs_lock:
            self._jobs = jobs
            self._node_names = frozenset(n.name for n in nodes)
            self._partitions = tuple(p.name for p in parts)
        rep.slurm_reachable = True
        rep.slurm_version = version
        partitions, unknown = partition_reports(
            nodes,
            [(p.name, p.max_time_minutes, p.max_nodes_per_job, p.is_default) for p in parts],
            self.cfg.precisions,
        )
        for t in set(unknown) - self._warned_unknown:
            self.log.warning(
                "unknown_gpu_type",
                gpu_type=t,
                hint="declare the partition's precisions in the agent config",
            )
        self._warned_unknown |= set(unknown)
        for p in partitions:
            extra = self.offers.partition(p.name)
            if extra is not None:
                p.offers.CopyFrom(extra)
        rep.partitions.extend(partitions)
        rep.offers.CopyFrom(self.offers.site())
        for n in nodes:
            rep.nodes.append(
                pb.NodeReport(
                    name=n.name,
                    partitions=list(n.partitions),
                    state=n.state,
                    cpus=n.cpus,
                    alloc_cpus=n.alloc_cpus,
                    mem_mb=n.mem_mb,
                    alloc_mem_mb=n.alloc_mem_mb,
                    gpus=_gpu_counts(n.gpus),
                    alloc_gpus=_gpu_counts(n.alloc_gpus),
                    features=list(n.features),
                )
            )
        rep.reports_features = True
        ours = self._ours(jobs)
        self._prune_journal(jobs)
        rep.jobs.extend(job_report(j, ours.get(j.job_id)) for j in jobs)
        self.metrics.queue_seen(
            Counter(j.state for j in jobs), Counter(j.state for j in jobs if j.job_id in ours)
        )
        rep.maps_all_users = self.cfg.users.identity
        rep.mapped_users.extend(sorted(self.cfg.users.accounts))
        return rep

    def _prune_journal(self, jobs: list[SlurmJob]) -> None:
        """Once an hour, forget journal rows older than journal_keep_days whose jobs have left
        the queue: without it the journal grows by a row for every job the site ever ran."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + 3600.0
        live = {str(t) for j in jobs if (t := tags.parse(j.comment)) is not None}
        before = time.time() - self.cfg.journal_keep_days * 86400.0
        forgotten = self.journal.forget_settled(before, live)
        if forgotten:
            self.log.info("journal_pruned", forgotten=forgotten, kept=self.journal.entries())

    # ---------------------------------------------------------------- which jobs are ours

    def _ours(self, jobs: list[SlurmJob]) -> dict[str, tags.Tag]:
        """Slurm id -> tag of those jobs that really are ours. A verdict that cannot change
        is kept (a job's id, comment and owner decide it), so a poll of a queue it has seen
        before costs a lookup per job; the rest take one journal query together."""
        out: dict[str, tags.Tag] = {}
        todo: list[tuple[SlurmJob, tags.Tag, tuple[str, str, str]]] = []
        for j in jobs:
            if "metasched:" not in j.comment:
                continue
            key = (j.job_id, j.comment, j.user)
            if key in self._verdicts:
                settled = self._verdicts[key]
                if settled is not None:
                    out[j.job_id] = settled
                continue
            t = tags.parse(j.comment)
            if t is not None:
                todo.append((j, t, key))
        if not todo:
            return out
        known = self.journal.submitted(sorted({str(t) for _, t, _ in todo}))
        if len(self._verdicts) > 200_000:
            self._verdicts.clear()
        for j, t, key in todo:
            sid = known.get(str(t), ("", ""))[0]
            why = self._not_ours(j, t, known.get(str(t)))
            if why is None:
                out[j.job_id] = t
            else:
                self._forged(j, why)
            if sid or (why is not None and tags.mac_of(j.comment)):
                # settled for good: the journal has this tag's Slurm id, or the MAC is wrong
                self._verdicts[key] = t if why is None else None
        return out

    def _not_ours(self, j: SlurmJob, tag: tags.Tag, known: tuple[str, str] | None) -> str | None:
        """Why a tagged Slurm job is not ours (None: it is)."""
        sid, local_user = known or ("", "")
        mac = tags.mac_of(j.comment)
        if mac:
            if not self.keys.verify_mac(tag, mac, j.user):
                return f"the tag's MAC does not verify for user {j.user or '?'}"
        elif not sid:
            # a tag from before tags were signed: ours only where the journal vouches for it
            return "an unsigned tag for no Slurm job the journal knows"
        elif local_user and local_user != j.user:
            return f"submitted as {local_user}, owned by {j.user or '?'}"
        if sid and sid != j.job_id:
            return f"sbatch answered Slurm job {sid} for this tag"
        return None

    def _forged(self, j: SlurmJob, why: str) -> None:
        key = (j.job_id, j.comment)
        if key in self._forged_seen:
            return
        if len(self._forged_seen) > 100_000:
            self._forged_seen.clear()
        self._forged_seen.add(key)
        self.metrics.forged_tags.inc()
        self.log.warning(
            "forged_tag_ignored", slurm_job_id=j.job_id, user=j.user, tag=j.comment, why=why
        )

    def _verified(self, jobs: list[SlurmJob], tag: str) -> list[SlurmJob]:
        """Those of jobs that are ours and carry tag."""
        want = tags.parse(tag)
        ours = self._ours(jobs)
        return [j for j in jobs if want is not None and ours.get(j.job_id) == want]

    def _queue(self, fresh: bool) -> list[SlurmJob]:
        """The site's jobs: asked of Slurm now (fresh), else as last polled."""
        if fresh:
            jobs = self.backend.jobs()
            with self._jobs_lock:
                self._jobs = jobs
        with self._jobs_lock:
            return list(self._jobs)

    def _find_tag(self, tag: str, fresh: bool) -> SlurmJob | None:
        jobs = self._queue(fresh)
        found = self._verified([j for j in jobs if tag in j.comment], tag)
        return found[0] if found else None

    # ---------------------------------------------------------------- commands

    def request_of(self, cmd: pb.SubmitCommand, local_user: str) -> SubmitRequest:
        """The Slurm submission for a placed job: the user's own options as sbatch would
        have read them (the daemon resolved them, #SBATCH lines included), and what only
        this site decides: which of the user's partitions and excluded nodes exist here,
        and the federation's ids in the job's name and file names (output_names)."""
        spec = cmd.spec
        with self._jobs_lock:
            node_names, partitions = self._node_names, self._partitions
        if not node_names:
            node_names = frozenset(n.name for n in self.backend.nodes())
            partitions = tuple(p.name for p in self.backend.partitions())
        asked = jobspec.split_list(spec.partition)
        here = [p for p in asked if p in partitions] if asked else []
        excluded = [n for n in parse.expand_hostlist(spec.exclude_nodes) if n in node_names]
        ids = job_ids(cmd.job_id, cmd.array_id, cmd.array_task, spec, local_user)
        slurm_env: dict[str, str] = {}
        if cmd.array_id and spec.array:
            slurm_env = arrays.parse_array(spec.array).environment(cmd.array_id, cmd.array_task)
        return SubmitRequest(
            script=sargv.neutralise(spec.script),
            tag=self.keys.sign(cmd.tag, local_user),
            # all but what is decided per site, here
            options=tuple(resolve.to_words(spec, site=True)),
            name=ids.name,
            partition=",".join(here) or cmd.partition,
            workdir=spec.workdir or spec.submit_dir,
            # the federation's ids in the file names (the site's own would collide)
            output=output_names.for_slurm(spec.output, ids),
            error=output_names.for_slurm(spec.error, ids) if spec.error else "",
            comment=spec.comment,
            exclude_nodes=",".join(excluded),
            environment={**dict(spec.environment), "METASCHED_JOB_ID": str(cmd.job_id)},
            export_mode=spec.export_mode,
            script_args=tuple(spec.script_args),
            local_user=local_user,
            slurm_environment=slurm_env,
        )

    def submit(self, cmd: pb.SubmitCommand) -> pb.SubmitResult:
        res = pb.SubmitResult(job_id=cmd.job_id, attempt=cmd.attempt)
        bound = self.log.bind(job_id=cmd.job_id, attempt=cmd.attempt)
        local = self.cfg.users.local(cmd.user)
        if local is None:
            res.error = f"user {cmd.user} has no account mapping at site {self.cfg.site}"
            res.permanent = True
            bound.warning("user_not_mapped", user=cmd.user)
            return res
        known = self.journal.get(cmd.tag)
        if known is not None:
            state, sid = known
            if sid:
                res.slurm_job_id = sid
                return res
            if state == "cancelled":
                res.error = "cancelled before it was submitted"
                return res
            # intent without an id: the agent died around sbatch. Did it reach Slurm?
            found = self._find_tag(cmd.tag, fresh=True)
            if found is None:
                done = self._verified(self.backend.finished([], [cmd.tag]), cmd.tag)
                found = done[0] if done else None
            if found is not None:
                self.journal.record(
                    cmd.tag, cmd.job_id, cmd.attempt, "submitted", found.job_id, local
                )
                bound.info("submission_recovered", slurm_job_id=found.job_id)
                res.slurm_job_id = found.job_id
                return res
        else:
            found = self._find_tag(cmd.tag, fresh=False)
            if found is not None:
                res.slurm_job_id = found.job_id
                return res
        # The one check of the job's environment every backend relies on: metaschedd makes
        # it at submission, and an agent makes it again for what an older daemon let in.
        env_problem = jobenv.problem(cmd.spec.environment)
        if env_problem is not None:
            return self._refused(res, bound, cmd, env_problem, anywhere=True)
        req = self.request_of(cmd, local)
        self.journal.record(cmd.tag, cmd.job_id, cmd.attempt, "intent", local_user=local)
        try:
            with self.metrics.sbatch_seconds.time():
                sid = self.backend.submit(req)
        except SlurmUnavailable as e:
            # Unknown whether it reached Slurm: answer nothing; the daemon asks again and the
            # journal's intent makes us look before submitting a second time.
            bound.warning("submit_uncertain", error=str(e))
            raise
        except SlurmError as e:
            return self._refused(res, bound, cmd, str(e), anywhere=isinstance(e, JobRefused))
        self.journal.record(cmd.tag, cmd.job_id, cmd.attempt, "submitted", sid, local)
        bound.info(
            "job_submitted_to_slurm", slurm_job_id=sid, partition=cmd.partition, local_user=local
        )
        res.slurm_job_id = sid
        return res

    def _refused(
        self,
        res: pb.SubmitResult,
        bound: Any,
        cmd: pb.SubmitCommand,
        error: str,
        anywhere: bool,
    ) -> pb.SubmitResult:
        """Answer a refusal: wrong for this site (the daemon tries another), or, anywhere,
        wrong in itself (the daemon fails it at once)."""
        self.journal.record(cmd.tag, cmd.job_id, cmd.attempt, "refused")
        bound.warning("submit_refused", error=error, job_invalid=anywhere)
        res.error = error
        res.permanent = True
        res.invalid_anywhere = anywhere
        return res

    def cancel(self, cmd: pb.CancelCommand) -> pb.CancelResult:
        res = pb.CancelResult(job_id=cmd.job_id, attempt=cmd.attempt)
        # Remember the cancel first, so a re-sent submit of this tag can never start it.
        self.journal.record(cmd.tag, cmd.job_id, cmd.attempt, "cancelled")
        # Only a job shown to be this tag's is cancelled (the agent is root: an id alone,
        # even the daemon's, could name another user's job). Not in the queue: nothing to do.
        found = self._find_tag(cmd.tag, fresh=True)
        sid = found.job_id if found is not None else ""
        if cmd.slurm_job_id and sid and cmd.slurm_job_id != sid:
            self.log.warning(
                "cancel_id_mismatch", job_id=cmd.job_id, slurm_job_id=cmd.slurm_job_id, found=sid
            )
        if sid:
            self.backend.cancel(sid, only_pending=cmd.only_if_pending)
            self.log.info(
                "job_cancel_sent", job_id=cmd.job_id, slurm_job_id=sid, recall=cmd.only_if_pending
            )
            after = self._find_tag(cmd.tag, fresh=True)
            if cmd.only_if_pending:
                res.done, res.error = self._recalled(sid, cmd.tag, after)
            else:
                res.done, res.error = _cancelled(found, after)
        else:
            res.done = True  # never reached Slurm, and now never will
        return res

    def _recalled(self, sid: str, tag: str, after: SlurmJob | None) -> tuple[bool, str]:
        """Did a recall take the job back before it started? Only then may the daemon place it
        again. Final is not enough: a short job can start and complete between the recall
        decision and the scancel, and placing it again would run it twice."""
        if after is None:  # left the queue already: its final record says how it ended
            records = self._verified(self.backend.finished([sid], [tag]), tag)
            after = records[0] if records else None
            if after is None:
                return False, "it left the queue without a record; not known whether it ran"
        if from_slurm(after.state) == JobState.CANCELLED and not _started(after):
            return True, ""
        return False, f"it has started ({after.state}); a recall never stops running work"

    def cancel_jobs(self, cmd: pb.CancelJobsCommand) -> pb.CancelResults:
        """cancel() for many jobs (an array): one look at the queue before and after, one
        journal transaction and one scancel for all of them."""
        records = []
        sids: dict[str, str] = {}
        for c in cmd.jobs:
            known = self.journal.get(c.tag)
            sids[c.tag] = c.slurm_job_id or (known[1] if known else "")
            records.append((c.tag, c.job_id, c.attempt, "cancelled", sids[c.tag]))
        self.journal.record_many(records)  # first: a re-sent submit can never start them
        queued = self._by_tag(fresh=True)
        for tag, found in queued.items():
            if tag in sids and not sids[tag]:
                sids[tag] = found.job_id
        todo = sorted({sid for sid in sids.values() if sid}, key=int)
        if todo:
            self.backend.cancel_many(todo)
            self.log.info("jobs_cancel_sent", count=len(todo))
        after = self._by_tag(fresh=True) if todo else {}
        out = pb.CancelResults()
        for c in cmd.jobs:
            done, error = _cancelled(queued.get(c.tag), after.get(c.tag))
            out.results.append(
                pb.CancelResult(job_id=c.job_id, attempt=c.attempt, done=done, error=error)
            )
        return out

    def _by_tag(self, fresh: bool) -> dict[str, SlurmJob]:
        """Our jobs in the site's queue by tag (only those whose tag verifies)."""
        jobs = self._queue(fresh)
        ours = self._ours(jobs)
        return {str(ours[j.job_id]): j for j in jobs if j.job_id in ours}

    def read_output(self, cmd: pb.ReadOutputCommand) -> pb.OutputData:
        """Part of the job's output file (or of cmd.path, a published result's file), or the
        sizes and checksums of cmd.checksum (a result being published), as its local user."""
        res = pb.OutputData(request_id=cmd.request_id, offset=cmd.offset)
        local = self.cfg.users.local(cmd.user)
        if local is None:
            res.error = f"user {cmd.user} has no account mapping at site {self.cfg.site}"
            return res
        try:
            home = pwd.getpwnam(local).pw_dir
        except KeyError:
            res.error = f"no such local user {local!r} at site {self.cfg.site}"
            return res
        spec = cmd.spec
        workdir = os.path.join(home, spec.workdir)
        try:
            if cmd.checksum:
                for path, size, digest in output.checksums_as(local, workdir, list(cmd.checksum)):
                    res.files.append(pb.ResultFile(path=path, size=size, sha256=digest))
                return res
            if cmd.path:
                if not os.path.isabs(cmd.path):
                    raise output.OutputError(f"{cmd.path!r} is not an absolute path")
                res.path = cmd.path
            else:
                ids = job_ids(cmd.job_id, cmd.array_id, cmd.array_task, spec, local)
                pattern = spec.error if cmd.stderr and spec.error else spec.output
                res.path = output_names.resolve(pattern, ids, workdir)
            res.data, res.size = output.read_as(local, res.path, cmd.offset, cmd.max_bytes)
        except output.OutputError as e:
            res.error = str(e)
        return res

    def _read_later(
        self, cmd: pb.ReadOutputCommand, outbox: queue.Queue[pb.AgentMessage | None]
    ) -> None:
        """Answer a read on the readers' threads; a site with too many waiting says so."""
        with self._reads_lock:
            busy = self._reads_waiting >= MAX_READS_WAITING
            if not busy:
                self._reads_waiting += 1
        if busy:
            msg = "the site has too many reads waiting; try again"
            outbox.put(pb.AgentMessage(output=pb.OutputData(request_id=cmd.request_id, error=msg)))
            return

        def answer() -> None:
            try:
                outbox.put(pb.AgentMessage(output=self.read_output(cmd)))
            except Exception:
                self.log.exception("command_crashed", kind="read_output")
            finally:
                with self._reads_lock:
                    self._reads_waiting -= 1

        self._readers.submit(answer)

    def resolve(self, cmd: pb.ResolveCommand) -> pb.JobUpdate | None:
        upd = pb.JobUpdate(job_id=cmd.job_id, attempt=cmd.attempt, final=True)
        if self._find_tag(cmd.tag, fresh=True) is not None:
            return None  # still in the queue: the next report carries it
        records = self._verified(
            self.backend.finished([cmd.slurm_job_id] if cmd.slurm_job_id else [], [cmd.tag]),
            cmd.tag,
        )
        if records:
            upd.job.CopyFrom(job_report(records[0], tags.parse(cmd.tag)))
            upd.resolved_from = "accounting"
            self.log.info(
                "job_resolved",
                job_id=cmd.job_id,
                slurm_job_id=records[0].job_id,
                state=records[0].state,
                exit_code=records[0].exit_code,
            )
        else:
            upd.job.slurm_job_id = cmd.slurm_job_id
            upd.resolved_from = "none"
            self.log.warning("job_without_record", job_id=cmd.job_id, slurm_job_id=cmd.slurm_job_id)
        return upd

    def handle(self, msg: pb.DaemonMessage) -> pb.AgentMessage | None:
        kind = msg.WhichOneof("body")
        outcome = "unknown"
        try:
            answer = self._carry_out(kind, msg)
            outcome = _outcome(answer)
            return answer
        except SlurmUnavailable as e:
            outcome = "deferred"
            self.log.warning("command_deferred", kind=kind, error=str(e))
        except SlurmError as e:
            # Unanswered on purpose: the daemon re-sends it, and every command is idempotent.
            outcome = "failed"
            self.log.warning("command_failed", kind=kind, error=str(e))
        except Exception:
            outcome = "crashed"
            self.log.exception("command_crashed", kind=kind)
        finally:
            self.metrics.commands.labels(kind or "none", outcome).inc()
        return None

    def _carry_out(self, kind: str | None, msg: pb.DaemonMessage) -> pb.AgentMessage | None:
        if kind == "submit":
            return pb.AgentMessage(submit_result=self.submit(msg.submit))
        if kind == "cancel":
            return pb.AgentMessage(cancel_result=self.cancel(msg.cancel))
        if kind == "resolve":
            upd = self.resolve(msg.resolve)
            return pb.AgentMessage(job_update=upd) if upd else None
        if kind == "cancel_jobs":
            return pb.AgentMessage(cancel_results=self.cancel_jobs(msg.cancel_jobs))
        return None  # read_output is answered on the reader threads (_read_later)

    # ---------------------------------------------------------------- the stream

    def polling(self, limit: float) -> bool:
        """False only when, connected, no poll of Slurm has ended for `limit` seconds: a
        wedged poller, which systemd's watchdog restarts. Between sessions the agent is
        reconnecting (with backoff), not wedged."""
        since = self.metrics.since_last_poll()
        return since is None or since < limit

    def run(self, stop: threading.Event) -> bool:
        """Stay connected until `stop` is set, then end within STOP_GRACE_SECONDS whatever is
        going on: the stream is cancelled at once (an idle agent waits on it), and a command in
        flight gets the grace to finish. True when nothing was left in flight."""
        worker = threading.Thread(target=self._connect, args=(stop,), daemon=True, name="stream")
        worker.start()
        while not stop.is_set() and worker.is_alive():
            # short sleeps, not stop.wait(): a signal handler may set `stop` at any moment, and
            # Event.set() inside a handler can deadlock against this thread's Event.wait()
            time.sleep(0.1)
        asked = time.monotonic()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
        worker.join(STOP_GRACE_SECONDS)
        left = max(0.0, STOP_GRACE_SECONDS - (time.monotonic() - asked))
        drained = self.submits.drain(left)
        took = round(time.monotonic() - asked, 3)
        if worker.is_alive() or not drained:
            self.log.warning("agent_stopped_in_flight", stop_s=took)
            return False
        self.log.info("agent_stopped", stop_s=took)
        return True

    def _connect(self, stop: threading.Event) -> None:
        """Stay connected until `stop` is set, reconnecting with backoff."""
        delay = 1.0
        while not stop.is_set():
            started = time.monotonic()
            try:
                self._session(stop)
            except grpc.RpcError as e:
                if stop.is_set():
                    break  # we cancelled it
                code = e.code() if hasattr(e, "code") else None
                details = e.details() if hasattr(e, "details") else str(e)
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    self.log.error("agent_refused_by_daemon", error=details)
                else:
                    self.log.warning("daemon_unreachable", daemon=self.cfg.daemon, error=details)
            if time.monotonic() - started > 30:
                delay = 1.0
            stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def _channel(self) -> grpc.Channel:
        """The channel to metaschedd: mutual TLS when the config names a certificate."""
        options = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 64 << 20),
        ]
        cert, key, ca = self.cfg.tls_cert, self.cfg.tls_key, self.cfg.tls_ca
        if cert is None or key is None or ca is None:
            return grpc.insecure_channel(self.cfg.daemon, options=options)
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes(),
        )
        return grpc.secure_channel(self.cfg.daemon, creds, options=options)

    def _session(self, stop: threading.Event) -> None:
        outbox: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        hello = pb.AgentMessage(
            hello=pb.Hello(site=self.cfg.site, token=self.cfg.token, agent_version=AGENT_VERSION)
        )

        def requests() -> Iterator[pb.AgentMessage]:
            yield hello
            while True:
                m = outbox.get()
                if m is None:
                    return
                yield m

        channel = self._channel()
        ended = threading.Event()
        poller = threading.Thread(target=self._poll, args=(outbox, stop, ended), daemon=True)
        try:
            stream = pb_grpc.AgentServiceStub(channel).Connect(requests())
            with self._stream_lock:
                self._stream = stream
            if stop.is_set():  # asked to stop before the stream could be cancelled
                return
            for msg in stream:
                kind = msg.WhichOneof("body")
                if kind == "welcome":
                    self.metrics.connected(True)
                    self.report_interval = msg.welcome.report_interval or self.report_interval
                    self.log.info(
                        "connected_to_daemon",
                        daemon=self.cfg.daemon,
                        federation=msg.welcome.federation,
                    )
                    if not poller.is_alive():
                        poller.start()
                    continue
                if kind == "read_output":
                    self._read_later(msg.read_output, outbox)
                    continue
                if kind == "submit":
                    if not self.submits.add(msg, lambda m: self._answer(m, outbox)):
                        self.log.info(
                            "submit_already_in_flight",
                            job_id=msg.submit.job_id,
                            attempt=msg.submit.attempt,
                        )
                    continue
                self.submits.drain()  # a cancel never overtakes the submit it is about
                self._answer(msg, outbox)
                if stop.is_set():
                    break
        finally:
            self.metrics.connected(False)
            with self._stream_lock:
                self._stream = None
            ended.set()
            outbox.put(None)
            channel.close()

    def _answer(self, msg: pb.DaemonMessage, outbox: queue.Queue[pb.AgentMessage | None]) -> None:
        answer = self.handle(msg)
        if answer is not None:
            outbox.put(answer)

    def _poll(
        self,
        outbox: queue.Queue[pb.AgentMessage | None],
        stop: threading.Event,
        ended: threading.Event,
    ) -> None:
        last: bytes = b""
        last_sent = 0.0
        while not stop.is_set() and not ended.is_set():
            try:
                t0 = time.perf_counter()
                rep = self.report()
                self.metrics.polled(time.perf_counter() - t0, rep.slurm_reachable)
                body = rep.SerializeToString(deterministic=True)
                now = time.monotonic()
                if body != last or now - last_sent >= self.report_interval:
                    outbox.put(pb.AgentMessage(report=rep))
                    self.metrics.report_sent(len(body))
                    last, last_sent = body, now
            except Exception:
                # The poller is the site's heartbeat: it must outlive any one bad poll.
                self.log.exception("poll_failed")
            ended.wait(self.cfg.poll_interval)
