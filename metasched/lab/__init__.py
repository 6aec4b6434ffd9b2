"""A Slurm lab: several real Slurm sites on one machine, for tests and the README demo.

with SlurmLab(Path("/tmp/msl-demo"), list(DEMO_SITES)) as lab:
    subprocess.run(["sinfo"], env={**os.environ, **lab.env("gpu")})
"""

from metasched.lab import installs
from metasched.lab.harness import LabError, SlurmLab, slurm_installed
from metasched.lab.profiles import DEMO_SITES, Partition, SiteProfile, demo_sites

__all__ = [
    "DEMO_SITES",
    "LabError",
    "Partition",
    "SiteProfile",
    "SlurmLab",
    "demo_sites",
    "installs",
    "slurm_installed",
]
