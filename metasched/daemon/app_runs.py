"""An app's run as its site gets it (docs/apps.md): the script of the recipe chosen when it
was forwarded, rendered for what the site offers in its partition, and the recipe's GPUs.

Rendered by the daemon as it sends the job, not by the agent: the app's recipes and every
site's offers are both here already; the result is a pure function of the pinned version, the
parameters and the site's report (a re-sent submission renders the same); and the agent stays
a Slurm adapter that gets an ordinary script.
"""

from __future__ import annotations

from metasched import apps
from metasched.daemon.sites import SiteRegistry
from metasched.store import JobRow
from metasched.v1 import metasched_pb2 as pb


def spec_to_send(job: JobRow, spec: pb.JobSpec, sites: SiteRegistry) -> pb.JobSpec:
    """spec (the job's, as the dispatcher would send it) for the job's site: an app's run
    rendered for its recipe; any other job's unchanged."""
    if not spec.app:
        return spec
    site = sites.get(job.site)
    offers = apps.offerings_at(site.report if site is not None else None, job.partition)
    return apps.spec_at_site(spec, job.recipe, job.site, offers)
