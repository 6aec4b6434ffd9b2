"""Recall (rebalancing): pull back jobs stuck pending at one site when another would start
them much sooner. Runs every rebalance_interval. A recall is a cancel that the agent carries
out only while the job is still pending (slurmctld checks that atomically); the job goes
back to the global queue only when the site confirms it never started."""

from __future__ import annotations

import time
from dataclasses import replace

from metasched.daemon.core import Activity
from metasched.daemon.views import request_of, site_views
from metasched.states import JobState
from metasched.store import Batch, IllegalTransition, JobRow

S = JobState


class Recall(Activity):
    def run_cycle(self) -> int:
        """Recall what another site would start much sooner; return how many were recalled."""
        st = self.settings
        if not st.rebalance:
            return 0
        now = time.time()
        stale = [
            j
            for j in list(self.store.live.values())
            if j.state == S.PENDING
            and not j.started_at
            and j.est_start
            and j.slurm_job_id
            and now > j.est_start + st.rebalance_grace_s
            and j.recalls < st.max_recalls
        ]
        if not stale:
            return 0
        views = {v.name: v for v in site_views(self.sites, self.store, now)}
        recalls: list[tuple[int, str]] = []
        for job in stale:
            here = views.get(job.site)
            if here is None or not here.online:
                continue
            req = request_of(job)
            # where it stands at its own site: the queue without itself, it last in line
            alone = replace(here, pending=[w for w in here.pending if w.job_id != job.slurm_job_id])
            cur = self.placer.plan(replace(req, sites=frozenset()), [alone], now)[0].estimate
            others = [v for v in views.values() if v.name != job.site]
            choices = self.placer.plan(req, others, now)
            best = choices[0].estimate if choices and choices[0].eligible else None
            if cur is None or best is None:
                continue
            # The site has already kept it waiting `overdue` past our estimate: whatever holds
            # it there (memory, a reservation, someone's priority) is invisible to us, so
            # expect at least as long again rather than trusting the same profile twice.
            overdue = now - job.est_start
            cur_start = max(cur.start, now + overdue)
            gain = cur_start - best.start
            if gain >= st.rebalance_min_gain_s and gain >= 0.5 * (cur_start - now):
                recalls.append(
                    (
                        job.id,
                        f"recalling from {job.site}: {best.site} would start it {gain:.0f}s sooner",
                    )
                )
        if not recalls:
            return 0

        def op(b: Batch) -> list[JobRow]:
            out = []
            for job_id, why in recalls:
                try:
                    job = b.job(job_id)
                    out.append(
                        b.move(
                            job_id,
                            S.RECALLING,
                            why,
                            expect=[S.PENDING],
                            recalls=job.recalls + 1,
                            # a site that kept it waiting past its estimate is not tried again
                            avoid_sites=(*job.avoid_sites, job.site),
                        )
                    )
                except IllegalTransition:
                    continue  # it started or was cancelled meanwhile
            return out

        recalled = self.store.run(op)
        for job in recalled:
            self.dispatch.cancel(job)
        return len(recalled)
