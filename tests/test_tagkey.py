"""The agent's tag key and the job environment check (pure logic; the lab tests are in
test_adversarial_agent.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metasched import jobenv, tags
from metasched.agent.tagkey import KEY_FILE, TagKeyError, TagKeys

TAG = "metasched:0123456789ab:42:3"


def test_a_signed_tag_verifies_only_for_its_user(tmp_path: Path) -> None:
    keys = TagKeys.load_or_create(tmp_path)
    signed = keys.sign(TAG, "alice")
    assert tags.parse(signed) == tags.parse(TAG)  # the daemon still reads it as the tag
    assert keys.verify(signed, "alice")
    assert not keys.verify(signed, "mallory")  # copied onto another user's job
    assert not keys.verify(TAG, "alice")  # plain tag: no proof
    forged = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    assert not keys.verify(forged, "alice")
    other = keys.sign("metasched:0123456789ab:43:3", "alice")
    assert not keys.verify(TAG + ":" + tags.mac_of(other), "alice")  # MAC of another job


def test_the_key_is_private_kept_and_rotated(tmp_path: Path) -> None:
    keys = TagKeys.load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    old = keys.sign(TAG, "alice")
    assert TagKeys.load_or_create(tmp_path).verify(old, "alice")  # not made again
    TagKeys.rotate(tmp_path)
    rotated = TagKeys.load(path)
    assert rotated.verify(old, "alice")  # jobs signed before still verify
    assert rotated.sign(TAG, "alice") != old  # new jobs get the new key
    path.chmod(0o644)
    with pytest.raises(TagKeyError, match="readable by others"):
        TagKeys.load(path)


def test_a_symlinked_key_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("0" * 64 + "\n")
    os.chmod(target, 0o600)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / KEY_FILE).symlink_to(target)
    with pytest.raises(TagKeyError):
        TagKeys.load_or_create(tmp_path / "state")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"LD_PRELOAD": "/x.so"}, "LD_PRELOAD"),
        ({"GLIBC_TUNABLES": "x"}, "GLIBC_TUNABLES"),
        ({"SLURM_CONF": "/x"}, "SLURM_CONF"),
        ({"SBATCH_UID": "0"}, "SBATCH_UID"),
        ({"BASH_ENV": "/x"}, "BASH_ENV"),
        ({"METASCHED_JOB_ID": "1"}, "METASCHED_JOB_ID"),
        ({"A": "x\0B=y"}, "NUL"),
        ({"1A": "x"}, "bad environment variable name"),
        ({"BIG": "x" * jobenv.MAX_ENTRY_BYTES}, "BIG is"),
        ({f"V{i}": "y" * 100_000 for i in range(11)}, "the environment is"),
    ],
)
def test_what_a_job_environment_may_not_hold(env: dict[str, str], says: str) -> None:
    problem = jobenv.problem(env)
    assert problem is not None and says in problem and "\n" not in problem


def test_what_a_job_environment_may_hold() -> None:
    ok = {
        "PYTHONPATH": "/opt/lib",
        "PATH": "/usr/bin",
        "ld_preload": "lower case is not the loader's",
        "MULTI": "a,b=c\nd --uid=0",
        "BIG": "x" * (jobenv.MAX_ENTRY_BYTES - len("BIG=")),
    }
    assert jobenv.problem(ok) is None
    data = jobenv.export_file(ok)
    assert data.count(b"\0") == len(ok) and b"MULTI=a,b=c\nd --uid=0\0" in data
    assert jobenv.without_denied({"LD_LIBRARY_PATH": "/x", "HOME": "/h"}) == {"HOME": "/h"}
