"""The app shelf: publishing apps, turning `msub app run` into a job, and results.

Per call, on the caller's RPC thread. An app's run is an ordinary job from the moment it is
queued: its spec names the pinned app version, carries the checked parameters and a copy of
the version's recipes, and has the app's resources under the user's own options. Placement
then only sends it where one of the recipes can run (placement/offers.py), and the dispatcher
renders the script for the recipe of the site it goes to (dispatch.py).
"""

from __future__ import annotations

import posixpath
from typing import NamedTuple

from metasched import apps
from metasched.apps import AppError
from metasched.daemon.core import Activity, Core
from metasched.daemon.outputs import ANSWER_TIMEOUT_S, CHECKSUM_TIMEOUT_S, OutputRelay
from metasched.daemon.settings import Refused
from metasched.placement.offers import RecipeNeed, recipe_refusal
from metasched.placement.policy import gpus_per_node
from metasched.shelf_tables import AppExists, NotOwner, ShelfRecords
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

# The options an app fills in for a run when the user gives none (its [resources]).
_RESOURCES = (
    "nodes",
    "ntasks",
    "cpus_per_task",
    "mem_per_node_mb",
    "gpus_per_node",
    "gpu_type",
    "time_limit_minutes",
    "precision",
)


class Caller(NamedTuple):
    """Who is asking: admins see and may deprecate every app and result."""

    user: str
    admin: bool = False


class AppShelf(Activity):
    def __init__(self, core: Core, outputs: OutputRelay) -> None:
        super().__init__(core)
        self.records = ShelfRecords(core.store)
        self.outputs = outputs

    def _read(
        self, who: Caller, site: str, cmd: pb.ReadOutputCommand, timeout: float
    ) -> pb.OutputData:
        """A job's output looked at by the agent at its site, as the job's own user."""
        answer = self.outputs.ask(who.user, site, cmd, timeout)
        if answer.error:
            raise Refused("FAILED_PRECONDITION", f"at site {site}: {answer.error}")
        return answer

    # ---------------------------------------------------------------- apps

    def publish(self, user: str, definition: str) -> pb.App:
        try:
            app = apps.parse_definition(definition, owner=user)
        except AppError as e:
            raise Refused("INVALID_ARGUMENT", str(e)) from None
        for r in app.recipes:
            why = self._never_runnable(r)
            if why:
                raise Refused(
                    "FAILED_PRECONDITION", f"recipe {r.name}: no site can ever run it ({why})"
                )
        try:
            return self.records.publish(app)
        except AppExists as e:
            raise Refused("ALREADY_EXISTS", str(e)) from None
        except NotOwner as e:
            raise Refused("PERMISSION_DENIED", str(e)) from None

    def _never_runnable(self, r: pb.Recipe) -> str:
        """'' if a partition of some known site can run the recipe; else why none can.
        Like a submission, an app is not refused before any site has reported."""
        need = RecipeNeed.of(r)
        why: dict[str, str] = {}
        for site in self.sites.all():
            view = site.view_base
            if view is None or site.admin_state == "retired":
                continue
            reasons = []
            for p in view.partitions:
                refusal = recipe_refusal(
                    view.name, gpus_per_node(view, p), p.precisions, p.offers, need
                )
                if not refusal:
                    return ""
                reasons.append(refusal)
            why[site.name] = "; ".join(dict.fromkeys(reasons)) or "no partitions"
        return "; ".join(f"{s}: {w}" for s, w in sorted(why.items()))

    @staticmethod
    def visible(who: Caller, app: pb.App) -> bool:
        return who.admin or apps.visible_to(app.visibility, app.owner, list(app.users), who.user)

    def listing(self, who: Caller, include_deprecated: bool) -> list[pb.App]:
        """The newest version of each app the user may see (not deprecated, unless asked)."""
        newest: dict[str, pb.App] = {}
        runs: dict[str, int] = {}
        results: dict[str, int] = {}
        for app in self.records.all_versions():
            if not self.visible(who, app):
                continue
            runs[app.name] = runs.get(app.name, 0) + app.runs
            results[app.name] = results.get(app.name, 0) + app.results
            if include_deprecated or not app.deprecated_at:
                newest[app.name] = app  # oldest first: the last is the newest
        out = []
        for name, app in sorted(newest.items()):
            app.runs, app.results = runs[name], results[name]  # over every version
            out.append(app)
        return out

    def versions(self, who: Caller, name: str) -> list[pb.App]:
        found = [a for a in self.records.versions(name) if self.visible(who, a)]
        if not found:
            raise Refused("NOT_FOUND", f"no app {name!r}")
        return found

    def get(self, who: Caller, name: str, version: str) -> pb.App:
        """One version (newest not deprecated when version is ''), if the user may see it."""
        if version:
            app = self.records.get(name, version)
            if app is None or not self.visible(who, app):
                raise Refused("NOT_FOUND", f"no app {f'{name}@{version}'!r}")
            return app
        found = self.versions(who, name)
        current = [a for a in found if not a.deprecated_at]
        if not current:
            raise Refused(
                "FAILED_PRECONDITION",
                f"every version of {name!r} is deprecated"
                f" ({found[-1].deprecation or 'no reason given'}); name a version to run it anyway",
            )
        return current[-1]

    def deprecate(self, who: Caller, name: str, version: str, note: str) -> list[pb.App]:
        found = self.versions(who, name)
        if found[0].owner != who.user and not who.admin:
            raise Refused("PERMISSION_DENIED", f"app {name!r} belongs to {found[0].owner}")
        if version and not any(a.version == version for a in found):
            raise Refused("NOT_FOUND", f"no app {f'{name}@{version}'!r}")
        return self.records.deprecate(name, version, note)

    # ---------------------------------------------------------------- runs

    def prepare_run(self, who: Caller, spec: pb.JobSpec) -> pb.JobSpec:
        """The job spec of a run: pinned version, typed parameters, the app's resources under
        the user's options, its recipes, and a stand-in script until it has a site."""
        if spec.app_recipes:
            raise Refused("INVALID_ARGUMENT", "app_recipes are the daemon's to fill in")
        if spec.script:
            raise Refused("INVALID_ARGUMENT", "an app's run brings no script of its own")
        try:
            name, _ = apps.split_ref(spec.app)
        except AppError as e:
            raise Refused("INVALID_ARGUMENT", str(e)) from None
        app = self.get(who, name, spec.app_version)
        try:
            params = apps.resolve_params(app, dict(spec.app_params))
        except AppError as e:
            raise Refused("INVALID_ARGUMENT", str(e)) from None
        out = pb.JobSpec()
        out.CopyFrom(spec)
        for field in _RESOURCES:
            if not getattr(out, field) and getattr(app.resources, field):
                setattr(out, field, getattr(app.resources, field))
        out.app_version = app.version
        out.app_params.clear()
        out.app_params.update(params)
        out.app_recipes.extend(app.recipes)
        out.name = out.name or app.name
        out.script = apps.stub_script(apps.ref(app))
        return out

    # ---------------------------------------------------------------- results

    def publish_result(self, who: Caller, req: pb.PublishResultRequest) -> pb.Result:
        job = self.store.job(req.job_id)
        if job is None or (job.user != who.user and not who.admin):
            raise Refused("NOT_FOUND", f"no job {req.job_id} of yours")
        if not job.spec.app:
            raise Refused("FAILED_PRECONDITION", f"job {job.id} is not an app's run")
        if job.state != JobState.COMPLETED:
            raise Refused(
                "FAILED_PRECONDITION",
                f"job {job.id} is {job.state}: only a completed run's outputs can be published",
            )
        app = self.records.get(job.spec.app, job.spec.app_version)
        assert app is not None  # versions are never removed
        files = list(req.files) or list(app.outputs)
        if not files:
            raise Refused(
                "INVALID_ARGUMENT", f"{apps.ref(app)} declares no outputs: name the files (--file)"
            )
        for f in files:
            if not f or "\x00" in f or "\n" in f or len(f) > 1024:
                raise Refused("INVALID_ARGUMENT", f"bad file name {f[:60]!r}")
            if f.startswith("/") or ".." in posixpath.normpath(f).split("/"):
                raise Refused(
                    "INVALID_ARGUMENT", f"{f!r}: files are relative to the run's directory"
                )
        visibility = req.visibility or app.visibility
        if visibility not in apps.VISIBILITIES:
            choices = ", ".join(apps.VISIBILITIES)
            raise Refused("INVALID_ARGUMENT", f"visibility must be one of {choices}")
        cmd = pb.ReadOutputCommand(
            job_id=job.id,
            attempt=job.attempt,
            user=job.user,
            spec=pb.JobSpec(workdir=job.spec.workdir),
            checksum=files,
        )
        answer = self._read(who, job.site, cmd, CHECKSUM_TIMEOUT_S)
        res = pb.Result(
            job_id=job.id,
            owner=job.user,
            app=apps.ref(app),
            recipe=job.recipe,
            params=dict(job.spec.app_params),
            site=job.site,
            files=list(answer.files),
            description=req.description[:4096],
            visibility=visibility,
            users=list(req.users) if visibility == "users" else [],
        )
        return self.records.publish_result(res)

    @staticmethod
    def visible_result(who: Caller, res: pb.Result) -> bool:
        return who.admin or apps.visible_to(res.visibility, res.owner, list(res.users), who.user)

    def results(self, who: Caller, app: str) -> list[pb.Result]:
        return [r for r in self.records.results(app) if self.visible_result(who, r)]

    def result(self, who: Caller, result_id: int) -> pb.Result:
        res = self.records.result(result_id)
        if res is None or not self.visible_result(who, res):
            raise Refused("NOT_FOUND", f"no result {result_id}")
        return res

    def fetch(self, who: Caller, req: pb.FetchResultRequest) -> pb.FetchResultResponse:
        """Part of one of a result's files, read at its site as the job's own user."""
        res = self.result(who, req.id)
        if req.file:
            chosen = [f for f in res.files if req.file in (f.path, posixpath.basename(f.path))]
        else:
            chosen = list(res.files) if len(res.files) == 1 else []
        if len(chosen) != 1:
            names = ", ".join(f.path for f in res.files)
            raise Refused("INVALID_ARGUMENT", f"name one file of result {res.id}: {names}")
        f = chosen[0]
        cmd = pb.ReadOutputCommand(
            job_id=res.job_id,
            user=res.owner,
            path=f.path,
            offset=req.offset,
            max_bytes=req.max_bytes,  # the agent caps it (agent/output.py)
        )
        answer = self._read(who, res.site, cmd, ANSWER_TIMEOUT_S)
        if req.offset == 0:
            self.records.count_fetch(res.id)
        return pb.FetchResultResponse(
            data=answer.data, offset=answer.offset, size=answer.size, file=f
        )
