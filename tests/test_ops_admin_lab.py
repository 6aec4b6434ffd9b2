"""Issue 12 on real Slurm: metasched-admin's site list, requeue, hold, release, priority and
usage on a user's jobs; a cancel that works is never logged as not done; each site's agent
serves Prometheus metrics that agree with what the daemon says of the site.

Two sites of one 1-CPU node each, with early binding (hold_horizon_seconds = -1: a job is
forwarded at once, so a third job waits in a site's own queue, where a requeue finds it).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import scrape

from metasched.lab import SlurmLab
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm

USER = "mo2alice"  # a real local user, this module's own
S = JobState


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    from tests_support import need_slurm_or_skip

    need_slurm_or_skip()
    made = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", USER], check=True)
        made = True
    yield USER
    if made:  # once the user's last job processes are gone
        wait_for(
            lambda: subprocess.run(["userdel", USER], capture_output=True).returncode in (0, 6),
            60,
            f"userdel {USER}",
        )


@pytest.fixture(scope="module")
def fed(user: str) -> Iterator[Federation]:
    from conftest import TWO_SMALL_SITES

    root = Path(tempfile.mkdtemp(prefix="mo2-", dir="/tmp"))
    root.chmod(0o755)
    # the jobs' own directory: in /tmp, slurm-<id>.out of other tests' jobs (other users')
    # would refuse theirs
    work = root / "work"
    work.mkdir()
    shutil.chown(work, user)
    lab = SlurmLab(root / "l", TWO_SMALL_SITES, overrides={"MessageTimeout": "3"})
    with (
        lab,
        Federation(
            lab,
            root / "f",
            poll_interval=0.5,
            report_interval=2.0,
            daemon_extra="hold_horizon_seconds = -1",
            agent_metrics=True,
        ) as f,
    ):
        yield f
    shutil.rmtree(root, ignore_errors=True)


def admin(fed: Federation, *args: str, as_user: str = "") -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "metasched.cli.admin", *args]
    if as_user:
        argv = [sys.executable, "-m", "metasched.lab.asuser", as_user, "admin", *args]
    env = {**os.environ, "METASCHED_DAEMON": f"unix:{fed.socket}"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def admin_json(fed: Federation, *args: str) -> object:
    out = admin(fed, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def total(fed: Federation, key: str) -> float:
    """A metric summed over every site's agent."""
    return sum(scrape(url).get(key, 0.0) for url in fed.agent_metrics.values())


def submit(fed: Federation, seconds: int) -> int:
    spec = pb.JobSpec(
        script=f"#!/bin/sh\nsleep {seconds}\n",
        time_limit_minutes=5,
        workdir=str(fed.root.parent / "work"),
    )
    r = fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec), user=USER)
    return int(r.job_id)


def state(fed: Federation, job_id: int) -> S:
    return S.from_pb(fed.job(job_id).state)


def test_site_list_shows_each_sites_agent_slurm_and_capacity(fed: Federation) -> None:
    out = admin(fed, "site", "list")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    assert set(lines) == {"east", "west"}
    for words in lines.values():
        assert words[1:5] == ["online", words[2], "cli", "0.1.0"]
        assert words[2].startswith(("22.", "23.", "24.", "25."))
    sites = admin_json(fed, "site", "list")
    assert isinstance(sites, list)
    for s in sites:
        assert (s["state"], s["backend"], s["nodes"], s["usable_nodes"]) == ("online", "cli", 1, 1)
        assert s["total_cpus"] == 1 and 0 <= s["report_age_seconds"] < 30
    refused = admin(fed, "job", "hold", "1", as_user=USER)
    assert refused.returncode != 0 and "admin" in refused.stderr


def test_requeue_hold_priority_release_cancel_and_usage(fed: Federation) -> None:
    first, second = submit(fed, 300), submit(fed, 300)
    wait_for(
        lambda: state(fed, first) == state(fed, second) == S.RUNNING,
        120,
        "both sites busy",
        fed.log("metaschedd"),
    )
    third = submit(fed, 2)  # early binding: it waits in one site's own queue
    fed.wait_job(third, {S.PENDING}, 60)
    at = fed.job(third).site

    # what the agents count agrees with what the daemon says of each site
    def agents_agree() -> bool:
        sites = fed.sites()
        if sites[at].pending_jobs != 1:
            return False  # the site's report has not shown it yet
        for name, url in fed.agent_metrics.items():
            m = scrape(url)
            for st in ("running", "pending"):
                key = f'metasched_agent_slurm_jobs{{owner="federation",state="{st}"}}'
                if m.get(key, 0.0) != getattr(sites[name], f"{st}_jobs"):
                    return False
        return True

    wait_for(agents_agree, 30, "the agents' queue counts to match ListSites")

    out = admin(fed, "job", "requeue", str(third), "--hold")
    assert out.returncode == 0, out.stderr
    assert "recalling" in out.stdout and f"at {at}" in out.stdout
    job = fed.wait_job(third, {S.WAITING}, 60)
    assert job.held_by_admin and job.reason.startswith("JobHeldAdmin")
    assert (job.site, job.slurm_job_id) == ("", "")
    wait_for(lambda: fed.sites()[at].pending_jobs == 0, 30, "the site's queue without it")

    refused = fed.msub("release", str(third), check=False, user=USER)
    assert refused.returncode != 0 and "held by an admin" in refused.stderr
    listed = admin_json(fed, "job", "priority", "5", str(third))
    assert isinstance(listed, list) and len(listed) == 1
    assert (listed[0]["priority"], listed[0]["state"], listed[0]["held_by_admin"]) == (
        5,
        "waiting",
        True,
    )

    ran = admin(fed, "job", "requeue", str(second))
    assert ran.returncode != 0 and "has started" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1

    fed.call("CancelJob", pb.CancelJobRequest(job_id=first), user=USER)
    fed.wait_job(first, {S.CANCELLED}, 60)
    out = admin(fed, "job", "release", str(third))
    assert out.returncode == 0, out.stderr
    fed.wait_job(third, {S.COMPLETED}, 120)
    assert fed.job(third).attempt == 2
    fed.call("CancelJob", pb.CancelJobRequest(job_id=second), user=USER)
    fed.wait_job(second, {S.CANCELLED}, 60)

    # the cancels worked: never logged as not done (issue 12)
    assert "cancel_not_done" not in fed.log("metaschedd").read_text()
    assert total(fed, 'metasched_agent_commands_total{kind="cancel",outcome="done"}') >= 3
    assert total(fed, 'metasched_agent_commands_total{kind="cancel",outcome="not_done"}') == 0

    # usage: the core-hours of what the API says each job ran
    jobs = [fed.job(j) for j in (first, second, third)]
    hours = sum((j.ended_at - j.started_at) / 3600 for j in jobs)
    assert all(j.started_at and j.ended_at for j in jobs)
    use = admin_json(fed, "usage", "--since", "1h", "--by", "user")
    assert isinstance(use, dict)
    rows = {r["key"]: r for r in use["rows"]}
    assert rows[USER]["jobs"] == 3
    assert rows[USER]["core_hours"] == pytest.approx(hours, rel=1e-6)
    by_site = admin_json(fed, "usage", "--since", "1h", "--by", "site")
    assert isinstance(by_site, dict)
    assert sum(r["core_hours"] for r in by_site["rows"]) == pytest.approx(hours, rel=1e-6)
    assert {r["key"] for r in by_site["rows"]} == {j.site for j in jobs}


def test_each_agent_serves_its_metrics(fed: Federation) -> None:
    for name, url in fed.agent_metrics.items():
        m = scrape(url)
        assert m[f'metasched_agent_info{{backend="cli",site="{name}",version="0.1.0"}}'] == 1
        assert m["metasched_agent_connected"] == 1
        assert m["metasched_agent_slurm_up"] == 1
        assert m["metasched_agent_slurm_poll_seconds_count"] > 0
        assert 0 < m["metasched_agent_slurm_last_poll_seconds"] < 60
        assert m["metasched_agent_journal_bytes"] > 0
        assert m.get("metasched_agent_slurm_poll_failures_total", 0) == 0
        assert m["metasched_agent_report_bytes"] > 0
        assert 0 <= m["metasched_agent_report_age_seconds"] < 30
        submitted = m.get('metasched_agent_commands_total{kind="submit",outcome="submitted"}', 0)
        assert m.get("metasched_agent_sbatch_seconds_count", 0) >= submitted
    # each attempt of each job the daemon forwarded is one entry in one site's journal
    jobs = fed.call("ListJobs", pb.ListJobsRequest(all_users=True, include_final=True)).jobs
    assert jobs and total(fed, "metasched_agent_journal_entries") == sum(j.attempt for j in jobs)
    # every submission the daemon sent was carried out (resends count again)
    submitted = total(fed, 'metasched_agent_commands_total{kind="submit",outcome="submitted"}')
    assert submitted >= total(fed, "metasched_agent_journal_entries")
    # a job of the site's own with a forged tag (no valid MAC) is counted, and never ours
    before = total(fed, "metasched_agent_forged_tags_total")
    sid = fed.lab.sbatch(
        "east",
        "--hold",
        "--comment=metasched:abcdef012345:999999:1",
        "--wrap=true",
        "-o",
        "/dev/null",
    )
    try:
        wait_for(
            lambda: total(fed, "metasched_agent_forged_tags_total") == before + 1,
            30,
            "the agent to count the forged tag",
        )
    finally:
        fed.lab.scancel("east", sid)
