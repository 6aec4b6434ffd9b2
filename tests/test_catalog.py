from __future__ import annotations

import warnings

import pytest

from metasched import catalog, precision
from metasched.catalog import (
    ACCELERATORS,
    FP64_MIN_FRACTION_OF_FP32,
    UnknownGpuType,
    UnknownGpuTypeWarning,
    cpu_peak_tflops,
    lookup,
    partition_precisions,
)


def _entry(gres: str) -> catalog.Accelerator:
    acc = lookup(gres)
    assert acc is not None, gres
    return acc


# --- the catalog itself ------------------------------------------------------------------


def test_every_entry_follows_the_offered_rule() -> None:
    for acc in ACCELERATORS.values():
        assert acc.peak_tflops, acc.key
        assert acc.source, acc.key
        assert set(acc.peak_tflops) <= set(precision.PRECISIONS), acc.key
        assert all(rate > 0 for rate in acc.peak_tflops.values()), acc.key
        if "fp64" in acc.peak_tflops:
            assert acc.peak_tflops["fp64"] >= FP64_MIN_FRACTION_OF_FP32 * acc.peak_tflops["fp32"]
        # canonical order, so tables and `msub sites` read widest first
        order = [p for p in precision.PRECISIONS if p in acc.peak_tflops]
        assert list(acc.peak_tflops) == order, acc.key


def test_a100_offers_fp64_tf32_bf16() -> None:
    a100 = _entry("a100")
    assert {"fp64", "tf32", "bf16"} <= set(a100.peak_tflops)
    assert a100.peak_tflops["fp64"] == 9.7
    assert a100.peak_tflops["bf16"] == 312  # dense, not the 624 sparse figure
    assert "fp8" not in a100.peak_tflops


@pytest.mark.parametrize("gres", ["l40s", "t4", "ascend910b"])
def test_no_useful_fp64(gres: str) -> None:
    assert "fp64" not in _entry(gres).peak_tflops
    assert not _entry(gres).offers("double")


def test_sub_threshold_fp64_is_dropped_not_lost() -> None:
    assert "1/64" in _entry("l40s").notes
    assert "1/32" in _entry("t4").notes


def test_offered_rule_threshold() -> None:
    assert "fp64" in catalog._offered({"fp64": 1.0, "fp32": 8.0})
    assert "fp64" not in catalog._offered({"fp64": 1.0, "fp32": 8.1})
    with pytest.raises(ValueError):
        catalog._offered({"fp128": 1.0})


# --- aliases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gres", "key"),
    [
        ("a100", "a100"),
        ("A100", "a100"),
        ("a100-sxm4-80gb", "a100"),
        ("a100_80gb", "a100"),
        ("nvidia_a100", "a100"),
        ("nvidia_a100-sxm4-80gb", "a100"),
        (" A100-SXM4-80GB ", "a100"),
        ("h100", "h100"),
        ("h100-sxm", "h100"),
        ("nvidia_h100_80gb_hbm3", "h100"),
        ("v100", "v100"),
        ("tesla_v100-sxm2-32gb", "v100"),
        ("l40s", "l40s"),
        ("NVIDIA_L40S", "l40s"),
        ("t4", "t4"),
        ("tesla_t4", "t4"),
        ("mi250x", "mi250x"),
        ("amd_instinct_mi250x", "mi250x"),
        ("MI250", "mi250"),
        ("ascend910b", "ascend910b"),
        ("910b", "ascend910b"),
        ("ascend-910b", "ascend910b"),
        ("Ascend_910B", "ascend910b"),
        ("huawei_ascend910b", "ascend910b"),
        ("dcu", "hygon-dcu-z100"),
        ("z100", "hygon-dcu-z100"),
        ("k100", "hygon-dcu-z100"),
        ("hygon_dcu", "hygon-dcu-z100"),
    ],
)
def test_aliases_resolve(gres: str, key: str) -> None:
    assert _entry(gres).key == key


@pytest.mark.parametrize(
    "gres", ["", "gpu", "h100-pcie", "h100-nvl", "v100-pcie", "a100-3g.40gb", "nvidia", "rtx4090"]
)
def test_other_parts_do_not_resolve(gres: str) -> None:
    assert lookup(gres) is None


# --- CPU -----------------------------------------------------------------------------------


def test_cpu_rate_scales_with_cores() -> None:
    # 64 cores x 2.5 GHz x 16 fp64 flops/cycle = 2.56 TFLOPS
    assert cpu_peak_tflops(64) == {"fp64": 2.56, "fp32": 5.12}
    assert cpu_peak_tflops(128)["fp64"] == pytest.approx(2 * cpu_peak_tflops(64)["fp64"])
    assert cpu_peak_tflops(64, 2.0)["fp64"] == pytest.approx(2.048)
    avx512 = cpu_peak_tflops(64, fp64_flops_per_cycle=catalog.AVX512_FP64_FLOPS_PER_CYCLE)
    assert avx512["fp64"] == pytest.approx(5.12)
    assert cpu_peak_tflops(1) == catalog.CPU_X86_64.peak_tflops
    with pytest.raises(ValueError):
        cpu_peak_tflops(-1)
    with pytest.raises(ValueError):
        cpu_peak_tflops(8, 0.0)


# --- partitions ----------------------------------------------------------------------------


def test_cpu_only_partition_offers_fp64_and_fp32_only() -> None:
    offered = partition_precisions({}, cpus_per_node=64)
    assert offered == {"fp64": 2.56, "fp32": 5.12}
    assert partition_precisions({"a100": 0}, 64) == offered  # zero count = no GPUs


def test_fp64_job_not_offered_by_ascend_only_partition() -> None:
    offered = partition_precisions({"ascend910b": 8}, cpus_per_node=192)
    assert "fp64" not in offered
    assert "fp32" not in offered  # host CPUs don't introduce precisions on a GPU partition
    assert offered["fp16"] == pytest.approx(8 * 320)
    assert offered["int8"] == pytest.approx(8 * 640)


def test_fp64_job_not_offered_by_l40s_only_partition() -> None:
    offered = partition_precisions({"l40s": 4}, cpus_per_node=64)
    assert "fp64" not in offered
    # fp32 is offered by the GPUs, so the host CPUs add to it
    assert offered["fp32"] == pytest.approx(4 * 91.6 + 5.12)


def test_a100_partition() -> None:
    offered = partition_precisions({"a100": 4}, cpus_per_node=64)
    assert {"fp64", "tf32", "bf16"} <= set(offered)
    assert offered["fp64"] == pytest.approx(4 * 9.7 + 2.56)
    assert offered["bf16"] == pytest.approx(4 * 312)
    assert list(offered) == [p for p in precision.PRECISIONS if p in offered]


def test_mixed_gpu_types_sum_per_precision() -> None:
    offered = partition_precisions({"a100": 2, "t4": 1}, cpus_per_node=0)
    assert offered["fp64"] == pytest.approx(2 * 9.7)  # T4 adds no fp64
    assert offered["int8"] == pytest.approx(2 * 624 + 130)


def test_declared_overrides_wholesale() -> None:
    declared = {"FP64": 9.7, "single": 19.5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unknown types are not even looked at
        offered = partition_precisions({"a100": 4, "mystery": 2}, 64, declared=declared)
    assert offered == {"fp64": 9.7, "fp32": 19.5}
    # an admin may declare fp64 on an Ascend partition, e.g. for its host CPUs
    assert partition_precisions({"910b": 8}, 192, {"fp64": 3.0}) == {"fp64": 3.0}
    assert partition_precisions({"a100": 4}, 64, declared={}) == {}


@pytest.mark.parametrize(
    "bad",
    [{"fp128": 1.0}, {"fp64": 0.0}, {"fp64": -1.0}, {"fp64": float("nan")}, {"": 1.0}],
)
def test_declared_is_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # UnknownPrecision is a ValueError
        partition_precisions({}, 64, declared=bad)


def test_declared_duplicate_after_normalizing() -> None:
    with pytest.raises(ValueError, match="twice"):
        partition_precisions({}, 64, declared={"fp64": 1.0, "double": 2.0})


def test_unknown_gpu_type_warns_and_contributes_nothing() -> None:
    with pytest.warns(UnknownGpuTypeWarning, match="rtx4090"):
        offered = partition_precisions({"a100": 4, "rtx4090": 8}, 64)
    assert offered == partition_precisions({"a100": 4}, 64)
    with pytest.warns(UnknownGpuTypeWarning):
        assert partition_precisions({"rtx4090": 8}, 64) == {}  # still a GPU partition
    with pytest.warns(UnknownGpuTypeWarning, match="''"):
        partition_precisions({"": 4}, 64)  # untyped Gres=gpu:4
    assert catalog.unknown_gpu_types({"a100": 4, "rtx4090": 8, "x": 0, "": 1}) == ["", "rtx4090"]


def test_unknown_gpu_type_strict_raises() -> None:
    with pytest.raises(UnknownGpuType) as err:
        partition_precisions({"rtx4090": 8}, 64, strict=True)
    assert err.value.types == ["rtx4090"]


def test_negative_gpu_count_rejected() -> None:
    with pytest.raises(ValueError):
        partition_precisions({"a100": -1}, 64)
