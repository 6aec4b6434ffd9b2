"""sbatch direct against msub on a corpus of real job scripts, at one lab site; prints the table.

    python -m bench.sbatch_corpus [--root /tmp/msc-corpus] [FILE...]

Brings up a lab site built for the corpus (metasched/lab/corpus.py) with metaschedd and its
agent, submits every script of tests/data/scripts/ both ways from one directory, compares
the two Slurm jobs field by field and tears everything down. tests/test_sbatch_corpus.py
asserts the same table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from metasched.lab import corpus
from metasched.lab.federation import Federation


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=None, help="runtime dir (short path)")
    ap.add_argument("files", nargs="*", help="corpus files (default: all)")
    args = ap.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="msc-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    lab = corpus.lab_for_corpus(root / "l")
    try:
        with lab, Federation(lab, root / "f") as fed:
            outcomes = corpus.run(fed, root / "work", args.files or None)
        for line in corpus.table(outcomes):
            print(line)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
