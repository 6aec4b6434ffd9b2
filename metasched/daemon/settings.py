"""What the daemon's activities are tuned by (metaschedd.toml's [daemon] fills it), and the
refusal every activity answers a request it will not take with."""

from __future__ import annotations

from dataclasses import dataclass

from metasched import jobspec


class Refused(Exception):
    """A request we will not take; `code` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Settings:
    placement_interval: float = 1.0
    max_infra_retries: int = 2
    resend_after: float = 30.0  # re-send an unanswered submit/cancel after this long
    resolve_after: float = 10.0  # a job missing from reports this long is looked up
    max_script_bytes: int = jobspec.MAX_SCRIPT_BYTES
    max_queued_per_user: int = 100_000
    # Rebalancing: a job still pending at a site rebalance_grace_s past its expected start is
    # pulled back (cancelled while still pending, confirmed by the agent) and placed again when
    # another site would start it at least rebalance_min_gain_s sooner, and sooner by at least
    # half its remaining expected wait. At most max_recalls times per job.
    rebalance: bool = True
    rebalance_interval: float = 30.0
    rebalance_grace_s: float = 300.0
    rebalance_min_gain_s: float = 600.0
    max_recalls: int = 2
    # Late binding: a job whose best planned start is more than this many seconds away stays
    # in the global queue (re-planned every pass) instead of joining one site's queue; it is
    # forwarded once a site can start it. None: forward every placeable job at once. The
    # replay benchmark (bench/README.md) measured 0 s as best: mean wait 0.42x of sbatch -M's
    # choice on LANL-CM5, against 0.84x for forwarding at once.
    hold_horizon_s: float | None = 0.0
