"""pyslurm objects recorded from a real Slurm 25.11 site, for the pyslurm backend's unit tests.

The unit tests feed the backend's conversions `Recorded` objects: exactly the attributes the
real objects had (Job has `allocated_nodes` and no `nodes`; `gres_per_node` keys read
'gres/gpu:h100'; Node.allocated_gres is empty without slurmdbd), with the values they had.
test_backend_contract checks, whenever pyslurm and a 25.11 site are there, that today's real
objects still have the recorded attributes and value types.

Record again (as root, with scripts/build-slurm done):
    .venv/bin/python tests/pyslurm_recording.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "pyslurm" / "25.11"
KINDS = ("jobs", "nodes", "partitions")


def encode(value: Any) -> Any:
    """A pyslurm value as JSON: plain values as they are, pyslurm objects as {'__type__'}."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return {"__type__": type(value).__name__}


def encode_object(obj: Any) -> dict[str, Any]:
    out = {k: encode(v) for k, v in obj.to_dict().items()}
    if hasattr(obj, "get_resource_layout_per_node"):
        out["__layout__"] = encode(obj.get_resource_layout_per_node())
    return out


def shape(recorded: Mapping[str, Any]) -> dict[str, str]:
    """attribute -> type name of its value (None for unset, the class for pyslurm objects)."""
    out = {}
    for k, v in recorded.items():
        if k == "__layout__":
            continue
        if isinstance(v, Mapping) and "__type__" in v:
            out[k] = str(v["__type__"])
        else:
            out[k] = type(v).__name__
    return out


class Recorded:
    """A pyslurm object as recorded: the same attributes, nothing more (a missing one raises
    AttributeError, as on the real object)."""

    def __init__(self, attrs: Mapping[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in attrs.items() if k != "__layout__"})
        self._layout = attrs.get("__layout__", {})

    def get_resource_layout_per_node(self) -> Any:
        return self._layout


def raw(kind: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((DATA / f"{kind}.json").read_text())
    return data


def load(kind: str) -> list[Recorded]:
    return [Recorded(r) for r in raw(kind)]


def by(kind: str, key: str) -> dict[Any, Recorded]:
    return {getattr(r, key): r for r in load(kind)}


# ------------------------------------------------------------------ recording
def gpu_site(name: str, release: str) -> Any:
    """The small GPU site recordings and the backend contract use: 2 nodes x 8 CPUs, 4 H100."""
    from metasched.lab import SiteProfile

    return SiteProfile(
        name,
        nodes=2,
        cpus=8,
        sockets=1,
        cores_per_socket=8,
        mem_mb=16_000,
        gpu_type="h100",
        gpu_count=4,
        slurm=release,
    )


SCENARIO = {
    # job name -> sbatch options; what each stands for is in its name
    "gres-2x2-running": ["-N2", "--gres=gpu:h100:2", "--comment=metasched:0a1b2c3d:7:0"],
    "gpus-per-job-3": ["-N2", "--gpus=3"],
    "pending-too-big": ["-N2", "--gres=gpu:h100:4"],
    "exit-3": [],
    "cancelled-running": [],
}


def record() -> None:
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from metasched.lab import SlurmLab

    site = gpu_site("rec", "25.11")
    root = Path(tempfile.mkdtemp(prefix="msv-rec-", dir="/tmp"))
    with SlurmLab(root, [site]) as lab:
        env = lab.env("rec")

        def sbatch(name: str, body: str) -> str:
            argv = [lab.install("rec").command("sbatch"), "--parsable", "-J", name, "-t", "5"]
            argv += [*SCENARIO[name], "-o", "/dev/null", "--wrap", body]
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
            return done.stdout.strip()

        cancelled = sbatch("cancelled-running", "sleep 300")
        sbatch("exit-3", "exit 3")
        sbatch("gres-2x2-running", "sleep 300")
        sbatch("gpus-per-job-3", "sleep 300")
        sbatch("pending-too-big", "sleep 300")
        time.sleep(5)
        subprocess.run([lab.install("rec").command("scancel"), cancelled], env=env, check=True)
        time.sleep(3)
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]);"
            "import pyslurm, pyslurm_recording as r;"
            "print(json.dumps({"
            "'jobs': [r.encode_object(j) for j in pyslurm.Jobs.load().values()],"
            "'nodes': [r.encode_object(n) for n in pyslurm.Nodes.load().values()],"
            "'partitions': [r.encode_object(p) for p in pyslurm.Partitions.load().values()]}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).parent)],
            env={**env, "PYTHONPATH": str(Path(__file__).parent)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    DATA.mkdir(parents=True, exist_ok=True)
    for kind, objs in json.loads(out).items():
        (DATA / f"{kind}.json").write_text(json.dumps(objs, indent=1, sort_keys=True) + "\n")
        print(f"{DATA / kind}.json: {len(objs)} {kind}")


if __name__ == "__main__":
    record()
