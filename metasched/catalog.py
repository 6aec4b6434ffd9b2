"""Built-in catalog of accelerators and CPUs, with published peak rates per precision.

An agent uses it to derive which precisions (see `metasched.precision`) a Slurm partition offers
from its nodes' GRES GPU types (``Gres=gpu:a100:4`` -> ``{"a100": 4}``), when the site admin
has not declared them in the agent config.

Rates
    Peak TFLOPS per device, **dense (without structured sparsity)**; NVIDIA datasheets print the
    2:4-sparse figure with an asterisk, and we halve it. int8 is in TOPS, counted on the same
    scale. fp64 and fp32 are the *vector* (non-matrix) peak, because that is what general HPC
    codes (stencils, particles, sparse solvers) can reach; the matrix-engine fp64 rate (A100
    19.5, H100 67, MI250X 95.7) only helps DGEMM-shaped work and is recorded in ``notes``. tf32,
    bf16, fp16, fp8 and int8 are the matrix-engine (tensor core) peak, since code asking for
    those wants tensor-core rates.

What "offered" means
    A precision is offered only where the hardware runs it natively at a useful rate: the vendor
    publishes a native (not emulated) rate for it, and, for fp64, that rate is at least
    ``FP64_MIN_FRACTION_OF_FP32`` = 1/8 of the device's fp32 rate. Why 1/8: parts built for
    fp64 run it at 1/2 of fp32 (V100, A100, H100, CPUs) or 1/1 (MI250X); graphics/inference
    parts run it at 1/32 (T4) or 1/64 (L40S), i.e. 16-32x slower than their own fp32, which
    makes them a worse home for an fp64 code than a CPU node. 1/8 is the geometric midpoint of
    the two clusters (1/2 and 1/32), so neither side sits near the line. The raw sub-threshold
    rates are kept in ``notes`` but not in ``peak_tflops``.

Partition rule (`partition_precisions`)
    Per-node peak = sum over GPU types of (count x per-GPU rate), per offered precision. The
    host CPUs add their fp64/fp32 to precisions the accelerators already offer, but never
    *introduce* one on a GPU partition: an fp64 code placed on an L40S or Ascend node would run
    on the host cores while the accelerators the job is charged for sit idle. A partition
    without GPUs is a CPU partition and offers the CPU's fp64 and fp32. A declared table from
    the agent config wins wholesale.

Unknown GPU types (including untyped ``gpu:4``) contribute nothing; `partition_precisions`
reports them with an `UnknownGpuTypeWarning` (or raises `UnknownGpuType` with ``strict=True``),
and `unknown_gpu_types` lists them for the agent to log. The fix is to declare the partition's
precisions in the agent config (docs/precision.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from metasched import precision

FP64_MIN_FRACTION_OF_FP32 = 1 / 8

# Generic x86-64 core: flops per cycle per core (FMA = 2 flops), fp64. fp32 is twice this.
# AVX2 with two 256-bit FMA pipes: 4 lanes x 2 (FMA) x 2 pipes = 16 (Intel Haswell and later,
# AMD Zen 2-4; Zen 4's AVX-512 is double-pumped 256-bit, still 16).
AVX2_FP64_FLOPS_PER_CYCLE = 16
# AVX-512 with two 512-bit FMA pipes: 8 x 2 x 2 = 32 (Intel Xeon SP Gold/Platinum, Zen 5).
AVX512_FP64_FLOPS_PER_CYCLE = 32
DEFAULT_CPU_GHZ = 2.5


@dataclass(frozen=True)
class Accelerator:
    key: str
    vendor: str
    model: str
    peak_tflops: dict[str, float]  # offered precision -> dense peak per device (int8: TOPS)
    source: str
    notes: str = ""

    def offers(self, name: str) -> bool:
        return precision.normalize(name) in self.peak_tflops


def _offered(published: Mapping[str, float]) -> dict[str, float]:
    """Apply the "offered" rule to a device's published native rates; canonical order."""
    for name in published:
        if name not in precision.PRECISIONS:
            raise ValueError(f"catalog bug: {name!r} is not a precision")
    out = {p: float(published[p]) for p in precision.PRECISIONS if published.get(p, 0.0) > 0.0}
    fp32 = out.get("fp32", 0.0)
    if "fp64" in out and out["fp64"] < FP64_MIN_FRACTION_OF_FP32 * fp32:
        del out["fp64"]
    return out


def _entry(
    key: str, vendor: str, model: str, published: Mapping[str, float], source: str, notes: str = ""
) -> Accelerator:
    return Accelerator(key, vendor, model, _offered(published), source, notes)


_CATALOG: tuple[Accelerator, ...] = (
    _entry(
        "a100",
        "NVIDIA",
        "A100 SXM4 80GB",
        # Checked: all figures match the datasheet table (as reproduced online).
        {"fp64": 9.7, "fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312, "int8": 624},
        "NVIDIA A100 Tensor Core GPU datasheet (2020/2021), "
        "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
        "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
        "FP64 tensor core 19.5. No fp8. The datasheet prints the same peaks for the 40GB and "
        "PCIe parts, so those spellings resolve here too.",
    ),
    _entry(
        "h100",
        "NVIDIA",
        "H100 SXM5 80GB",
        # Checked: datasheet (sparse) figures halved; vector fp64 33.5 printed as 34.
        {
            "fp64": 34,
            "fp32": 67,
            "tf32": 494.5,
            "bf16": 989.5,
            "fp16": 989.5,
            "fp8": 1979,
            "int8": 1979,
        },
        "NVIDIA H100 Tensor Core GPU datasheet (2022/2023), H100 SXM column",
        "SXM only: 'h100' means SXM. H100 PCIe (fp64 26, fp32 51) and H100 NVL are different "
        "parts and are not aliased here. FP64 tensor core 67.",
    ),
    _entry(
        "v100",
        "NVIDIA",
        "V100 SXM2 (16/32GB)",
        # Checked: 7.8 / 15.7 (Cornell CVW derivation), 125 tensor (NVIDIA dev blog).
        {"fp64": 7.8, "fp32": 15.7, "fp16": 125},
        "NVIDIA Tesla V100 GPU Accelerator datasheet (2017/2018), V100 SXM2 (NVLink) column",
        "Tensor cores do fp16 only (125). No tf32/bf16/fp8. int8 (dp4a, ~62 TOPS) is not in the "
        "datasheet and is left out. V100 PCIe (7/14) and V100S are not aliased.",
    ),
    _entry(
        "l40s",
        "NVIDIA",
        "L40S 48GB",
        # Checked: datasheet reseller copies (91.6, 183, 362.05, 733 dense); fp64 1:64.
        {
            "fp64": 1.43,
            "fp32": 91.6,
            "tf32": 183,
            "bf16": 362.05,
            "fp16": 362.05,
            "fp8": 733,
            "int8": 733,
        },
        "NVIDIA L40S GPU for the Data Center datasheet (2023)",
        "fp64 is ~1.43 TFLOPS = 1/64 of fp32 (not in the datasheet; from AD102's 2 FP64 units "
        "per SM): below the 1/8 rule, so fp64 is NOT offered.",
    ),
    _entry(
        "t4",
        "NVIDIA",
        "T4 16GB",
        # Checked: 8.1 / 65 / 130 (launch coverage); fp64 1:32 (third-party spec database).
        {"fp64": 0.25, "fp32": 8.1, "fp16": 65, "int8": 130},
        "NVIDIA T4 Tensor Core GPU for AI Inference datasheet (2018/2019)",
        "fp64 is ~0.25 TFLOPS = 1/32 of fp32 (Turing; not in the datasheet): below the 1/8 "
        "rule, so fp64 is NOT offered. fp16 65 is the mixed-precision tensor figure. No "
        "tf32/bf16/fp8.",
    ),
    _entry(
        "mi250x",
        "AMD",
        "Instinct MI250X (OAM, 2 GCDs)",
        # Checked: fp64/fp32 47.9, fp16/bf16 383 (secondary sources). int8 383 not re-checked.
        {"fp64": 47.9, "fp32": 47.9, "bf16": 383, "fp16": 383, "int8": 383},
        "AMD Instinct MI250X accelerator datasheet / product page (2021)",
        "Per OAM module = 2 GCDs. If Slurm counts each GCD as one GPU (the usual ROCm view), "
        "halve these per GRES unit, or declare the partition. FP64/FP32 matrix 95.7; packed "
        "FP32 95.7. No tf32 or fp8 (CDNA2).",
    ),
    _entry(
        "mi250",
        "AMD",
        "Instinct MI250 (OAM, 2 GCDs)",
        {"fp64": 45.3, "fp32": 45.3, "bf16": 362.1, "fp16": 362.1, "int8": 362.1},
        "AMD Instinct MI250 accelerator datasheet / product page (2021)",
        "Separate entry: 208 CUs vs the MI250X's 220, so ~5% lower. UNCONFIRMED here: figures "
        "from the datasheet as recalled, not re-checked against it. Same per-GCD caveat as "
        "MI250X.",
    ),
    _entry(
        "ascend910b",
        "Huawei",
        "Ascend 910B",
        {"bf16": 320, "fp16": 320, "int8": 640},
        "Huawei publishes no per-precision datasheet for the 910B; figures from secondary "
        "sources (FP16 ~320 TFLOPS, INT8 ~640 TOPS), UNCONFIRMED",
        "No fp64 at all (Da Vinci cube units do fp16/bf16/int8; the vector unit does fp32). fp32 "
        "is left out because no peak figure could be confirmed (secondary sources range widely); "
        "a site that wants fp32 jobs here should declare it. bf16 assumed at the fp16 rate. "
        "Sub-models 910B1-B4 differ (~280-400 fp16); sites should declare exact rates.",
    ),
    _entry(
        "hygon-dcu-z100",
        "Hygon",
        "DCU Z100 (gfx906 class)",
        {"fp64": 10.1, "fp32": 20.2, "fp16": 40.4},
        "No Hygon datasheet found; UNCONFIRMED estimates from gfx906-class ratios",
        "The catalog's DCU entry is the Z100 class (gfx906, Vega20-derived: fp64 at 1/2 of fp32, "
        "packed fp16 at 2x, no matrix units, so no bf16/tf32/int8 rates). The rates are "
        "unverified estimates. 'dcu' and 'k100' resolve here as a conservative floor: the K100 "
        "(gfx926) is a later, faster part whose figures could not be confirmed either; the "
        "K100_AI (gfx928) is not aliased. Sites should declare real rates.",
    ),
)

ACCELERATORS: dict[str, Accelerator] = {a.key: a for a in _CATALOG}

# Per core, at DEFAULT_CPU_GHZ, AVX2 (see cpu_peak_tflops); shown in docs/precision.md.
CPU_X86_64 = Accelerator(
    key="cpu-x86-64",
    vendor="generic",
    model=f"x86-64 core, AVX2 2xFMA, {DEFAULT_CPU_GHZ} GHz",
    peak_tflops={
        "fp64": AVX2_FP64_FLOPS_PER_CYCLE * DEFAULT_CPU_GHZ / 1000,
        "fp32": 2 * AVX2_FP64_FLOPS_PER_CYCLE * DEFAULT_CPU_GHZ / 1000,
    },
    source="Intel 64 and IA-32 Optimization Reference Manual / AMD Zen software optimization "
    "guides: 2 FMA pipes x 256-bit; peak = cores x GHz x flops/cycle",
    notes="Per core. Node rate = cpu_peak_tflops(cores, ghz). AVX-512 2xFMA parts reach 2x.",
)

# Slurm GRES type spellings -> catalog key. Lookup lowercases, maps '_' and ' ' to '-', and
# also tries with a leading vendor word removed ('nvidia_a100' -> 'a100'), so NVML/RSMI
# autodetected names like 'nvidia_a100-sxm4-80gb' or 'tesla_v100-sxm2-32gb' resolve.
_ALIASES: dict[str, str] = {
    **dict.fromkeys(
        (
            "a100",
            "a100-sxm",
            "a100-sxm4",
            "a100-80gb",
            "a100-sxm4-80gb",
            "a100-40gb",
            "a100-sxm4-40gb",
            "a100-pcie",
            "a100-pcie-40gb",
            "a100-pcie-80gb",
        ),
        "a100",
    ),
    **dict.fromkeys(
        ("h100", "h100-sxm", "h100-sxm5", "h100-sxm5-80gb", "h100-80gb", "h100-80gb-hbm3"),
        "h100",
    ),
    **dict.fromkeys(
        ("v100", "v100-sxm2", "v100-sxm2-16gb", "v100-sxm2-32gb", "v100-16gb", "v100-32gb"),
        "v100",
    ),
    "l40s": "l40s",
    "t4": "t4",
    "mi250x": "mi250x",
    "mi250": "mi250",
    **dict.fromkeys(("ascend910b", "ascend-910b", "910b"), "ascend910b"),
    **dict.fromkeys(("dcu", "z100", "z100l", "dcu-z100", "k100", "dcu-k100"), "hygon-dcu-z100"),
}
_VENDOR_PREFIXES = ("nvidia-", "tesla-", "amd-", "instinct-", "huawei-", "hygon-")


def _norm(gres_type: str) -> str:
    return gres_type.strip().lower().replace("_", "-").replace(" ", "-")


def lookup(gres_type: str) -> Accelerator | None:
    """Catalog entry for a Slurm GRES GPU type ('A100', 'nvidia_a100-sxm4-80gb', '910b') or None."""
    name = _norm(gres_type)
    for _ in range(3):  # at most 'amd-instinct-mi250x' deep
        key = _ALIASES.get(name) or (name if name in ACCELERATORS else None)
        if key is not None:
            return ACCELERATORS[key]
        stripped = next((name[len(p) :] for p in _VENDOR_PREFIXES if name.startswith(p)), None)
        if not stripped:
            return None
        name = stripped
    return None


def cpu_peak_tflops(
    cores: int,
    ghz: float = DEFAULT_CPU_GHZ,
    *,
    fp64_flops_per_cycle: int = AVX2_FP64_FLOPS_PER_CYCLE,
) -> dict[str, float]:
    """Peak fp64/fp32 TFLOPS of a CPU node: cores x GHz x flops/cycle / 1000.

    Assumption: x86-64 cores with two 256-bit FMA pipes (AVX2, 16 fp64 flops/cycle, fp32 twice
    that) at a sustained all-core 2.5 GHz: a deliberate floor, since CPU nodes vary and AVX-512
    parts drop their clock under heavy vector load. Pass
    ``fp64_flops_per_cycle=AVX512_FP64_FLOPS_PER_CYCLE`` for two 512-bit FMA pipes. ``cores`` are
    physical cores: if Slurm's CPU count includes hyperthreads, divide by ThreadsPerCore first.
    """
    if cores < 0:
        raise ValueError(f"cores must be >= 0, got {cores}")
    if not (math.isfinite(ghz) and ghz > 0):
        raise ValueError(f"ghz must be > 0, got {ghz}")
    if fp64_flops_per_cycle <= 0:
        raise ValueError(f"fp64_flops_per_cycle must be > 0, got {fp64_flops_per_cycle}")
    fp64 = cores * ghz * fp64_flops_per_cycle / 1000.0
    return {"fp64": round(fp64, 6), "fp32": round(2 * fp64, 6)}


class UnknownGpuType(ValueError):
    """GPU types not in the catalog (raised by partition_precisions(strict=True))."""

    def __init__(self, types: Iterable[str]) -> None:
        self.types = list(types)
        shown = ", ".join(repr(t) for t in self.types)
        super().__init__(
            f"GPU type(s) not in the catalog: {shown}; they contribute no precisions. "
            "Declare the partition's precisions in the agent config (docs/precision.md)."
        )


class UnknownGpuTypeWarning(UserWarning):
    pass


def unknown_gpu_types(gpus_per_node: Mapping[str, int]) -> list[str]:
    """GRES types with a nonzero count that `lookup` cannot resolve ('' = untyped gpu:N)."""
    return sorted(t for t, n in gpus_per_node.items() if n > 0 and lookup(t) is None)


def _declared(declared: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, rate in declared.items():
        key = precision.normalize(name)  # raises UnknownPrecision
        if not key:
            raise precision.UnknownPrecision("empty precision name in declared precisions")
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise ValueError(f"declared {name} must be a number (TFLOPS), got {rate!r}")
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"declared {name} must be > 0 TFLOPS, got {rate!r}")
        if key in out:
            raise ValueError(f"precision {key} declared twice (as {name!r})")
        out[key] = float(rate)
    return {p: out[p] for p in precision.PRECISIONS if p in out}


def partition_precisions(
    gpus_per_node: dict[str, int],
    cpus_per_node: int,
    declared: dict[str, float] | None = None,
    *,
    strict: bool = False,
) -> dict[str, float]:
    """Per-node peak TFLOPS per offered precision, in `precision.PRECISIONS` order.

    - ``declared`` (the partition's ``precisions`` table in the agent config) wins wholesale when
      not None: GPU types and CPUs are then ignored. Keys are normalized ('double' -> 'fp64');
      unknown names raise `precision.UnknownPrecision`, non-positive rates ValueError. An empty
      table means "offers nothing".
    - Otherwise each known GPU type adds count x its per-GPU rates. The host CPUs
      (`cpu_peak_tflops(cpus_per_node)`) add to fp64/fp32 only where the GPUs already offer
      them; a partition with no GPUs offers the CPU's fp64 and fp32.
    - GPU types not in the catalog (and untyped '') contribute nothing; they are reported with
      `UnknownGpuTypeWarning`, or raise `UnknownGpuType` when ``strict``. A partition whose GPUs
      are all unknown still counts as a GPU partition, so it offers nothing until declared.
    """
    if declared is not None:
        return _declared(declared)
    for gres_type, count in gpus_per_node.items():
        if count < 0:
            raise ValueError(f"negative GPU count for {gres_type!r}: {count}")
    unknown = unknown_gpu_types(gpus_per_node)
    if unknown:
        if strict:
            raise UnknownGpuType(unknown)
        warnings.warn(str(UnknownGpuType(unknown)), UnknownGpuTypeWarning, stacklevel=2)

    cpu = cpu_peak_tflops(cpus_per_node) if cpus_per_node > 0 else {}
    has_gpus = any(n > 0 for n in gpus_per_node.values())
    if not has_gpus:
        return dict(cpu)

    total: dict[str, float] = {}
    for gres_type, count in gpus_per_node.items():
        acc = lookup(gres_type) if count > 0 else None
        if acc is None:
            continue
        for name, rate in acc.peak_tflops.items():
            total[name] = total.get(name, 0.0) + count * rate
    for name, rate in cpu.items():
        if name in total:
            total[name] += rate
    return {p: round(total[p], 6) for p in precision.PRECISIONS if p in total}
