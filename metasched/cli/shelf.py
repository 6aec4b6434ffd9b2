"""msub app ... and msub result ...: the app shelf (docs/apps.md).

msub app publish app.toml                  a new app, or a new version of yours
msub app list [--all]                      the newest version of each app you may see
msub app show NAME[@VERSION]               one version: parameters, resources, recipes
msub app versions NAME                     every version, deprecated ones too
msub app run NAME[@VERSION] [--param k=v]... [--no-wait] [sbatch and msub options]
                                           placed like any job (any option msub takes)
msub app plan NAME[@VERSION] [same options]   where it would run, with which recipe
msub app deprecate NAME[@VERSION] [--note TEXT]
msub app publish-result JOB [--file PATH]... [--description TEXT] [--visibility V]
msub result list [APP]     msub result show ID     msub result fetch ID [--file F] [-o DEST]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metasched.cli import jsonout, msub
from metasched.cli.errors import UsageError
from metasched.sbatch.options import Arg, Kind, Option
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

Out = Callable[[str], None]
APP_COMMANDS = ("publish", "list", "show", "versions", "run", "plan", "deprecate", "publish-result")
RESULT_COMMANDS = ("list", "show", "fetch")
FETCH_CHUNK = 1 << 20


class ShelfClient(msub.Client):
    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.shelf = pb_grpc.ShelfStub(self.channel)

    def shelf_call(self, method: str, request: Any, timeout: float = 60) -> Any:
        return getattr(self.shelf, method)(request, metadata=self.metadata, timeout=timeout)


def _parser(command: str) -> argparse.ArgumentParser:
    p = msub._Parser(
        prog=f"msub {command}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--daemon", default=os.environ.get("METASCHED_DAEMON", msub.DEFAULT_DAEMON))
    return p


def _params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"bad --param {item!r}: use NAME=VALUE")
        out[name] = value
    return out


# msub app run|plan's own options, beside every option msub takes (sbatch's and msub's)
PARAM = Option("param", "", Arg.REQUIRED, Kind.MSUB, "NAME=VALUE, a parameter (repeatable)")
NO_WAIT = Option("no-wait", "", Arg.NONE, Kind.MSUB, "answer before placement has decided")
RUN_OPTIONS = (PARAM, NO_WAIT)


def _run_request(sub: str, args: list[str]) -> tuple[msub.Submission, str, bool]:
    """msub app run|plan NAME[@VERSION] [options] (options before or after it): the
    submission (the job spec of a run: the sbatch options as msub reads them, and the app),
    the app's name as given, and whether to answer without waiting for placement."""
    s = msub.parse_submission(args, app_options=RUN_OPTIONS)
    if s.msub.help:
        return s, "", False
    if len(s.words) != 1:
        raise UsageError(f"msub app {sub} takes one app: NAME[@VERSION] [options]")
    ref = s.words[0]
    name, _, version = ref.partition("@")
    s.spec.app, s.spec.app_version = name, version
    s.spec.app_params.update(_params([g.value or "" for g in s.own if g.option is PARAM]))
    return s, ref, any(g.option is NO_WAIT for g in s.own)


def _dump(msg: Any, out: Out) -> None:
    out(jsonout.dumps(msg))


def _app_lines(a: pb.App) -> list[str]:
    lines = [
        f"{a.name}@{a.version}  owner {a.owner}  {a.visibility}"
        + (f" ({', '.join(a.users)})" if a.users else ""),
        f"  {a.description}" if a.description else "",
        f"  published {msub.stamp(a.published_at)}; {a.runs} run(s), {a.results} result(s)",
    ]
    if a.deprecated_at:
        lines.append(f"  DEPRECATED {msub.stamp(a.deprecated_at)}: {a.deprecation}")
    r = a.resources
    shape = [
        f"{r.nodes or 1} node(s)",
        f"{r.cpus_per_task or 1} CPU(s)/task",
        f"{r.time_limit_minutes or 60} min",
    ]
    if r.gpus_per_node:
        shape.append(f"{r.gpus_per_node} {r.gpu_type or 'GPU'}(s)/node")
    if r.precision:
        shape.append(r.precision)
    lines.append("  resources: " + ", ".join(shape))
    for p in a.params:
        default = f" = {p.default}" if p.has_default else " (required)"
        choices = f" one of {', '.join(p.choices)}" if p.choices else ""
        lines.append(f"  param {p.name}: {p.type}{choices}{default}  {p.description}".rstrip())
    for rc in a.recipes:
        where = [f"sites {','.join(rc.sites)}"] if rc.sites else []
        if rc.accelerator:
            where.append(f"accelerator {rc.accelerator}")
        if rc.precision:
            where.append(f"precision {rc.precision}")
        needs = [f"module {m}" for m in rc.modules] + [f"path {p}" for p in rc.paths]
        if rc.container:
            needs.append(f"container {rc.container}")
        lines.append(
            f"  recipe {rc.name}: {'; '.join(where) or 'any site'}"
            + (f"; needs {', '.join(needs)}" if needs else "")
        )
        lines.append(f"    {rc.command}")
    if a.outputs:
        lines.append(f"  outputs: {', '.join(a.outputs)}")
    return [line for line in lines if line]


def app_main(c: ShelfClient | None, sub: str, args: list[str], out: Out) -> int:
    if sub in ("run", "plan"):
        return _run_main(c, sub, args, out)
    p = _parser(f"app {sub}")
    if sub == "publish":
        p.add_argument("file")
    elif sub == "list":
        p.add_argument("--all", action="store_true", help="deprecated apps too")
    elif sub in ("show", "versions", "deprecate"):
        p.add_argument("app")
        if sub == "deprecate":
            p.add_argument("--note", default="")
    elif sub == "publish-result":
        p.add_argument("job_id", type=msub._positive("job id", 2**63 - 1))
        p.add_argument("--file", action="append", help="an output (default: the app's)")
        p.add_argument("--description", default="")
        p.add_argument("--visibility", default="", help="private, users or public")
        p.add_argument("--user", action="append", help="with --visibility users")
    o = p.parse_args(args)
    c = c or ShelfClient(o.daemon)
    if sub == "publish":
        try:
            text = Path(o.file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {o.file}: {e}") from None
        app = c.shelf_call("PublishApp", pb.PublishAppRequest(definition=text))
        if o.json:
            _dump(app, out)
        else:
            out(f"Published {app.name}@{app.version} ({app.visibility})")
        return 0
    if sub in ("list", "versions"):
        listing = pb.ListAppsRequest(include_deprecated=sub == "versions" or o.all)
        if sub == "versions":
            listing.name = o.app
        apps = c.shelf_call("ListApps", listing).apps
        if o.json:
            out(jsonout.dumps(list(apps)))
            return 0
        out(f"{'APP':<28} {'OWNER':<12} {'VISIBILITY':<10} {'RUNS':>5} {'RESULTS':>7}  DESCRIPTION")
        for a in apps:
            tag = " (deprecated)" if a.deprecated_at else ""
            out(
                f"{a.name + '@' + a.version:<28} {a.owner:<12} {a.visibility:<10} "
                f"{a.runs:>5} {a.results:>7}  {a.description}{tag}"
            )
        return 0
    if sub == "show":
        name, _, version = o.app.partition("@")
        app = c.shelf_call("GetApp", pb.GetAppRequest(name=name, version=version))
        if o.json:
            _dump(app, out)
        else:
            for line in _app_lines(app):
                out(line)
        return 0
    if sub == "deprecate":
        name, _, version = o.app.partition("@")
        resp = c.shelf_call(
            "DeprecateApp", pb.DeprecateAppRequest(name=name, version=version, note=o.note)
        )
        if o.json:
            out(jsonout.dumps(list(resp.apps)))
        else:
            for a in resp.apps:
                out(f"{a.name}@{a.version} deprecated: {a.deprecation or '(no note)'}")
        return 0
    # publish-result
    req = pb.PublishResultRequest(
        job_id=o.job_id,
        files=o.file or [],
        description=o.description,
        visibility=o.visibility,
        users=o.user or [],
    )
    res = c.shelf_call("PublishResult", req)
    if o.json:
        _dump(res, out)
    else:
        out(f"Published result {res.id} of job {res.job_id} ({res.app}, {res.visibility})")
        for f in res.files:
            out(f"  {f.path}  {f.size} bytes  sha256 {f.sha256}")
    return 0


def _result_lines(r: pb.Result) -> list[str]:
    params = " ".join(f"{k}={v}" for k, v in sorted(r.params.items()))
    lines = [
        f"result {r.id}: {r.app} recipe {r.recipe} at {r.site}, job {r.job_id} of {r.owner}",
        f"  params: {params}" if params else "",
        f"  {r.description}" if r.description else "",
        f"  {r.visibility}; published {msub.stamp(r.published_at)}; fetched {r.fetches} time(s)",
    ]
    lines += [f"  {f.path}  {f.size} bytes  sha256 {f.sha256}" for f in r.files]
    return [line for line in lines if line]


def _run_main(c: ShelfClient | None, sub: str, args: list[str], out: Out) -> int:
    """msub app run|plan: placed like any job, with every option msub takes (-p, -t, --gres,
    --array, --dependency, --parsable, -W, --test-only, --json...)."""
    s, ref, no_wait = _run_request(sub, args)
    if s.msub.help:
        out(__doc__ or "")
        return 0
    c = c or ShelfClient(s.daemon)
    if sub == "run" and not s.msub.test_only:
        resp = c.call("SubmitJob", pb.SubmitJobRequest(spec=s.spec, no_wait=no_wait))
        if s.json:
            _dump(resp, out)
        elif s.msub.parsable:
            out(str(resp.job_id))
        elif not s.msub.quiet:
            est = resp.estimate
            where = f" to site {est.site}" if est.site else ""
            out(f"Submitted job {resp.job_id} ({ref}){where}; {msub.estimate_text(est)}")
        if s.msub.wait:
            quiet = s.json or s.msub.parsable or s.msub.quiet
            return msub.wait_for(c, resp.job_id, bool(s.spec.array), quiet=quiet, out=out)
        return 0
    resp = c.call("Plan", pb.PlanRequest(spec=s.spec))
    if s.json:
        _dump(resp, out)
        return 0
    out(f"{'SITE':<16} {'PARTITION':<12} {'RECIPE':<12} {'EXPECTED START':<20} WHY NOT")
    for ch in resp.choices:
        if ch.eligible and ch.estimate.start:
            out(
                f"{ch.site:<16} {ch.estimate.partition:<12} {ch.recipe:<12} "
                f"{msub.when(ch.estimate.start):<20}"
            )
        else:
            out(f"{ch.site:<16} {'-':<12} {'-':<12} {'-':<20} {ch.reason}")
    return 0


def result_main(c: ShelfClient | None, sub: str, args: list[str], out: Out) -> int:
    p = _parser(f"result {sub}")
    if sub == "list":
        p.add_argument("app", nargs="?", default="")
    else:
        p.add_argument("id", type=msub._positive("result id", 2**63 - 1))
    if sub == "fetch":
        p.add_argument("--file", default="", help="which file (when the result has several)")
        p.add_argument("-o", "--output", default="", help="where to write it (- = stdout)")
        p.add_argument("--force", action="store_true", help="overwrite DEST")
    o = p.parse_args(args)
    c = c or ShelfClient(o.daemon)
    if sub == "list":
        results = c.shelf_call("ListResults", pb.ListResultsRequest(app=o.app)).results
        if o.json:
            out(jsonout.dumps(list(results)))
            return 0
        out(f"{'ID':>5} {'APP':<24} {'OWNER':<12} {'SITE':<10} {'FETCHES':>7}  FILES")
        for r in results:
            names = ", ".join(os.path.basename(f.path) for f in r.files)
            out(f"{r.id:>5} {r.app:<24} {r.owner:<12} {r.site:<10} {r.fetches:>7}  {names}")
        return 0
    if sub == "show":
        r = c.shelf_call("GetResult", pb.GetResultRequest(id=o.id))
        if o.json:
            _dump(r, out)
        else:
            for line in _result_lines(r):
                out(line)
        return 0
    return _fetch(c, o, out)


def _fetch(c: ShelfClient, o: argparse.Namespace, out: Out) -> int:
    """Fetch a result's file in chunks and check it against the sha256 it was published with."""
    first = c.shelf_call(
        "FetchResult", pb.FetchResultRequest(id=o.id, file=o.file, max_bytes=FETCH_CHUNK)
    )
    f = first.file
    dest = o.output or os.path.basename(f.path)
    to_stdout = dest == "-"
    if not to_stdout and os.path.exists(dest) and not o.force:
        raise UsageError(f"{dest} exists (--force to overwrite, -o to choose another name)")
    digest = hashlib.sha256()
    chunks = []
    resp = first
    got = 0
    while True:
        digest.update(resp.data)
        chunks.append(resp.data)
        got += len(resp.data)
        if not resp.data or got >= f.size:
            break
        resp = c.shelf_call(
            "FetchResult",
            pb.FetchResultRequest(id=o.id, file=f.path, offset=got, max_bytes=FETCH_CHUNK),
        )
    if got != f.size or digest.hexdigest() != f.sha256:
        raise UsageError(
            f"{f.path} has changed since it was published (sha256 or size differ): not written"
        )
    data = b"".join(chunks)
    if to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    Path(dest).write_bytes(data)
    if o.json:
        out(
            json.dumps(
                {"result": o.id, "path": f.path, "written": dest, "size": got, "sha256": f.sha256}
            )
        )
    else:
        out(f"Fetched {f.path} ({got} bytes, sha256 checked) -> {dest}")
    return 0


def main(kind: str, args: list[str], out: Out) -> int:
    commands = APP_COMMANDS if kind == "app" else RESULT_COMMANDS
    if not args or args[0] not in commands:
        raise UsageError(f"msub {kind} takes one of: {', '.join(commands)}")
    sub = args.pop(0)
    if kind == "app":
        return app_main(None, sub, args, out)
    return result_main(None, sub, args, out)
