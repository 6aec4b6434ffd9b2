"""msub reads options as the real sbatch does: the same command lines and #SBATCH lines are
accepted and refused by the lab's sbatch (Slurm 22.05) and by metasched's option table.

sbatch's verdict here is its client's: it submits the job held (a refusal by slurmctld, say
of an unknown partition, is the site's business and is not compared). The few documented
differences are listed with the reason metasched gives instead."""

from __future__ import annotations

import os
import subprocess

import pytest

from metasched.jobspec import SpecError
from metasched.lab import SlurmLab
from metasched.sbatch import argv, resolve

pytestmark = pytest.mark.slurm

SH = "#!/bin/sh\ntrue\n"

# (command line, script) cases; the script's directives go after its #! line
CASES: list[tuple[str, str]] = (
    [
        (w, "")
        for w in (
            "-N 2",
            "-N 1-1",
            "-N2-2",
            "-N -3",
            "-N 2-",
            "-N 1k",
            "-n 4",
            "-n 0",
            "-n 2k",
            "-n +3",
            "-c 0",
            "--ntasks-per-node=4",
            "--ntasks-per-node=0",
            "--tasks=2",
            "--ntasks-per-n=2",
            "--part=batch",
            "--mem-per=1G",
            "--gpu=1",
            "--cpu=2",
            "--exc=x",
            "--exclu",
            "--mem=4GB",
            "--mem=4Gb",
            "--mem=500K",
            "--mem=1.5G",
            "--mem=0",
            "--mem-per-cpu=2G",
            "--mem-per-gpu=2G --gpus=1",
            "--mem=1G --mem-per-cpu=1G",
            "-t 0",
            "-t UNLIMITED",
            "-t 1:30",
            "-t 5-",
            "-t 1-2:3",
            "-t :5",
            "-t 1::",
            "-t 1.5",
            "--time=1:2:3:4",
            "--gres=gpu:1",
            "--gres=gpu:a100:1",
            "--gres=gpu:a100",
            "--gres=none",
            "--gpus=0",
            "--gpus=a100",
            "--gpus=2 --gpus-per-task=1 -n 2",
            "--gpus-per-task=0",
            "--cpus-per-gpu=0",
            "--cpus-per-gpu=2 -c 2 --gpus=1",
            "-J 'a b:c%d'",
            "-J ''",
            "--comment=hello",
            "--comment=",
            "--exclusive",
            "--exclusive=user",
            "--exclusive=OVERSUBSCRIBE",
            "--exclusive=bogus",
            "-s",
            "-k",
            "-kfoo",
            "--no-kill=off",
            "--requeue",
            "--no-requeue",
            "--nice",
            "--nice=5",
            "--nice=abc",
            "--priority=abc",
            "--propagate",
            "--signal=10",
            "--signal=B:USR1@60",
            "--signal=USR1@abc",
            "--mail-type=END,FAIL",
            "--mail-type=BEGIN,FOO",
            "--mail-type=FOO",
            "--mail-user=a@b",
            "--open-mode=Append",
            "--open-mode=x",
            "--tmp=5x",
            "--tmp=10G",
            "--deadline=garbage",
            "--deadline=now+1hour",
            "--deadline=2030-01-01T10:00",
            "--time-min=10",
            "--mincpus=2",
            "-B 2:4:1",
            "--hint=nomultithread",
            "--hint=bogus",
            "--kill-on-invalid-dep=maybe",
            "--wckey=",
            "-D relative",
            "-C ib",
            "-x hpc-n2",
            "--bogus",
            "-y",
            "--hold=1",
            "--parsable",
            "-Q",
            "-vQ",
        )
    ]
    + [
        ("", d)
        for d in (
            "#SBATCH -N 2 --ntasks-per-node=2\n",
            "#SBATCH -J 'my job' # a comment\n",
            "#SBATCH foo\n",
            "#SBATCH --tme=5\n",
            "#SBATCH -J 'unmatched\n",
            "  #SBATCH --bogus\n",  # indented: a comment
            "#SLURM -N 1\n",
            "#SBATCH -N\n#SBATCH 2\n",
            "#SBATCH --mem=1G\n",
            "#SBATCH --mem=1G\n#SBATCH --mem-per-cpu=1G\n",
        )
    ]
    + [
        ("--mem-per-cpu=1G", "#SBATCH --mem=1G\n"),
        ("-t 5", "#SBATCH -t bogus\n"),  # sbatch reads every line, even if overridden
    ]
)

# Accepted by 22.05's sbatch, refused by metasched with a reason (docs/sbatch.md).
DIFFERENT = {
    "-t -5": "a negative time limit",
    "--ext=1": "an abbreviation that is ambiguous in later Slurm",
}


def sbatch_accepts(env: dict[str, str], words: str, script: str) -> tuple[bool, str]:
    proc = subprocess.run(
        ["sh", "-c", f"sbatch -H --parsable {words}"],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if proc.returncode == 0:
        job = proc.stdout.strip().split(";")[0]
        subprocess.run(["scancel", job], env=env, check=False, timeout=60)
        return True, ""
    # refused by slurmctld (partition, node configuration): not the client's verdict
    return "Batch job submission failed" in proc.stderr, proc.stderr.strip()


def msub_accepts(words: str, script: str) -> tuple[bool, str]:
    try:
        given, rest = argv.parse(_shell_words(words), argv.CLI)
        resolve.resolve(script, given, environ={}, submit_dir="/tmp")
    except SpecError as e:
        return False, str(e)
    return not rest, ""


def _shell_words(text: str) -> list[str]:
    out = subprocess.run(
        ["sh", "-c", f'for a in {text}; do printf "%s\\0" "$a"; done'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split("\0")[:-1]


@pytest.fixture(scope="module")
def env(slurm_lab: SlurmLab) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SBATCH_", "SLURM_"))}
    return {**base, **slurm_lab.env("gpu")}


def test_sbatch_and_msub_accept_and_refuse_the_same_options(env: dict[str, str]) -> None:
    mismatches = []
    for words, directives in CASES:
        script = "#!/bin/sh\n" + directives + "true\n"
        want, why_sbatch = sbatch_accepts(env, words, script)
        got, why_msub = msub_accepts(words, script)
        if want != got:
            mismatches.append(
                f"{words!r} {directives!r}: sbatch {want} ({why_sbatch}), msub {got} ({why_msub})"
            )
    assert not mismatches, "\n".join(mismatches)
    print(f"\n{len(CASES)} option cases: sbatch and msub agree on each")


def test_documented_differences_are_refusals_with_a_reason(env: dict[str, str]) -> None:
    for words, why in DIFFERENT.items():
        accepted, _ = sbatch_accepts(env, words, SH)
        assert accepted, (words, "the difference is gone: drop it from DIFFERENT")
        ok, message = msub_accepts(words, SH)
        assert not ok and message, (words, why)
