"""Users bring the job scripts they already have: 63 real job scripts from public repositories
(tests/data/scripts/MANIFEST.json), each submitted by the lab's own sbatch and by msub (real
processes, through metaschedd and the agent) from the same directory, at the same site.

What sbatch accepts, msub accepts, and the two Slurm jobs agree field by field (the
metasched tag aside); what sbatch refuses, msub refuses at submit. The table is printed
(`python -m bench.sbatch_corpus` prints the same)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metasched.lab import corpus, slurm_installed
from metasched.lab.federation import Federation

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def outcomes() -> Iterator[list[corpus.Outcome]]:
    if not slurm_installed() or os.geteuid() != 0:
        if os.environ.get("METASCHED_REQUIRE_SLURM") == "1":
            pytest.fail("METASCHED_REQUIRE_SLURM=1 but the Slurm lab cannot run here")
        pytest.skip("the corpus runs at a Slurm lab site (root, slurmctld, slurmd, munge)")
    root = Path(tempfile.mkdtemp(prefix="msc-", dir="/tmp"))
    root.chmod(0o755)
    lab = corpus.lab_for_corpus(root / "l")
    try:
        with lab, Federation(lab, root / "f") as fed:
            yield corpus.run(fed, root / "work")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_corpus_is_real_and_recorded() -> None:
    rows = corpus.manifest()
    assert len(rows) >= 60
    for row in rows:
        assert (corpus.CORPUS / row["file"]).read_text().startswith("#!")
        assert len(row["commit"]) == 40 and row["repository"].count("/") == 1
        assert row["licence"] in ("MIT", "BSD-3-Clause", "Apache-2.0")
    assert len({row["repository"] for row in rows}) >= 4


def test_sbatch_and_msub_make_the_same_jobs(outcomes: list[corpus.Outcome]) -> None:
    print("\n" + "\n".join(corpus.table(outcomes)))
    wrong = [o for o in outcomes if o.verdict not in ("same", "both refuse")]
    assert not wrong, "\n".join(corpus.table(wrong))
    same = sum(o.verdict == "same" for o in outcomes)
    assert same >= 55, same  # most of the corpus is compared field by field, not refused
    # job arrays too: msub's tasks (plain Slurm jobs) carry the array sbatch made
    arrays = [o for o in outcomes if "--array" in (corpus.CORPUS / o.file).read_text()]
    assert len(arrays) == 2 and all(o.verdict == "same" for o in arrays)


def test_refusals_come_with_sbatchs_reason(outcomes: list[corpus.Outcome]) -> None:
    refused = [o for o in outcomes if o.verdict == "both refuse"]
    assert refused
    for o in refused:
        assert o.msub.startswith("msub: ") and len(o.msub) > 20, o
        # an en dash ("\u2013N 2") copied from a web page: both name the same word
        if "Invalid directive" in o.sbatch:
            assert o.sbatch.split(": ")[-1] == o.msub.split(": ")[-1], o
