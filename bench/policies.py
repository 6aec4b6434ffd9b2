"""The placement policies the replay compares, all seeing the same arrivals.

Every policy only chooses a site (or, for metasched with late binding, when to forward);
the sites then schedule by themselves. Estimates are recorded on the job at submission.
"""

from __future__ import annotations

import dataclasses
import math
import random

from bench.sim import Job, Sim, Site
from metasched.jobspec import Shape
from metasched.placement.model import NodeView, PartitionView, SiteView, Work
from metasched.placement.policy import Placer, Request
from metasched.placement.profile import Need, Profile
from metasched.placement.runtime import RuntimePredictor

PARTITION = "batch"


class Base:
    name = "base"

    def arrive(self, sim: Sim, job: Job, now: float) -> None:
        raise NotImplementedError

    def cycle(self, sim: Sim, now: float) -> None:
        pass

    def started(self, sim: Sim, job: Job, now: float) -> None:
        pass

    def finished(self, sim: Sim, job: Job, now: float) -> None:
        pass


def eligible(sim: Sim, job: Job) -> list[Site]:
    return [s for s in sim.sites if job.prec in s.precisions and job.procs <= s.nodes]


class RandomPolicy(Base):
    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def arrive(self, sim: Sim, job: Job, now: float) -> None:
        sim.forward(job, self.rng.choice(eligible(sim, job)).idx, now)


class RoundRobin(Base):
    name = "round-robin"

    def __init__(self) -> None:
        self.next = 0

    def arrive(self, sim: Sim, job: Job, now: float) -> None:
        n = len(sim.sites)
        ok = {s.idx for s in eligible(sim, job)}
        for k in range(n):
            i = (self.next + k) % n
            if i in ok:
                self.next = (i + 1) % n
                sim.forward(job, i, now)
                return


class FewestQueued(Base):
    name = "fewest-queued"

    def arrive(self, sim: Sim, job: Job, now: float) -> None:
        best = min(eligible(sim, job), key=lambda s: len(s.queue))  # ties: the first
        sim.forward(job, best.idx, now)


def slurm_will_run(site: Site, job: Job, now: float) -> float:
    """Slurm's will-run answer for `job` at `site` (sbatch --test-only, sbatch -M).

    The earliest time enough nodes are free if every running job runs to its limit, plus
    the charge for pending work: for each pending job of higher priority in the partition
    (under FCFS, every job already queued), its CPUs x time limit, summed and divided by the
    partition's CPUs.
    """
    t, _ = site.free_by_limits(job.procs, now)
    return t + site.pending_charge / site.nodes


class SlurmM(Base):
    """sbatch -M a,b,c: ask each cluster in turn, take the earliest will-run start; ties go
    to fewer preempted jobs (none here: no preemption) and then to the first asked."""

    name = "slurm -M"

    def arrive(self, sim: Sim, job: Job, now: float) -> None:
        best: tuple[float, int] = (math.inf, -1)
        for s in eligible(sim, job):
            t = slurm_will_run(s, job, now)
            if t < best[0]:
                best = (t, s.idx)
        job.est = best[0]
        sim.forward(job, best[1], now)


class Oracle(Base):
    """Clairvoyant greedy: knows every true run time; for each eligible site, plans the
    running and queued jobs with their true run times (queue order, reservations) and sends
    the job where it truly starts first."""

    name = "oracle"

    def arrive(self, sim: Sim, job: Job, now: float) -> None:
        best: tuple[float, int] = (math.inf, -1)
        for s in eligible(sim, job):
            prof = Profile(now, s.free, 0, s.nodes, 0)
            for r in s.running.values():
                prof.release(r.start + r.run, r.procs, 0)
            for q in s.queue:
                need = Need(q.procs, 0, max(q.run, 1.0))
                prof.reserve(prof.earliest(need, now), need)
            t = prof.earliest(Need(job.procs, 0, max(job.run, 1.0)), now)
            if t < best[0]:
                best = (t, s.idx)
        job.est = best[0]
        sim.forward(job, best[1], now)


def _shape(job: Job) -> Shape:
    return Shape(
        nodes=job.procs,
        tasks=job.procs,
        cpus_per_task=1,
        mem_per_node_mb=0,
        gpus_per_node=0,
        gpu_type="",
        time_limit_minutes=int(job.limit // 60),
        precision=job.prec,
    )


class Metasched(Base):
    """The daemon's own Placer, fed SiteViews of the simulated sites, learning run times and
    calibration online from the jobs that finished / started so far, as the daemon does from
    agent reports. With hold_horizon_s set, jobs wait in the global queue until the Placer
    says so, and every event re-plans the global queue."""

    name = "metasched"

    def __init__(self, placer: Placer | None = None, name: str = "metasched") -> None:
        self.placer = placer or Placer(hold_horizon_s=0.0)
        self.name = name
        self.held: dict[int, tuple[Job, Request]] = {}  # insertion order = priority order

    def views(self, sim: Sim) -> list[SiteView]:
        out = []
        for s in sim.sites:
            node = NodeView(
                f"{s.name}-n",
                (PARTITION,),
                True,
                cpus=1,
                free_cpus=s.free,
                mem_mb=1 << 20,
                free_mem_mb=1 << 20,
                count=s.nodes,
            )
            part = PartitionView(
                PARTITION, (node.name,), precisions=dict.fromkeys(s.precisions, 1.0)
            )
            running = [self._work(j) for j in s.running.values()]
            pending = [self._work(j) for j in s.queue]
            out.append(SiteView(s.name, True, [part], {node.name: node}, running, pending))
        return out

    def _work(self, job: Job) -> Work:
        w = job.work
        started = job.start == job.start  # not nan
        if not isinstance(w, Work) or w.running != started:
            w = Work(
                PARTITION,
                job.procs,
                job.procs,
                0,
                "",
                job.limit,
                job.submit,
                start_time=job.start if started else 0.0,
                user=job.user,
                job_id=str(job.id),
            )
            job.work = w
        return w

    def arrive(self, sim: Sim, job: Job, now: float) -> None:
        req = Request(job.id, job.user, _shape(job))
        self.held[job.id] = (job, req)
        self._plan(sim, now, new=job)

    def cycle(self, sim: Sim, now: float) -> None:
        if self.held:
            self._plan(sim, now)

    def _plan(self, sim: Sim, now: float, new: Job | None = None) -> None:
        reqs = [r for _, r in self.held.values()]
        decisions = self.placer.place(reqs, self.views(sim), now)
        idx = {s.name: s.idx for s in sim.sites}
        for d in decisions:
            job, _ = self.held[d.job_id]
            if job is new:
                job.est, job.est90 = d.estimate.start, d.estimate.start_p90
                job.point, job.est_site = d.estimate.point, d.site
            if getattr(d, "hold", False):
                continue
            del self.held[d.job_id]
            sim.forward(job, idx[d.site], now)

    def started(self, sim: Sim, job: Job, now: float) -> None:
        # As the daemon: the estimate given at submission, for the site it was made for
        # (where the job runs may differ: late binding follows capacity).
        if job.point == job.point:
            self.placer.calibration.observe(job.est_site, job.point - job.submit, now - job.submit)

    def finished(self, sim: Sim, job: Job, now: float) -> None:
        self.placer.runtimes.observe(job.user, job.run, job.limit)


class _KnownRuntimes(RuntimePredictor):
    """A RuntimePredictor told the true run time of the jobs whose user reads "user#id"
    (the ablation below tags them); every other job, and all learning, as the daemon's."""

    def __init__(self, truth: dict[str, float]) -> None:
        super().__init__()
        self.truth = truth

    def predict(self, user: str, limit_s: float) -> float:
        base, _, jid = user.partition("#")
        return self.truth[jid] if jid else super().predict(base, limit_s)

    def remaining(self, user: str, limit_s: float, started: float, now: float) -> float:
        base, _, jid = user.partition("#")
        if jid:
            return max(1.0, self.truth[jid] - (now - started))
        return super().remaining(base, limit_s, started, now)

    def observe(self, user: str, runtime_s: float, limit_s: float) -> None:
        super().observe(user.partition("#")[0], runtime_s, limit_s)


class MetaschedKnown(Metasched):
    """Ablation: `metasched` told the true run time of every running job (`running`), or of
    every job not yet started (`queued`: held in the global queue or pending at a site).
    It measures how much of the estimate error each kind of run-time prediction causes,
    i.e. the ceiling of a better predictor for that kind."""

    def __init__(self, known: str) -> None:
        self.truth: dict[str, float] = {}
        super().__init__(
            Placer(hold_horizon_s=0.0, runtimes=_KnownRuntimes(self.truth)),
            f"metasched-known-{known}",
        )
        self.known = known

    def _tag(self, job: Job, running: bool) -> str:
        if running != (self.known == "running"):
            return job.user
        self.truth.setdefault(str(job.id), max(1.0, min(job.run, job.limit)))
        return f"{job.user}#{job.id}"

    def _work(self, job: Job) -> Work:
        w = super()._work(job)
        user = self._tag(job, w.running)
        if w.user != user:
            w = job.work = dataclasses.replace(w, user=user)
        return w

    def arrive(self, sim: Sim, job: Job, now: float) -> None:
        req = Request(job.id, self._tag(job, False), _shape(job))
        self.held[job.id] = (job, req)
        self._plan(sim, now, new=job)
