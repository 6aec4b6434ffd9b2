"""What software this site offers apps' recipes (docs/apps.md): declared in the agent config
([offers], and per partition), and on sites that run Lmod, the modules `module -t avail`
lists, looked up now and then (module trees change with software installs, not per job)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field

from metasched import log
from metasched.v1 import metasched_pb2 as pb

DISCOVERY_INTERVAL_S = 600.0
TIMEOUT_S = 60.0
# Lmod's init scripts, Debian's and Lmod's own install layout; the login profile otherwise.
_LMOD_INIT = (
    "for f in /usr/share/lmod/lmod/init/bash /opt/lmod/lmod/init/bash"
    ' /usr/share/lmod/lmod/init/sh; do [ -r "$f" ] && . "$f" && break; done;'
    " type module >/dev/null 2>&1 || . /etc/profile >/dev/null 2>&1;"
)


@dataclass(frozen=True)
class OfferConfig:
    modules: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    container_run: str = ""  # how the site runs an image: e.g. "apptainer exec --nv"
    discover_modules: bool = False  # ask Lmod (module -t avail)
    modulepath: tuple[str, ...] = ()  # module trees outside the login MODULEPATH
    partitions: dict[str, pb.Offerings] = field(default_factory=dict)


def parse_avail(text: str) -> list[str]:
    """`module -t avail`'s output (on stderr, with Lmod) -> module names: tree headers
    ("/path:") and directory entries ("gcc/") are skipped, markers such as (D) removed."""
    out = []
    for line in text.splitlines():
        name = line.strip()
        if not name or name.endswith(":") or name.endswith("/"):
            continue
        name = name.split("(", 1)[0].strip()
        if name and " " not in name:
            out.append(name)
    return sorted(set(out))


def discover_modules(modulepath: tuple[str, ...]) -> list[str]:
    """The modules Lmod lists on this host (with modulepath's trees added)."""
    uses = "".join(f' module use "{p}";' for p in modulepath if '"' not in p and "$" not in p)
    proc = subprocess.run(
        ["/bin/bash", "-c", _LMOD_INIT + uses + " module -t avail"],
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/", "LMOD_ALLOW_ROOT_USE": "yes"},
    )
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(why[-1] if why else f"module -t avail exited {proc.returncode}")
    # Lmod writes the list to stderr; other module systems to stdout
    return parse_avail(
        proc.stderr.decode(errors="replace") + "\n" + proc.stdout.decode(errors="replace")
    )


class SiteOffers:
    """The site's Offerings for its reports, with discovered modules refreshed now and then."""

    def __init__(self, cfg: OfferConfig, site: str) -> None:
        self.cfg = cfg
        self.log = log.get(site=site, component="offers")
        self._found: list[str] = []
        self._at = -DISCOVERY_INTERVAL_S

    def site(self) -> pb.Offerings:
        cfg = self.cfg
        if cfg.discover_modules and time.monotonic() - self._at >= DISCOVERY_INTERVAL_S:
            self._at = time.monotonic()
            try:
                found = discover_modules(cfg.modulepath)
                if found != self._found:
                    self.log.info("modules_discovered", count=len(found))
                self._found = found
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                self.log.warning("module_discovery_failed", error=str(e))
        return pb.Offerings(
            modules=sorted(set(cfg.modules) | set(self._found)),
            containers=list(cfg.containers),
            paths=list(cfg.paths),
            container_run=cfg.container_run,
            module_use=list(cfg.modulepath),
        )

    def partition(self, name: str) -> pb.Offerings | None:
        return self.cfg.partitions.get(name)
