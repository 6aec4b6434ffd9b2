"""python -m metasched.lab up|down|status --root DIR [--sites N] [--base-port P]

`up` starts the demo sites (hpc, gpu, ai, ...) and leaves them running; `down` stops
whatever an earlier `up` started under the same root.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from metasched.lab.harness import LabError, SlurmLab
from metasched.lab.profiles import demo_sites


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metasched.lab", description=__doc__)
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--root", type=Path, default=Path("/tmp/msl-demo"), help="runtime dir (short)")
    ap.add_argument("--sites", type=int, default=3, help="number of demo sites (up)")
    ap.add_argument("--base-port", type=int, default=None, help="default: a free range")
    args = ap.parse_args(argv)
    try:
        if args.command == "up":
            lab = SlurmLab(args.root, demo_sites(args.sites), args.base_port, cleanup_at_exit=False)
            lab.up()
            for name in lab.sites:
                print(f"{name}: up  export SLURM_CONF={lab.slurm_conf(name)}")
        elif args.command == "down":
            SlurmLab.attach(args.root).down()
            print("all down")
        else:
            lab = SlurmLab.attach(args.root)
            for name in lab.sites:
                if not lab.site_up(name):
                    print(f"{name}: DOWN  SLURM_CONF={lab.slurm_conf(name)}")
                    continue
                version = lab.install(name).version
                print(f"{name}: UP    Slurm {version}  SLURM_CONF={lab.slurm_conf(name)}")
                sinfo = lab.install(name).command("sinfo")
                nodes = subprocess.run(
                    [sinfo, "-h", "-N", "-o", "  %N %T cpus=%c mem=%m gres=%G"],
                    env=lab.env(name),
                    capture_output=True,
                    text=True,
                    check=False,
                )
                sys.stdout.write(nodes.stdout)
    except LabError as e:
        print(f"metasched.lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
