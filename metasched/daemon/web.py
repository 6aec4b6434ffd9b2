"""metaschedd's HTTP side (http_listen): /metrics for Prometheus, /healthz for load
balancers and the status page: the pool by site and precision, the global queue, the
caller's own jobs and usage over time. Server-rendered HTML with inline SVG; no script,
no external file (the page works on an air-gapped network).

The page is read-only. Unless status_public is set it needs a login: a metasched user token
(metasched-admin token create), sent as 'Authorization: Bearer ...' or given once to the
login form, which keeps it in an HttpOnly cookie. The metrics hold no user's name.
"""

from __future__ import annotations

import html
import threading
import time
import urllib.parse
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from metasched import auth, log
from metasched.daemon.health import StoreHealth
from metasched.daemon.identity import Identity
from metasched.daemon.metrics import DaemonMetrics, site_use
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.usage import hourly_by_site
from metasched.daemon.user_api import site_summaries
from metasched.states import JobState

COOKIE = "metasched_token"
USAGE_HOURS = 24
_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1")
MAX_BODY = 4096


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def wait_text(seconds: float, state: str) -> str:
    """A site's estimated wait: "now" only when a one-core job would start there at once."""
    if state != "online" or seconds < 0:
        return "-"
    if seconds == 0:
        return "now"
    if seconds < 60:
        return "< 1 min"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class StatusPage:
    """The page's content, from the same places the API answers from."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler

    def render(self, user: str | None, public: bool) -> str:
        now = time.time()
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            "<title>metasched: the pool</title><style>",
            "body{font-family:sans-serif;margin:1.5em;color:#222}"
            "table{border-collapse:collapse;margin-bottom:1.5em}"
            "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
            "th{background:#eee}td.l,th.l{text-align:left}"
            ".offline{color:#a00}.online{color:#070}",
            "</style></head><body>",
            f"<h1>metasched federation {esc(self.s.federation)}</h1>",
            f"<p id='generated'>as of {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}"
            + (f" &middot; signed in as <b id='user'>{esc(user)}</b>" if user else "")
            + "</p>",
        ]
        parts += self._pool(now)
        parts += self._queue(now, show_names=user is not None)
        if user:
            parts += self._own_jobs(user)
        elif public:
            parts.append("<p><a href='/login'>Sign in</a> to see your own jobs.</p>")
        parts += self._usage(now)
        parts.append("</body></html>")
        return "".join(parts)

    def _pool(self, now: float) -> list[str]:
        out = [
            "<h2>The pool, by site and precision</h2><table id='pool'><tr>"
            "<th class='l'>site</th><th class='l'>state</th><th class='l'>precision</th>"
            "<th>nodes</th><th>CPUs in use</th><th>GPUs in use</th><th>load</th>"
            "<th>queue</th><th>est. wait</th></tr>"
        ]
        for summary in site_summaries(self.s, now):
            site = self.s.sites.get(summary.name)
            if site is None or site.report is None:
                continue
            use = site_use(site.report)
            queue = summary.pending_jobs
            for prec, p in sorted(use.precisions.items()):
                load = p["cpus_alloc"] / p["cpus_total"] if p["cpus_total"] else 0.0
                key = f"{summary.name}/{prec}"
                wait = wait_text(summary.est_wait_seconds, summary.state)
                out.append(
                    f"<tr class='site-precision' data-key='{esc(key)}'>"
                    f"<td class='l' data-field='site'>{esc(summary.name)}</td>"
                    f"<td class='l {esc(summary.state)}' data-field='state'>"
                    f"{esc(summary.state)}</td>"
                    f"<td class='l' data-field='precision'>{esc(prec)}</td>"
                    f"<td data-field='nodes'>{p['nodes']}</td>"
                    f"<td data-field='cpus'>{p['cpus_alloc']} / {p['cpus_total']}</td>"
                    f"<td data-field='gpus'>{p['gpus_alloc']} / {p['gpus_total']}</td>"
                    f"<td>{_bar(load)}</td>"
                    f"<td data-field='queue'>{queue}</td>"
                    f"<td data-field='wait'>{esc(wait)}</td></tr>"
                )
        out.append("</table>")
        return out

    def _queue(self, now: float, show_names: bool) -> list[str]:
        live = sorted(self.s.store.live.values(), key=lambda j: j.id)
        counts = Counter(j.state for j in live)
        out = ["<h2>The global queue</h2><table id='queue-counts'><tr>"]
        shown = [s for s in JobState if not s.is_final]
        out += [f"<th>{esc(s.value.lower())}</th>" for s in shown]
        out.append("</tr><tr>")
        out += [f"<td data-state='{esc(s.value.lower())}'>{counts.get(s, 0)}</td>" for s in shown]
        out.append("</tr></table>")
        waiting = [j for j in live if j.state == JobState.QUEUED][:50]
        if waiting:
            out.append(
                "<table id='queued'><tr><th>job</th><th class='l'>user</th>"
                "<th class='l'>best site</th><th>expected start</th></tr>"
            )
            for j in waiting:
                start = time.strftime("%H:%M", time.localtime(j.est_start)) if j.est_start else "-"
                out.append(
                    f"<tr><td>{j.id}</td><td class='l'>{esc(j.user if show_names else '')}</td>"
                    f"<td class='l'>{esc(j.est_site or '-')}</td><td>{esc(start)}</td></tr>"
                )
            out.append("</table>")
        return out

    def _own_jobs(self, user: str) -> list[str]:
        jobs = self.s.store.jobs(user=user, states=None, include_final=True, limit=50)
        out = [
            f"<h2>Your jobs ({esc(user)})</h2><table id='own-jobs'><tr><th>job</th>"
            "<th class='l'>name</th><th class='l'>state</th><th class='l'>site</th></tr>"
        ]
        for j in sorted(jobs, key=lambda j: -j.id):
            out.append(
                f"<tr data-job='{j.id}'><td>{j.id}</td><td class='l'>{esc(j.spec.name)}</td>"
                f"<td class='l' data-field='state'>{esc(j.state.value.lower())}</td>"
                f"<td class='l'>{esc(j.site or '-')}</td></tr>"
            )
        out.append("</table>")
        return out

    def _usage(self, now: float) -> list[str]:
        """Core-hours per hour over the last day, stacked by site: an inline SVG plot."""
        start = now - USAGE_HOURS * 3600
        per = hourly_by_site(self.s.store, start, USAGE_HOURS)
        width, height, bar = 720, 160, 720 / USAGE_HOURS
        peak = max((sum(r[h] for r in per.values()) for h in range(USAGE_HOURS)), default=0)
        scale = (height - 20) / peak if peak else 0
        svg = [
            f"<h2>Usage, core-hours per hour (last {USAGE_HOURS} h)</h2>",
            f"<svg id='usage' width='{width}' height='{height + 20}' role='img' "
            "aria-label='core-hours per hour by site'>",
            f"<line x1='0' y1='{height}' x2='{width}' y2='{height}' stroke='#888'/>",
        ]
        for h in range(USAGE_HOURS):
            y = float(height)
            for k, (site, row) in enumerate(sorted(per.items())):
                if row[h] <= 0:
                    continue
                hgt = row[h] * scale
                y -= hgt
                svg.append(
                    f"<rect x='{h * bar + 1:.1f}' y='{y:.1f}' width='{bar - 2:.1f}' "
                    f"height='{hgt:.1f}' fill='{_COLOURS[k % len(_COLOURS)]}'>"
                    f"<title>{esc(site)}: {row[h]:.2f} core-hours</title></rect>"
                )
        svg.append(
            f"<text x='4' y='{height + 15}' font-size='11'>{USAGE_HOURS} h ago</text>"
            f"<text x='{width - 30}' y='{height + 15}' font-size='11'>now</text>"
            f"<text x='4' y='12' font-size='11'>peak {peak:.2f}</text></svg><p>"
        )
        for k, site in enumerate(sorted(per)):
            svg.append(
                f"<span style='color:{_COLOURS[k % len(_COLOURS)]}'>&#9632;</span> "
                f"<span class='usage-site' data-core-hours='{sum(per[site]):.4f}'>"
                f"{esc(site)}</span> "
            )
        svg.append("</p>")
        return svg


def _bar(fraction: float) -> str:
    f = min(1.0, max(0.0, fraction))
    colour = "#e15759" if f >= 0.9 else "#f28e2b" if f >= 0.6 else "#59a14f"
    return (
        "<svg width='100' height='12'><rect width='100' height='12' fill='#eee'/>"
        f"<rect width='{100 * f:.0f}' height='12' fill='{colour}'/></svg>"
    )


LOGIN_FORM = (
    "<!doctype html><html><head><meta charset='utf-8'><title>metasched: sign in</title></head>"
    "<body><h1>Sign in</h1><form method='post' action='/login'>"
    "<label>Token <input type='password' name='token' id='token' autocomplete='off'></label> "
    "<button type='submit' id='signin'>Sign in</button></form>"
    "<p>A token from your admin: <code>metasched-admin token create USER</code>.</p>"
    "{error}</body></html>"
)


class WebServer:
    def __init__(
        self,
        address: str,
        scheduler: Scheduler,
        identity: Identity,
        metrics: DaemonMetrics,
        health: StoreHealth,
        public: bool,
    ) -> None:
        host, _, port = address.rpartition(":")
        page = StatusPage(scheduler)
        logger = log.get(component="web")

        class Handler(BaseHTTPRequestHandler):
            server_version = "metaschedd"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # structlog below, not stderr

            def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header(
                    "Content-Security-Policy",
                    "default-src 'none'; style-src "
                    "'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
                )
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _html(self, status: int, text: str, **extra: str) -> None:
                self._send(status, text.encode(), "text/html; charset=utf-8", extra)

            def _user(self) -> str | None:
                md: dict[str, str | bytes] = {}
                if self.headers.get("Authorization"):
                    md["authorization"] = self.headers["Authorization"]
                else:
                    for part in self.headers.get("Cookie", "").split(";"):
                        name, _, value = part.strip().partition("=")
                        if name == COOKIE and value:
                            md["authorization"] = f"Bearer {urllib.parse.unquote(value)}"
                if not md:
                    return None
                try:
                    return identity.check(md, "http")
                except auth.AuthError:
                    return None

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path == "/metrics":
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST, {})
                elif path == "/healthz":
                    ok = health.serving is not False
                    self._send(
                        200 if ok else 503, b"ok\n" if ok else b"store unusable\n", "text/plain", {}
                    )
                elif path == "/login":
                    self._html(200, LOGIN_FORM.format(error=""))
                elif path == "/":
                    user = self._user()
                    if user is None and not public:
                        self._html(HTTPStatus.SEE_OTHER, "", Location="/login")
                        return
                    self._html(200, page.render(user, public))
                else:
                    self._html(404, "<p>not found</p>")

            do_HEAD = do_GET

            def do_POST(self) -> None:
                if urllib.parse.urlsplit(self.path).path != "/login":
                    self._html(404, "<p>not found</p>")
                    return
                size = int(self.headers.get("Content-Length") or 0)
                if size > MAX_BODY:
                    self._html(413, "<p>too large</p>")
                    return
                form = urllib.parse.parse_qs(self.rfile.read(size).decode("utf-8", "replace"))
                token = (form.get("token") or [""])[0].strip()
                try:
                    user = identity.check({"authorization": f"Bearer {token}"}, "http")
                except auth.AuthError as e:
                    logger.info("status_login_refused", peer=self.client_address[0], reason=str(e))
                    self._html(403, LOGIN_FORM.format(error=f"<p id='error'>{esc(e)}</p>"))
                    return
                logger.info("status_login", user=user, peer=self.client_address[0])
                cookie = f"{COOKIE}={urllib.parse.quote(token)}; HttpOnly; SameSite=Strict; Path=/"
                self._html(HTTPStatus.SEE_OTHER, "", Location="/", **{"Set-Cookie": cookie})

        self.httpd = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        self.httpd.daemon_threads = True
        self.address = f"{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
