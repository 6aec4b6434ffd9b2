"""The moves that send a job back to the global queue, shared by every activity that does it
(an agent's answers, a retired site, a recall), so each clears the same fields."""

from __future__ import annotations

from typing import Any

from metasched.daemon.waiting import HELD_BY_ADMIN, HELD_BY_USER
from metasched.states import JobState
from metasched.store import Batch, JobRow


def requeue(b: Batch, job: JobRow, detail: str, **fields: Any) -> JobRow:
    """Back to the queue: it never started where it was (recalled, refused, retired site).
    A job an admin requeued to be held waits there, held, until an admin releases it."""
    cleared: dict[str, Any] = {
        "site": "",
        "partition": "",
        "slurm_job_id": "",
        "est_at": 0.0,
        "reason": detail,
    }
    back = b.move(job.id, JobState.QUEUED, detail, **(cleared | fields))
    if back.held:
        why = HELD_BY_ADMIN if back.admin_held else HELD_BY_USER
        return b.move(job.id, JobState.WAITING, "held", reason=why)
    return back


def retry_elsewhere(b: Batch, job: JobRow, detail: str, reason: str) -> JobRow:
    """Back to the queue after an infrastructure failure at its site (node failure, site
    retired while it ran), never to be sent to that site again; the caller checks the
    infrastructure-retry budget first."""
    return requeue(
        b,
        job,
        detail,
        infra_retries=job.infra_retries + 1,
        avoid_sites=(*job.avoid_sites, job.site),
        reason=reason,
    )
