"""The software the lab's sites offer apps (docs/apps.md), made under the federation's root.

Each kind of demo site gets what such a centre would have:
  - a CPU centre (no accelerators): an Lmod module tree with `wave/1.0`, found by the agent
    with `module -t avail` (Debian's lmod), loaded by the job with `module load`;
  - an A100 centre: a container image `wave:1.0-cuda`, run through the site's launcher;
  - an AI centre (other accelerators): nothing wave needs.
The launcher, `lab-container IMAGE CMD...`, stands in for apptainer as the lab's GRES stand
in for real GPUs: it runs the command with the image's bin/ first on PATH and says which
image it is. `wave` itself is a small shell program that writes what it computed, where and
with which build and GPUs, so a test can tell which recipe ran and what it was given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from metasched.lab.profiles import SiteProfile

WAVE = r"""#!/bin/sh
# wave --steps N --out FILE [--label TEXT] [--sleep S]: a stand-in solver.
steps=10 out=wave.out label="" nap=0
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --sleep) nap=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    *) echo "wave: unknown option $1" >&2; exit 2 ;;
  esac
done
sleep "$nap"
sum=0 i=0
while [ "$i" -lt "$steps" ]; do sum=$((sum + i * i)); i=$((i + 1)); done
printf 'wave steps=%s sum=%s build=%s gpus=%s host=%s label=%s\n' "$steps" "$sum" \
  "${WAVE_BUILD:-none}" "${CUDA_VISIBLE_DEVICES:-none}" "$(hostname)" "$label" > "$out"
cat "$out"
"""

LAUNCHER = r"""#!/bin/sh
# lab-container IMAGE CMD...: the lab's stand-in for `apptainer exec IMAGE CMD...`.
images=$(dirname "$0")/../images
image=$1; shift
dir=$images/$(printf '%s' "$image" | tr ':/' '__')
[ -d "$dir" ] || { echo "lab-container: no image $image" >&2; exit 125; }
PATH=$dir/bin:$PATH WAVE_BUILD=$(cat "$dir/build") exec "$@"
"""

MODULEFILE = """whatis("wave 1.0, CPU build")
prepend_path("PATH", "{bin}")
setenv("WAVE_BUILD", "cpu")
"""


def lmod_installed() -> bool:
    return Path("/usr/share/lmod/lmod/init/bash").exists() or shutil.which("lmod") is not None


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def make_software(root: Path) -> Path:
    """The lab's software tree under root (readable by every user); returns it."""
    sw = root / "software"
    _write(sw / "cpu" / "bin" / "wave", WAVE, 0o755)
    _write(sw / "modules" / "wave" / "1.0.lua", MODULEFILE.format(bin=sw / "cpu" / "bin"))
    image = sw / "images" / "wave_1.0-cuda"
    _write(image / "bin" / "wave", WAVE, 0o755)
    _write(image / "build", "a100-container\n")
    _write(sw / "bin" / "lab-container", LAUNCHER, 0o755)
    for d in [sw, *(p for p in sw.rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    return sw


def offers_toml(site: SiteProfile, software: Path) -> str:
    """The [offers] of a lab site's agent config, by the kind of site it is."""
    if not site.gpu_count:
        if lmod_installed():
            return f'[offers]\ndiscover_modules = true\nmodulepath = ["{software / "modules"}"]\n'
        return "[offers]\nmodules = []  # Lmod is not installed: no modules to offer\n"
    if site.gpu_type == "a100":
        return (
            '[offers]\ncontainers = ["wave:1.0-cuda"]\n'
            f'container_run = "{software / "bin" / "lab-container"}"\n'
        )
    return ""
