"""What a lab site looks like: nodes, CPUs, memory, GPUs, partitions, and which Slurm.

The numbers are Slurm's view only (slurmd trusts them via config_overrides), so a laptop can
play a site of 128-CPU GPU nodes. DEMO_SITES are the three precision profiles of the README;
mixed_demo() puts them on different Slurm releases and agent backends.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, replace

# Slurm lower-cases ClusterName and node names are hostnames: keep both to the safe subset.
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_GPU_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Partition:
    name: str
    max_time_minutes: int = 0  # 0 = unlimited
    default_time_minutes: int = 60
    default: bool = False
    state: str = "UP"  # DOWN: takes jobs and runs none (they stay PENDING, PartitionDown)


@dataclass(frozen=True)
class SiteProfile:
    """One Slurm cluster of identical nodes, named '<name>-n1' .. '<name>-nN'."""

    name: str
    nodes: int
    cpus: int
    sockets: int
    cores_per_socket: int
    mem_mb: int
    gpu_type: str = ""
    gpu_count: int = 0
    partitions: tuple[Partition, ...] = (Partition("batch", max_time_minutes=7 * 24 * 60),)
    features: tuple[str, ...] = ()  # node features (-C) besides the site's own name
    other_gres: tuple[str, ...] = ()  # count-only GRES per node, e.g. ("nvme:1000",)
    # Which Slurm runs the site (metasched.lab.installs.find): "" = the machine's own
    # (Debian's 22.05), a release ("25.11": the build scripts/setup caches), or a prefix.
    slurm: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"site name {self.name!r}: lower-case letters, digits and '-'")
        if self.nodes < 1 or self.nodes > 80:  # 80: ports 10+k must stay inside a site's 100
            raise ValueError(f"site {self.name}: nodes must be 1..80")
        if self.sockets * self.cores_per_socket != self.cpus:
            raise ValueError(f"site {self.name}: sockets x cores_per_socket must equal cpus")
        if self.gpu_count and not _GPU_TYPE_RE.match(self.gpu_type):
            raise ValueError(f"site {self.name}: bad gpu_type {self.gpu_type!r}")
        if not self.partitions:
            raise ValueError(f"site {self.name}: at least one partition")
        names = [p.name for p in self.partitions]
        if len(set(names)) != len(names):
            raise ValueError(f"site {self.name}: duplicate partition names")

    def node_names(self) -> list[str]:
        return [f"{self.name}-n{k}" for k in range(1, self.nodes + 1)]

    @property
    def default_partition(self) -> str:
        return next((p.name for p in self.partitions if p.default), self.partitions[0].name)


DEMO_SITES: tuple[SiteProfile, ...] = (
    # classic CPU cluster: FP64 simulation work
    SiteProfile("hpc", nodes=2, cpus=64, sockets=2, cores_per_socket=32, mem_mb=256_000),
    # GPU cluster: mixed precision
    SiteProfile(
        "gpu",
        nodes=2,
        cpus=64,
        sockets=2,
        cores_per_socket=32,
        mem_mb=512_000,
        gpu_type="a100",
        gpu_count=4,
    ),
    # AI-only site: low-precision accelerators, no FP64 to speak of
    SiteProfile(
        "ai",
        nodes=2,
        cpus=128,
        sockets=2,
        cores_per_socket=64,
        mem_mb=1_024_000,
        gpu_type="ascend910b",
        gpu_count=8,
    ),
)


def demo_sites(n: int = 3) -> list[SiteProfile]:
    """n sites cycling through DEMO_SITES: hpc, gpu, ai, hpc2, gpu2, ai2, ..."""
    if not 1 <= n <= 30:
        raise ValueError("1..30 sites")
    out = []
    for i in range(n):
        shape = DEMO_SITES[i % len(DEMO_SITES)]
        rnd = i // len(DEMO_SITES)
        out.append(replace(shape, name=shape.name + (str(rnd + 1) if rnd else "")))
    return out


# The demo's sites over Slurm releases, when a 25.11 build is there: (release, agent backend).
MIXED_DEMO = {"hpc": ("", "cli"), "gpu": ("25.11", "pyslurm"), "ai": ("25.11", "cli")}


def mixed_demo_ready() -> bool:
    """Is a 25.11 build there (scripts/build-slurm), with pyslurm for it in this Python?"""
    from metasched.lab import installs

    return installs.available("25.11") and importlib.util.find_spec("pyslurm") is not None


def mixed_demo() -> tuple[list[SiteProfile], dict[str, str]]:
    """DEMO_SITES as a mixed federation: hpc on the machine's Slurm (Debian's 22.05) with a
    cli agent, gpu on 25.11 with a pyslurm agent, ai on 25.11 with a cli agent. Returns the
    sites and each site's agent backend."""
    sites = [replace(s, slurm=MIXED_DEMO[s.name][0]) for s in DEMO_SITES]
    return sites, {name: backend for name, (_, backend) in MIXED_DEMO.items()}
