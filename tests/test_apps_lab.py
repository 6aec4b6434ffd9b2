"""The app shelf on real lab sites (docs/apps.md): hpc offers the wave module (Lmod), gpu the
wave container, ai nothing wave needs (metasched/lab/software.py)."""

from __future__ import annotations

import hashlib
import json
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

S = JobState
USERS = ("mapalice", "mapbob")

APP = """
name = "{name}"
version = "{version}"
description = "a stand-in wave solver"
visibility = "{visibility}"
outputs = ["wave.out"]

[resources]
cpus_per_task = {cpus}
time = "10"

[params.steps]
type = "int"
default = 100

[params.label]
type = "string"
default = "none"

[params.nap]
type = "int"
default = 0
description = "seconds to sleep first (to hold a node)"

[[recipes]]
name = "cpu"
accelerator = "none"
modules = ["wave/1.0"]
command = "wave --steps {{steps}} --label {{label}} --sleep {{nap}} --out wave.out"

[[recipes]]
name = "a100"
accelerator = "a100"
container = "wave:1.0-cuda"
command = "wave --steps {{steps}} --label {{label}} --sleep {{nap}} --out wave.out"
"""


def app_toml(
    where: Path, name: str, version: str = "1.0", visibility: str = "public", cpus: int = 1
) -> Path:
    path = where / f"{name}-{version}.toml"
    path.write_text(APP.format(name=name, version=version, visibility=visibility, cpus=cpus))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def fed(demo_federation: Federation) -> Federation:
    return demo_federation


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, Path]]:
    """The test's local users, each with a working directory of their own."""
    made = []
    work: dict[str, Path] = {}
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/bin/sh", user], check=True)
            made.append(user)
        d = Path(tempfile.mkdtemp(prefix=f"{user}-", dir="/tmp"))
        shutil.chown(d, user, user)
        d.chmod(0o700)
        work[user] = d
    yield work
    for d in work.values():
        shutil.rmtree(d, ignore_errors=True)
    for user in made:
        subprocess.run(["userdel", user], check=False)


def wait_state(fed: Federation, job_id: int, states: set[JobState], timeout: float = 90) -> pb.Job:
    box: list[pb.Job] = []

    def reached() -> bool:
        box[:] = [fed.job(job_id)]
        return JobState.from_pb(box[0].state) in states

    wait_for(reached, timeout, f"job {job_id} to reach {sorted(states)}", fed.log("metaschedd"))
    return box[0]


def run(fed: Federation, *args: str, user: str = "root") -> int:
    out = fed.msub("app", "run", "--json", *args, user=user)
    return int(json.loads(out.stdout)["job_id"])


def test_an_app_runs_where_one_of_its_recipes_can_and_never_on_the_ai_site(
    fed: Federation, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    fed.msub("app", "publish", str(app_toml(tmp_path, "wave-where", cpus=64)))
    plan = json.loads(fed.msub("app", "plan", "--json", "wave-where").stdout)
    by_site = {c["site"]: c for c in plan["choices"]}
    assert by_site["hpc"]["recipe"] == "cpu" and by_site["gpu"]["recipe"] == "a100"
    assert not by_site["ai"].get("eligible", False)
    assert "no recipe of wave-where@1.0 can run here" in by_site["ai"]["reason"]
    assert "cpu for partitions without accelerators" in by_site["ai"]["reason"]

    # Five runs of a whole 64-CPU node each: hpc and gpu take two each, the fifth waits in
    # the global queue although the ai site's nodes are free, and runs when one ends.
    work = tmp_path / "runs"
    work.mkdir()
    jobs = []
    for k in range(5):
        d = work / str(k)
        d.mkdir()
        nap = "12" if k < 4 else "0"
        jobs.append(run(fed, "-D", str(d), "wave-where", "--param", f"nap={nap}"))
    ran = {j: wait_state(fed, j, {S.COMPLETED}, 180) for j in jobs}
    sites = {j: job.site for j, job in ran.items()}
    assert "ai" not in sites.values()
    assert sorted(sites[j] for j in jobs[:4]) == ["gpu", "gpu", "hpc", "hpc"]
    for k, j in enumerate(jobs):
        job = ran[j]
        assert job.recipe == {"hpc": "cpu", "gpu": "a100"}[job.site]
        assert job.spec.app == "wave-where" and job.spec.app_version == "1.0"
        out = (work / str(k) / "wave.out").read_text()
        assert f"build={'cpu' if job.site == 'hpc' else 'a100-container'}" in out
        # the a100 recipe's run was given its A100 (Slurm set CUDA_VISIBLE_DEVICES), the
        # CPU recipe's none
        assert ("gpus=none" in out) == (job.site == "hpc"), out
    # the fifth waited for room rather than take the free ai site
    fifth = ran[jobs[4]]
    first_ends = min(ran[j].ended_at for j in jobs[:4])
    assert fifth.started_at >= first_ends - 1.0


def test_another_user_runs_a_public_app_and_fetches_a_published_result(
    fed: Federation, users: dict[str, Path], tmp_path: Path
) -> None:
    alice, bob = USERS
    tmp_path.chmod(0o755)
    fed.msub("app", "publish", str(app_toml(tmp_path, "wave-pub")))
    # alice runs root's public app, with a label that a careless script would execute
    label = "$(touch /tmp/mapalice-pwned); echo"
    job_id = run(
        fed,
        "-D",
        str(users[alice]),
        "wave-pub",
        "--param",
        "steps=7",
        "--param",
        f"label={label}",
        user=alice,
    )
    job = wait_state(fed, job_id, {S.COMPLETED})
    assert job.user == alice
    out = (users[alice] / "wave.out").read_text()
    assert "steps=7 sum=91" in out and f"label={label}" in out
    assert not Path("/tmp/mapalice-pwned").exists()
    assert users[alice].joinpath("wave.out").stat().st_uid == pwd.getpwnam(alice).pw_uid

    published = json.loads(
        fed.msub("app", "publish-result", str(job_id), "--json", user=alice).stdout
    )
    (f,) = published["files"]
    assert f["path"] == str(users[alice] / "wave.out")
    assert f["sha256"] == hashlib.sha256(out.encode()).hexdigest()
    assert published["params"] == {"steps": "7", "label": label, "nap": "0"}

    # bob finds it and fetches it (read at the site as alice, whose file it is)
    listed = json.loads(fed.msub("result", "list", "wave-pub", "--json", user=bob).stdout)
    assert [int(r["id"]) for r in listed] == [int(published["id"])]
    dest = users[bob] / "got.out"
    fed.msub("result", "fetch", str(published["id"]), "-o", str(dest), user=bob)
    assert dest.read_text() == out
    shown = json.loads(fed.msub("result", "show", str(published["id"]), "--json", user=bob).stdout)
    assert shown["fetches"] == 1
    apps = {a["name"]: a for a in json.loads(fed.msub("app", "list", "--json", user=bob).stdout)}
    assert apps["wave-pub"]["runs"] == 1 and apps["wave-pub"]["results"] == 1

    # a result's file is read as its owner: a symlink alice leaves to a file only root can
    # read is not followed as root
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    (users[alice] / "wave.out").unlink()
    (users[alice] / "wave.out").symlink_to(secret)
    again = fed.msub("result", "fetch", str(published["id"]), "-o", "-", check=False, user=bob)
    assert again.returncode != 0 and "root only" not in again.stdout
    assert "Permission denied" in again.stderr


def test_a_private_app_is_invisible_to_others_and_versions_never_change(
    fed: Federation, users: dict[str, Path]
) -> None:
    alice, bob = USERS
    defs = users[alice]
    private = app_toml(defs, "wave-secret", visibility="private")
    shutil.chown(private, alice, alice)
    fed.msub("app", "publish", str(private), user=alice)
    assert "wave-secret" in fed.msub("app", "list", user=alice).stdout
    assert "wave-secret" not in fed.msub("app", "list", user=bob).stdout
    for argv in (("app", "show", "wave-secret"), ("app", "run", "wave-secret")):
        refused = fed.msub(*argv, check=False, user=bob)
        assert refused.returncode != 0 and "no app 'wave-secret" in refused.stderr

    # the same version again, even unchanged, is refused; a new version is another entry
    again = fed.msub("app", "publish", str(private), check=False, user=alice)
    assert again.returncode != 0 and "versions never change" in again.stderr
    v2 = app_toml(defs, "wave-secret", version="2.0", visibility="private", cpus=2)
    shutil.chown(v2, alice, alice)
    fed.msub("app", "publish", str(v2), user=alice)
    versions = json.loads(fed.msub("app", "versions", "wave-secret", "--json", user=alice).stdout)
    assert [(v["version"], v["resources"]["cpus_per_task"]) for v in versions] == [
        ("1.0", 1),
        ("2.0", 2),
    ]
    # and bob may not take the name over with a version of his own
    bobs = app_toml(users[bob], "wave-secret", version="3.0")
    shutil.chown(bobs, bob, bob)
    taken = fed.msub("app", "publish", str(bobs), check=False, user=bob)
    assert taken.returncode != 0 and "belongs to mapalice" in taken.stderr


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (('accelerator = "none"', 'accelerator = "none"\nprecision = "fp128"'), "fp128"),
        (('modules = ["wave/1.0"]', 'modules = ["wave/9.9"]'), "no site can ever run it"),
        (("default = 100", 'default = "many"'), "must be a whole number"),
        (("--steps {steps}", "--steps '{steps}'"), "inside '-quotes"),
    ],
)
def test_bad_definitions_are_refused_with_the_reason(
    fed: Federation, tmp_path: Path, change: tuple[str, str], why: str
) -> None:
    tmp_path.chmod(0o755)
    path = app_toml(tmp_path, "wave-bad")
    path.write_text(path.read_text().replace(*change, 1))
    refused = fed.msub("app", "publish", str(path), check=False)
    assert refused.returncode != 0 and why in refused.stderr
    assert "wave-bad" not in fed.msub("app", "list", "--all").stdout


def test_a_parameter_of_the_wrong_type_is_refused(fed: Federation, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    fed.msub("app", "publish", str(app_toml(tmp_path, "wave-typed")))
    refused = fed.msub("app", "run", "wave-typed", "--param", "steps=1; reboot", check=False)
    assert refused.returncode != 0 and "steps must be a whole number" in refused.stderr
    unknown = fed.msub("app", "run", "wave-typed", "--param", "stepz=1", check=False)
    assert unknown.returncode != 0 and "no parameter 'stepz'" in unknown.stderr
