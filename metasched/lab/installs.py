"""Which Slurm a lab site runs: Debian's packages (22.05, under /usr) or a build of another
release that scripts/setup left in the cache (25.11, under /var/cache/metasched).

A site profile names its Slurm as a release ("22.05", "25.11"), as an install prefix
("/opt/slurm-24.11"), or not at all (the machine's own: the first slurmctld on PATH). One
federation can so mix releases; every site still shares the lab's one munged, which any
Slurm built against libmunge talks to.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Where scripts/setup builds Slurm releases Debian does not package: <cache>/slurm-<release>
# is a symlink to the build of that release (see scripts/build-slurm).
CACHE_ENV = "METASCHED_SLURM_CACHE"
DEFAULT_CACHE = Path("/var/cache/metasched")
# Daemons live in sbin, client commands in bin.
_SBIN = frozenset({"slurmctld", "slurmd", "slurmstepd", "slurmdbd", "slurmrestd"})
_RELEASE = re.compile(r"^\d{2}\.\d{2}$")


class NoSuchInstall(LookupError):
    """The Slurm a profile names is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class SlurmInstall:
    """One Slurm installation: where its programs are, and which version they are."""

    prefix: Path  # /usr for Debian's packages
    version: str  # '25.11.7'

    @property
    def release(self) -> str:
        """'25.11': what a site profile names, and what pyslurm is built for."""
        return ".".join(self.version.split(".")[:2])

    @property
    def bin_dir(self) -> Path:
        return self.prefix / "bin"

    @property
    def sbin_dir(self) -> Path:
        return self.prefix / "sbin"

    def command(self, name: str) -> str:
        """Absolute path of one of its programs ('sinfo', 'slurmctld', ...)."""
        return str((self.sbin_dir if name in _SBIN else self.bin_dir) / name)

    def env_path(self, path: str | None = None) -> str:
        """PATH with this install's commands first, so bare `sbatch` is this Slurm's."""
        rest = path if path is not None else os.environ.get("PATH", "/usr/bin:/bin")
        return f"{self.bin_dir}:{self.sbin_dir}:{rest}"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


@functools.lru_cache(maxsize=32)
def at(prefix: str | Path) -> SlurmInstall:
    """The install under prefix; its version from `slurmctld -V` (which needs no slurm.conf,
    unlike every client command)."""
    prefix = Path(prefix)
    ctld = prefix / "sbin" / "slurmctld"
    if not os.access(ctld, os.X_OK):
        raise NoSuchInstall(f"no Slurm under {prefix} ({ctld} is missing)")
    try:
        out = subprocess.run(
            [str(ctld), "-V"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NoSuchInstall(f"{ctld} -V: {e}") from None
    m = re.search(r"(\d+\.\d+\.\d+)", out)
    if not m:
        raise NoSuchInstall(f"{ctld} -V printed no version: {out.strip()[:80]!r}")
    return SlurmInstall(prefix, m.group(1))


def system() -> SlurmInstall | None:
    """The machine's own Slurm: the slurmctld first on PATH (Debian's under /usr)."""
    ctld = shutil.which("slurmctld") or shutil.which("slurmctld", path="/usr/sbin:/sbin")
    if ctld is None:
        return None
    try:
        return at(Path(ctld).resolve().parent.parent)
    except NoSuchInstall:
        return None


def find(name: str = "") -> SlurmInstall:
    """The install a site profile names: '' (the machine's own), a release, or a prefix."""
    if not name:
        own = system()
        if own is None:
            raise NoSuchInstall(
                "no Slurm installed (scripts/setup installs Debian's slurmctld slurmd "
                "slurm-client munge)"
            )
        return own
    if name.startswith("/"):
        return at(name)
    if not _RELEASE.match(name):
        raise NoSuchInstall(f"Slurm {name!r}: name a release like '25.11' or an install prefix")
    own = system()
    if own is not None and own.release == name:
        return own
    built = cache_dir() / f"slurm-{name}"
    if built.exists():
        found = at(built.resolve())
        if found.release != name:
            raise NoSuchInstall(f"{built} holds Slurm {found.version}, not {name}")
        return found
    raise NoSuchInstall(
        f"Slurm {name} is not installed: scripts/setup builds it into {built} "
        f"(from SchedMD's release tarball; see README)"
    )


def available(name: str) -> bool:
    try:
        find(name)
    except NoSuchInstall:
        return False
    return True
