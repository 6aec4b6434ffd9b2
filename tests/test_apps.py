"""App definitions, parameter rendering, recipe matching in placement, and the shelf's tables
(docs/apps.md). The lab tests (test_apps_lab.py) run apps on real sites."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from metasched import apps, shelf_tables
from metasched.apps import AppError
from metasched.daemon.core import Core
from metasched.daemon.dispatch import Dispatcher
from metasched.daemon.outputs import OutputRelay
from metasched.daemon.settings import Settings
from metasched.daemon.shelf import AppShelf, Caller
from metasched.daemon.sites import AgentLink, SiteRegistry
from metasched.jobspec import shape_of
from metasched.placement.model import NodeView, PartitionView, SiteView
from metasched.placement.offers import AppNeeds, Offers
from metasched.placement.policy import Placer, Request, _Partitions, site_refusal
from metasched.shelf_tables import AppExists, ShelfRecords
from metasched.states import JobState as S
from metasched.store import SCHEMA_VERSION, Batch, JobRow, Store, StoreError
from metasched.v1 import metasched_pb2 as pb

WAVE = """
name = "wave"
version = "1.0"
visibility = "public"
[resources]
cpus_per_task = 4
[params.steps]
type = "int"
default = 10
[params.label]
type = "string"
default = "x"
[[recipes]]
name = "cpu"
accelerator = "none"
modules = ["wave"]
command = "echo {steps} {label}"
[[recipes]]
name = "a100"
accelerator = "a100"
container = "wave:cuda"
command = "echo {steps} {label}"
"""


def test_a_definition_is_parsed_and_checked_whole() -> None:
    app = apps.parse_definition(WAVE, owner="alice")
    assert (app.name, app.version, app.owner, app.visibility) == ("wave", "1.0", "alice", "public")
    assert [r.name for r in app.recipes] == ["cpu", "a100"]
    assert app.resources.cpus_per_task == 4
    assert [(p.name, p.type, p.default) for p in app.params] == [
        ("steps", "int", "10"),
        ("label", "string", "x"),
    ]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (('name = "wave"', 'name = "Wave!"'), "bad app name"),
        (("cpus_per_task = 4", 'cpus_per_task = 4\nprecision = "fp7"'), "fp7"),
        (("default = 10", "default = 1.5"), "must be a whole number"),
        (('type = "int"', 'type = "matrix"'), "type must be one of"),
        (('"echo {steps} {label}"', "'echo \"{label}\"'"), 'inside "-quotes'),
        (("echo {steps} {label}", "echo {stepz}"), "{stepz} is not a parameter"),
        (("echo {steps} {label}", "echo {steps} # {label}"), "in a comment"),
        (("echo {steps} {label}", "cat <<EOF {steps}"), "here-documents"),
        (('modules = ["wave"]', 'modules = ["wave; rm -rf /"]'), "bad module"),
        (('visibility = "public"', 'visibility = "friends"'), "visibility must be"),
    ],
)
def test_bad_definitions_say_why(change: tuple[str, str], why: str) -> None:
    with pytest.raises(AppError, match=None) as e:
        apps.parse_definition(WAVE.replace(*change, 1), owner="alice")
    assert why in str(e.value)


def test_parameters_are_typed_and_reach_the_shell_as_data(tmp_path: Path) -> None:
    app = apps.parse_definition(WAVE, owner="alice")
    assert apps.resolve_params(app, {}) == {"steps": "10", "label": "x"}
    with pytest.raises(AppError, match="steps must be a whole number"):
        apps.resolve_params(app, {"steps": "3; reboot"})
    with pytest.raises(AppError, match="control characters"):
        apps.resolve_params(app, {"label": "a\nreboot"})
    hostile = f"$(touch {tmp_path}/pwned)'; touch {tmp_path}/pwned2; echo '`id`"
    params = apps.resolve_params(app, {"label": hostile, "steps": " 7"})
    script = apps.render_script("wave@1.0", app.recipes[0], params, "hpc", pb.Offerings())
    command = script.splitlines()[-1]
    ran = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True)
    assert ran.stdout == f"7 {hostile}\n"
    assert not list(tmp_path.iterdir())
    assert "module load wave || exit 97" in script and script.startswith("#!/bin/bash -l")


def test_a_container_recipe_runs_its_command_through_the_sites_launcher() -> None:
    app = apps.parse_definition(WAVE, owner="alice")
    params = apps.resolve_params(app, {"label": "a b"})
    offers = pb.Offerings(container_run="apptainer exec --nv")
    script = apps.render_script("wave@1.0", app.recipes[1], params, "gpu", offers)
    assert script.splitlines()[-1] == (
        "apptainer exec --nv wave:cuda /bin/sh -c 'echo 10 '\"'\"'a b'\"'\"''"
    )


def _site(name: str, gpus: dict[str, int], offers: Offers) -> SiteView:
    node = NodeView(f"{name}-n", ("batch",), True, 64, 64, 1000, 1000, gpus, dict(gpus), 2)
    part = PartitionView("batch", (node.name,), precisions={"fp32": 1.0}, offers=offers)
    return SiteView(name, True, [part], {node.name: node})


def _needs() -> AppNeeds:
    spec = pb.JobSpec(app="wave", app_version="1.0")
    spec.app_recipes.extend(apps.parse_definition(WAVE, owner="alice").recipes)
    needs = AppNeeds.of_spec(spec)
    assert needs is not None
    return needs


def test_placement_sends_an_app_only_where_a_recipe_can_run() -> None:
    sites = [
        _site("hpc", {}, Offers.of(pb.Offerings(modules=["wave/1.0", "gcc/12"]))),
        _site("bare", {}, Offers()),  # a CPU site without the module
        _site(
            "gpu", {"a100": 4}, Offers.of(pb.Offerings(containers=["wave:cuda"], container_run="x"))
        ),
        _site(
            "ai",
            {"ascend910b": 8},
            Offers.of(pb.Offerings(containers=["wave:cuda"], container_run="x")),
        ),
    ]
    shape = shape_of(pb.JobSpec(cpus_per_task=4, time_limit_minutes=10))
    app = _needs()
    reqs = [Request(k, "alice", shape, app=app) for k in range(1, 201)]
    why = {s.name: site_refusal(s, reqs[0]) for s in sites}
    assert why["hpc"] == (["batch"], "") and why["gpu"] == (["batch"], "")
    assert "cpu needs module wave" in why["bare"][1]
    assert "a100 needs a100 accelerators" in why["ai"][1]
    # the placement index agrees with site_refusal
    index = _Partitions(sites)
    assert sorted(index.entries[i][0].name for i in index.eligible(reqs[0])) == ["gpu", "hpc"]
    decisions = Placer(hold_horizon_s=0).place(reqs, sites, now=1000.0)
    assert {d.site for d in decisions} == {"hpc", "gpu"}  # 32 CPU jobs fill both, none elsewhere
    plain = [Request(k, "alice", shape) for k in range(1, 201)]
    assert {d.site for d in Placer(hold_horizon_s=0).place(plain, sites, now=1000.0)} == {
        "hpc",
        "bare",
        "gpu",
        "ai",
    }


def test_a_queue_from_before_the_shelf_opens_with_it_and_keeps_its_jobs(tmp_path: Path) -> None:
    """The shelf's schema (4) on a file the version before wrote (scripts, no shelf): it gains
    the shelf's tables and jobs.recipe when opened, its jobs and arrays are untouched, and it
    then says the new version (an older metaschedd refuses it rather than send a run's
    stand-in script)."""
    db = tmp_path / "q.db"
    store = Store(db)
    spec = pb.JobSpec(script="#!/bin/sh\n")
    job = store.run(lambda b: b.insert_job("alice", spec))
    tasks = store.run(lambda b: b.insert_array("alice", spec, (1, 2), 0, S.QUEUED, "", False))
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE results")
    conn.execute("DROP TABLE apps")
    conn.execute("ALTER TABLE jobs DROP COLUMN recipe")
    before = SCHEMA_VERSION - 1  # the version before the shelf came
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(before),))
    conn.commit()
    conn.close()

    again = Store(db)
    row = again.job(job.id)
    assert row is not None and (row.state, row.recipe) == (S.QUEUED, "")
    stored = pb.JobSpec()  # the spec as the store keeps it: the script is in job_scripts
    assert [(t.array_task, t.spec) for t in again.array_tasks(tasks[0].id)] == [
        (1, stored),
        (2, stored),
    ]
    assert again.scripts([job.id, *(t.id for t in tasks)]) == {
        j.id: spec.script for j in (job, *tasks)
    }
    version = again._reader().execute("SELECT value FROM meta WHERE key='schema_version'")
    assert int(version.fetchone()[0]) == SCHEMA_VERSION
    shelf = ShelfRecords(again)
    shelf.publish(apps.parse_definition(WAVE, owner="alice"))
    with pytest.raises(AppExists):
        shelf.publish(apps.parse_definition(WAVE, owner="alice"))
    run_spec = pb.JobSpec(script="#!/bin/sh\n", app="wave", app_version="1.0")

    def queue_run(b: Batch) -> JobRow:
        shelf_tables.count_runs(b, "wave", "1.0", 1)
        return b.insert_job("bob", run_spec)

    run = again.run(queue_run)
    again.run(lambda b: b.move(run.id, S.FORWARDING, "placed", site="hpc", recipe="cpu"))
    again.close()
    reopened = Store(db)
    moved = reopened.job(run.id)
    assert moved is not None and moved.recipe == "cpu"
    got = ShelfRecords(reopened).get("wave", "1.0")
    assert got is not None and got.runs == 1 and got.owner == "alice"
    reopened.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this metaschedd"):
        Store(db)


def test_a_gpu_recipes_run_asks_for_its_gpus_when_sent(tmp_path: Path) -> None:
    """What the site gets for a run of wave (no GPUs in its [resources]): with the a100 recipe
    it asks for one A100 a node (it ran without one before, at a site picked for its A100s);
    with the CPU recipe none; a run whose user asked for GPUs keeps their count."""
    store = Store(tmp_path / "q.db")
    sites = SiteRegistry(grace_seconds=60)
    dispatch = Dispatcher(store, sites, Settings())
    core = Core(store, sites, Settings(), Placer(), dispatch)
    shelf = AppShelf(core, OutputRelay(sites))
    shelf.publish("alice", WAVE)
    assert [r.gpus_per_node for r in shelf.get(Caller("bob"), "wave", "1.0").recipes] == [0, 1]

    def sent(site: str, recipe: str, spec: pb.JobSpec) -> pb.JobSpec:
        run = shelf.prepare_run(Caller("bob"), spec)
        job = store.run(lambda b: b.insert_job("bob", run))
        link = AgentLink(site, "test")
        sites.connect(site, link)
        placed = store.run(
            lambda b: b.move(
                job.id,
                S.FORWARDING,
                "placed",
                site=site,
                partition="batch",
                attempt=1,
                recipe=recipe,
            )
        )
        dispatch.submit(placed)
        msg = link.outbox.get_nowait()
        assert msg is not None and msg.submit.job_id == job.id
        return msg.submit.spec

    a100 = sent("gpu", "a100", pb.JobSpec(app="wave"))
    assert (a100.gpus_per_node, a100.gpu_type) == (1, "a100")
    assert "wave:cuda" in a100.script and a100.cpus_per_task == 4
    cpu = sent("hpc", "cpu", pb.JobSpec(app="wave"))
    assert (cpu.gpus_per_node, cpu.gpu_type) == (0, "")
    asked = sent("gpu", "a100", pb.JobSpec(app="wave", gpus_per_node=2))
    assert (asked.gpus_per_node, asked.gpu_type) == (2, "a100")
    store.close()


@pytest.mark.parametrize(
    ("recipe", "why"),
    [
        ('accelerator = "none"\ngpus_per_node = 2', "goes with an accelerator type"),
        ('accelerator = "a100"\ngpus_per_node = -1', "gpus_per_node must be a whole number"),
    ],
)
def test_a_recipes_gpus_are_checked(recipe: str, why: str) -> None:
    text = WAVE.replace('accelerator = "a100"', recipe, 1)
    with pytest.raises(AppError) as e:
        apps.parse_definition(text, owner="alice")
    assert why in str(e.value)
    gpu_app = WAVE.replace("cpus_per_task = 4", "cpus_per_task = 4\ngpus_per_node = 1")
    with pytest.raises(AppError, match="recipe cpu is for partitions without accelerators"):
        apps.parse_definition(gpu_app, owner="alice")


def test_a_recipe_asking_more_gpus_than_a_node_has_cannot_run_there() -> None:
    app = apps.parse_definition(
        WAVE.replace('accelerator = "a100"', 'accelerator = "a100"\ngpus_per_node = 8'), "alice"
    )
    gpu = _site(
        "gpu", {"a100": 4}, Offers.of(pb.Offerings(containers=["wave:cuda"], container_run="x"))
    )
    spec = pb.JobSpec(app="wave", app_version="1.0", app_recipes=app.recipes)
    req = Request(1, "alice", shape_of(pb.JobSpec(cpus_per_task=4)), app=AppNeeds.of_spec(spec))
    parts, why = site_refusal(gpu, req)
    assert parts == [] and "a100 needs 8 a100 on a node (at most 4 here)" in why
