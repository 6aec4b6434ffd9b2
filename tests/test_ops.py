"""What an operator sees: Prometheus metrics that agree with the API after a known
workload, gRPC health that follows the store, and the status page in a real headless
Chromium whose numbers match the API (its screenshot is kept under the test's tmp dir)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests_support import scrape as scrape_url

from metasched.lab import DEMO_SITES, SlurmLab
from metasched.lab.federation import Federation, free_port, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def fed() -> Iterator[Federation]:
    from tests_support import need_slurm_or_skip

    need_slurm_or_skip()
    root = Path(tempfile.mkdtemp(prefix="mso-", dir="/tmp"))
    root.chmod(0o755)
    port = free_port()
    lab = SlurmLab(root / "l", list(DEMO_SITES), overrides={"MessageTimeout": "3"})
    with (
        lab,
        Federation(
            lab, root / "f", report_interval=2.0, daemon_extra=f'http_listen = "127.0.0.1:{port}"'
        ) as f,
    ):
        f.http = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield f
    subprocess.run(["rm", "-rf", str(root)], check=False)


def scrape(fed: Federation) -> dict[str, float]:
    return scrape_url(fed.http)  # type: ignore[attr-defined]


def spec(sleep: int, **kw: object) -> pb.JobSpec:
    s = pb.JobSpec(script=f"#!/bin/sh\nsleep {sleep}\n", time_limit_minutes=5, workdir="/tmp")
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_metrics_agree_with_the_api_after_a_known_workload(fed: Federation) -> None:
    before = scrape(fed)
    done = [fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec(0))).job_id for _ in range(3)]
    running = fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec(300, cpus_per_task=8))).job_id
    wait_for(
        lambda: all(JobState.from_pb(fed.job(j).state).is_final for j in done),
        120,
        "3 jobs",
        fed.log("metaschedd"),
    )
    wait_for(lambda: fed.job(running).state == pb.JOB_STATE_RUNNING, 60, "the long job to run")
    site = fed.job(running).site
    wait_for(
        lambda: fed.sites()[site].free_cpus == fed.sites()[site].total_cpus - 8, 30, "a report"
    )
    m = scrape(fed)
    assert (
        m["metasched_jobs_submitted_total"] - before.get("metasched_jobs_submitted_total", 0) == 4
    )
    assert (
        m['metasched_jobs_ended_total{state="completed"}']
        - before.get('metasched_jobs_ended_total{state="completed"}', 0)
        == 3
    )
    assert m['metasched_jobs{state="running"}'] == 1
    assert m[f'metasched_site_jobs{{site="{site}"}}'] == 1
    for name, s in fed.sites().items():
        assert m[f'metasched_site_up{{site="{name}"}}'] == 1
        assert m[f'metasched_site_cpus{{site="{name}",use="total"}}'] == s.total_cpus
        assert m[f'metasched_site_cpus{{site="{name}",use="alloc"}}'] == s.total_cpus - s.free_cpus
        assert m[f'metasched_site_gpus{{site="{name}",use="total"}}'] == s.total_gpus
        assert 0 <= m[f'metasched_site_report_age_seconds{{site="{name}"}}'] < 30
    # fp64 is offered at hpc and gpu, not at ai
    assert 'metasched_precision_nodes{precision="fp64",site="hpc"}' in m
    assert not any('precision="fp64",site="ai"' in k for k in m)
    assert m['metasched_rpcs_total{code="ok",method="SubmitJob"}'] >= 4
    assert m['metasched_rpc_seconds_count{method="SubmitJob"}'] >= 4
    assert m['metasched_cycle_seconds_count{service="placement"}'] > 0
    assert m["metasched_store_commit_seconds_count"] > 0
    fed.call("CancelJob", pb.CancelJobRequest(job_id=running))
    with pytest.raises(grpc.RpcError):
        fed.call("GetJob", pb.GetJobRequest(job_id=10**9))
    # counted as the call ends on the daemon's side, which may be just after the client has
    # its answer (grpc.aio sends an abort's status before the handler returns)
    key = 'metasched_rpcs_total{code="not_found",method="GetJob"}'
    wait_for(lambda: scrape(fed).get(key, 0) >= 1, 30, "the refused GetJob to be counted")


def health_of(fed: Federation, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"unix:{fed.socket}"))
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
    return status


def test_health_follows_the_store_and_reflection_lists_the_services(fed: Federation) -> None:
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    for service in ("", "metasched.v1.Scheduler", "metasched.v1.AgentService"):
        assert health_of(fed, service) == serving
    # another process takes the database's write lock and keeps it: the store is unusable
    db = sqlite3.connect(fed.root / "state" / "metasched.db", isolation_level=None, timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    try:
        wait_for(lambda: health_of(fed, "metasched.v1.Scheduler") == not_serving, 30, "NOT_SERVING")
        assert health_of(fed, "") == not_serving
        with urllib.request.urlopen(f"{fed.http}/healthz", timeout=10) as r:  # type: ignore[attr-defined]
            pytest.fail(f"/healthz answered {r.status} with the store locked")
    except urllib.error.HTTPError as e:
        assert e.code == 503
    finally:
        db.execute("ROLLBACK")
        db.close()
    wait_for(lambda: health_of(fed, "metasched.v1.Scheduler") == serving, 60, "SERVING again")
    out = subprocess.run(
        [sys.executable, "-c", REFLECT, f"unix:{fed.socket}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = set(out.stdout.split())
    assert {"metasched.v1.Scheduler", "metasched.v1.Admin", "grpc.health.v1.Health"} <= names


REFLECT = """
import sys, grpc
from grpc_reflection.v1alpha import reflection_pb2 as r, reflection_pb2_grpc as rg
stub = rg.ServerReflectionStub(grpc.insecure_channel(sys.argv[1]))
for resp in stub.ServerReflectionInfo(iter([r.ServerReflectionRequest(list_services="")])):
    print("\\n".join(s.name for s in resp.list_services_response.service))
"""


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
)


def test_status_page_in_chromium_shows_every_site_with_its_precisions_and_load(
    fed: Federation, tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    from metasched.daemon.web import wait_text

    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian's chromium is not installed (scripts/setup installs it)")
    # some load: a 16-CPU job at a site that offers fp64
    busy = fed.call(
        "SubmitJob", pb.SubmitJobRequest(spec=spec(300, cpus_per_task=16, precision="fp64"))
    ).job_id
    wait_for(lambda: fed.job(busy).state == pb.JOB_STATE_RUNNING, 60, "the busy job to run")
    site = fed.job(busy).site
    wait_for(lambda: fed.sites()[site].total_cpus - fed.sites()[site].free_cpus >= 16, 30, "report")
    me = fed.credentials("root")
    token = (
        fed.admin_stub()
        .CreateToken(
            pb.CreateTokenRequest(user="root", ttl_seconds=3600, note="status page test"),
            metadata=me,
            timeout=30,
        )
        .token
    )
    os.environ["SE_OFFLINE"] = "true"  # selenium must not look for a driver to download
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(
        options=opts, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    )
    try:
        driver.get(f"{fed.http}/")  # type: ignore[attr-defined]
        assert driver.current_url.endswith("/login")  # not public: sign in first
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "signin").click()
        wait_for(lambda: driver.find_elements(By.ID, "pool"), 20, "the status page")
        api = fed.sites()
        rows = {}
        for tr in driver.find_elements(By.CSS_SELECTOR, "tr.site-precision"):
            cells = {
                td.get_attribute("data-field"): td.text
                for td in tr.find_elements(By.CSS_SELECTOR, "td[data-field]")
            }
            rows[tr.get_attribute("data-key")] = cells
        shown_sites = {key.split("/")[0] for key in rows}
        assert shown_sites == set(api) == {"hpc", "gpu", "ai"}
        for name, s in api.items():
            offered = {x.name for p in s.partitions for x in p.precisions}
            assert {k.split("/")[1] for k in rows if k.startswith(name + "/")} == offered
            for prec in offered:
                cells = rows[f"{name}/{prec}"]
                assert cells["state"] == s.state
                # every node of a demo site offers all its precisions: the site's numbers
                assert cells["cpus"] == f"{s.total_cpus - s.free_cpus} / {s.total_cpus}"
                assert cells["gpus"] == f"{s.total_gpus - s.free_gpus} / {s.total_gpus}"
                assert cells["queue"] == str(s.pending_jobs)
                assert cells["wait"] == wait_text(s.est_wait_seconds, s.state)
        assert "fp64" not in {k.split("/")[1] for k in rows if k.startswith("ai/")}
        loaded = rows[f"{site}/fp64"]["cpus"]
        assert int(loaded.split(" / ")[0]) >= 16
        assert driver.find_element(By.ID, "user").text == "root"
        own = {
            tr.get_attribute("data-job")
            for tr in driver.find_elements(By.CSS_SELECTOR, "#own-jobs tr[data-job]")
        }
        assert str(busy) in own
        assert driver.find_element(By.ID, "usage").is_displayed()
        shot = tmp_path / "status-page.png"
        driver.save_screenshot(str(shot))
        print(f"status page screenshot: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
        fed.call("CancelJob", pb.CancelJobRequest(job_id=busy))
