"""Users' requests: submit, plan, cancel. Runs per call: a submission is admitted and awaited
on the gRPC event loop (admit, enqueue); the rest blocks, on the calls' pool.

A submission is checked (the spec itself, then whether any known site could ever run it and
the user has an account there), written QUEUED in one durable transaction, and only then
acknowledged; placement takes it from there.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

from metasched import jobspec, shelf_tables
from metasched.arrays import ArraySpec
from metasched.daemon import tasks
from metasched.daemon.core import Activity, Core
from metasched.daemon.placing import PlacementPass
from metasched.daemon.settings import Refused
from metasched.daemon.shelf import AppShelf, Caller
from metasched.daemon.sites import SiteRegistry
from metasched.daemon.views import request_of_spec, site_views
from metasched.daemon.waiting import HELD_BY_ADMIN, HELD_BY_USER, WaitingJobs
from metasched.placement.policy import Choice, Request, site_refusal
from metasched.states import JobState
from metasched.store import Batch, IllegalTransition, JobRow
from metasched.v1 import metasched_pb2 as pb

S = JobState


def never_runnable(sites: SiteRegistry, req: Request) -> str | None:
    """None if some known site could run this shape some day; else why none can."""
    why: dict[str, str] = {}
    any_site = False
    for site in sites.all():
        if site.view_base is None or site.admin_state == "retired":
            continue
        any_site = True
        parts, reason = site_refusal(site.view_base, req, shape_only=True)
        if parts:
            return None
        why[site.name] = reason
    if not any_site:
        return None  # no site has reported yet: keep it, placement will tell
    detail = "; ".join(f"{s}: {r}" for s, r in sorted(why.items()))
    return f"no site can ever run this job ({detail})"


def no_account(sites: SiteRegistry, req: Request) -> str | None:
    """None if the user has an account at some site that could run this shape; else why not.

    Sites map global users to local accounts (the agent's [users]); a job whose user is
    mapped nowhere it could run would wait forever, so it is refused with the reason."""
    why: dict[str, str] = {}
    for site in sites.all():
        base = site.view_base
        if base is None or site.admin_state == "retired":
            continue
        parts, reason = site_refusal(base, req, shape_only=True)
        if not parts:
            why[site.name] = reason
        elif base.mapped_users is None or req.user in base.mapped_users:
            return None
        else:
            why[site.name] = "not mapped"
    if "not mapped" not in why.values():
        return None  # nothing reported yet, or no site fits at all (said elsewhere)
    detail = "; ".join(f"{s}: {r}" for s, r in sorted(why.items()))
    return f"user {req.user} has no account at any site that could run this job ({detail})"


def is_app_run(spec: pb.JobSpec) -> bool:
    """Whether the spec names an app (or forges its fields): admitting it reads the shelf."""
    return bool(spec.app or spec.app_recipes or spec.app_version or spec.app_params)


class Intake(Activity):
    def __init__(
        self, core: Core, placement: PlacementPass, waiting: WaitingJobs, shelf: AppShelf
    ) -> None:
        super().__init__(core)
        self.placement = placement
        self.waiting = waiting
        self.shelf = shelf

    def _run_of_app(self, user: str, spec: pb.JobSpec) -> pb.JobSpec:
        """An app's run becomes an ordinary spec (shelf.prepare_run); others are as given."""
        if is_app_run(spec):
            if not spec.app:
                raise Refused("INVALID_ARGUMENT", "app fields without an app")
            return self.shelf.prepare_run(Caller(user), spec)
        return spec

    def _valid(self, spec: pb.JobSpec) -> pb.JobSpec:
        try:
            return jobspec.validate(spec, self.settings.max_script_bytes)
        except jobspec.SpecError as e:
            raise Refused("INVALID_ARGUMENT", str(e)) from None

    def retried(self, user: str, spec: pb.JobSpec) -> JobRow | None:
        """The job an earlier submission with this idempotency key made (a retry whose answer
        was lost gets it, not a second job), or None. Two at once with one key are told apart
        by the store's writer."""
        return self.store.job_of_key(user, spec.submit_key) if spec.submit_key else None

    def admit(self, user: str, spec: pb.JobSpec) -> pb.JobSpec:
        """The spec as it will be queued (checked, normalised; an app's run made an ordinary
        spec); Refused, with the reason, when it will not be. Memory only, tens of
        microseconds, except for an app's run (is_app_run: it reads the shelf's tables): the
        asyncio server calls it on its event loop, an app's run on the calls' pool."""
        spec = self._valid(self._run_of_app(user, spec))
        for name in [*spec.sites, *spec.exclude_sites]:
            if self.sites.get(name) is None:
                raise Refused("INVALID_ARGUMENT", f"unknown site {name!r}")
        req = request_of_spec(user, spec)
        reasons = never_runnable(self.sites, req) or no_account(self.sites, req)
        if reasons is not None:
            raise Refused("FAILED_PRECONDITION", reasons)
        array = jobspec.parse_array(spec.array) if spec.array else None
        count = array.count if array else 1
        if self.store.count_live(user) + count > self.settings.max_queued_per_user:
            raise Refused(
                "RESOURCE_EXHAUSTED",
                f"user {user} already has {self.store.count_live(user)} jobs queued"
                + (f" and this array has {count} tasks" if array else "")
                + f" (the limit is {self.settings.max_queued_per_user})",
            )
        return spec

    def enqueue(self, user: str, spec: pb.JobSpec) -> Future[JobRow]:
        """Queue an admitted spec: the future resolves once the job (an array: its first task)
        is durable (acknowledge it then, not before), and wakes the placement pass."""
        fut: Future[JobRow]
        if spec.app or spec.array or spec.dependency or spec.begin_time or spec.hold:
            # one transaction for the whole array, its dependencies checked in it (and an
            # app's runs counted in it)
            array = jobspec.parse_array(spec.array) if spec.array else None
            fut = self.store.write(lambda b: self._insert(b, user, spec, array))
        else:
            fut = self.store.insert(user, spec)
        fut.add_done_callback(lambda _: self.placement.wake.set())
        return fut

    def submit(self, user: str, spec: pb.JobSpec, wait_placement: float = 0.0) -> JobRow:
        job = self.retried(user, spec) or self.enqueue(user, self.admit(user, spec)).result(60)
        if wait_placement > 0:
            job = self.placement.wait_placed(job.id, wait_placement)
        return job

    def _insert(self, b: Batch, user: str, spec: pb.JobSpec, array: ArraySpec | None) -> JobRow:
        """A job (or an array's tasks) that may wait: QUEUED if nothing holds it now, else
        WAITING with the reason; refused if its dependency can never be satisfied."""
        if spec.submit_key:  # a retry that came in while the first was being written
            made = b.job_of_key(user, spec.submit_key)
            if made is not None:
                return made
        now = b.now
        first = array.tasks[0] if array else 0
        probe = JobRow(0, user, spec, S.WAITING, now, now, held=spec.hold, array_task=first)
        verdict, reason, _ = self.waiting.evaluate(b, probe, now)
        if verdict == "never" and not spec.keep_invalid_dependency:
            raise Refused(
                "FAILED_PRECONDITION",
                reason.replace("DependencyNeverSatisfied: ", "the dependency can never be met: "),
            )
        # An array whose tasks wait on tasks of another (aftercorr) is settled task by task.
        state = S.QUEUED if verdict == "ready" and not (array and spec.dependency) else S.WAITING
        reason = reason or ("Dependency: checking each task" if state == S.WAITING else "")
        if array is None:
            job = b.insert_held(user, spec, state, reason, spec.hold)
        else:
            tasks, limit = array.tasks, array.max_running
            job = b.insert_array(user, spec, tasks, limit, state, reason, spec.hold)[0]
        if spec.app:
            shelf_tables.count_runs(b, spec.app, spec.app_version, len(array.tasks) if array else 1)
        return job

    def cancel_named(self, user: str, admin: bool, names: list[str]) -> list[JobRow]:
        """Cancel every job the names stand for ("17", "17_5", "17_[1-100]") in one
        transaction; a task or job already ended is left as it is (a single named job that
        has ended is refused, as cancel does)."""
        jobs = self.named(user, admin, names)
        if len(jobs) == 1 and jobs[0].state.is_final and not jobs[0].array_id:
            raise Refused(
                "FAILED_PRECONDITION", f"job {jobs[0].id} has already ended ({jobs[0].state})"
            )

        def op(b: Batch) -> list[JobRow]:
            out = []
            for named in jobs:
                job = b.job(named.id)
                if job.state in (S.QUEUED, S.WAITING):
                    job = b.move(job.id, S.CANCELLED, "cancelled by the user before placement")
                elif not job.state.is_final and job.state != S.CANCELLING:
                    job = b.move(job.id, S.CANCELLING, "cancel requested", cancel_requested=True)
                out.append(job)
            return out

        out = self.store.run(op)
        self.dispatch.cancel_many([j for j in out if j.state == S.CANCELLING])
        return out

    def hold_named(
        self, user: str, admin: bool, names: list[str], release: bool, as_admin: bool = False
    ) -> list[JobRow]:
        """Hold (release=False) or release the named jobs still in the global queue; a held job
        is WAITING until released. Tasks already at a site are left alone; naming only jobs
        that are not in the global queue is refused. as_admin: an admin's hold, which only an
        admin releases (Slurm's JobHeldAdmin), and an admin's release, which releases any."""
        jobs = self.named(user, admin, names)
        now_states = (S.WAITING,) if release else (S.QUEUED, S.WAITING)
        who = "an admin" if as_admin else "the user"

        def op(b: Batch) -> list[JobRow]:
            out = []
            for named in jobs:
                job = b.job(named.id)
                if job.state not in now_states:
                    continue
                try:
                    if release:
                        if not job.held or (job.admin_held and not as_admin):
                            continue
                        job = self._release(b, job, who)
                    else:
                        if job.held and (job.admin_held or not as_admin):
                            continue
                        job = b.move(
                            job.id,
                            S.WAITING,
                            f"held by {who}",
                            held=True,
                            admin_held=as_admin,
                            reason=HELD_BY_ADMIN if as_admin else HELD_BY_USER,
                        )
                except IllegalTransition:
                    continue
                out.append(job)
            if not out:
                j = jobs[0]
                what = "released" if release else "held"
                code = "FAILED_PRECONDITION"
                if release and j.admin_held and not as_admin:
                    code = "PERMISSION_DENIED"
                    why = (
                        f"job {tasks.display_id(j)} is held by an admin; only an admin releases it"
                    )
                elif release:
                    why = f"job {tasks.display_id(j)} is not held"
                elif j.state.is_final:
                    why = f"job {tasks.display_id(j)} has already ended ({j.state})"
                elif j.held:
                    why = f"job {tasks.display_id(j)} is already held"
                else:
                    why = (
                        f"job {tasks.display_id(j)} is already at site {j.site} ({j.state}); "
                        "only jobs still in the global queue can be held"
                    )
                raise Refused(code, f"nothing {what}: {why}")
            return out

        return self.store.run(op)

    def _release(self, b: Batch, job: JobRow, who: str) -> JobRow:
        unheld = b.move(job.id, S.WAITING, f"released by {who}", held=False, admin_held=False)
        verdict, reason, _ = self.waiting.evaluate(b, unheld, b.now)
        if verdict == "ready":
            return b.move(job.id, S.QUEUED, "released: nothing holds it now", reason="")
        if reason != unheld.reason:
            return b.move(job.id, S.WAITING, "", reason=reason)
        return unheld

    def named(self, user: str, admin: bool, names: list[str]) -> list[JobRow]:
        try:
            refs = tasks.parse_refs(names)
            found: dict[int, JobRow] = {}
            for ref in refs:
                for job in tasks.jobs_named(self.store, ref):
                    found[job.id] = job
        except tasks.BadRef as e:
            code = "INVALID_ARGUMENT" if str(e).startswith("bad") else "NOT_FOUND"
            raise Refused(code, str(e)) from None
        for job in found.values():
            if job.user != user and not admin:
                raise Refused("PERMISSION_DENIED", f"job {tasks.display_id(job)} is not yours")
        return sorted(found.values(), key=lambda j: j.id)

    def plan(self, user: str, spec: pb.JobSpec) -> list[Choice]:
        req = request_of_spec(user, self._valid(self._run_of_app(user, spec)))
        now = time.time()
        return self.placer.plan(req, site_views(self.sites, self.store, now), now)

    def cancel(self, job_id: int) -> JobRow:
        def op(b: Batch) -> JobRow:
            job = b.job(job_id)
            if job.state.is_final:
                raise Refused(
                    "FAILED_PRECONDITION", f"job {job_id} has already ended ({job.state})"
                )
            if job.state in (S.QUEUED, S.WAITING):
                return b.move(job_id, S.CANCELLED, "cancelled by the user before placement")
            if job.state == S.CANCELLING:
                return job
            return b.move(job_id, S.CANCELLING, "cancel requested", cancel_requested=True)

        job = self.store.run(op)
        if job.state == S.CANCELLING:
            self.dispatch.cancel(job)
        return job
