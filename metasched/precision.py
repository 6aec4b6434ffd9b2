"""Numeric precisions and what it means for a partition to offer one.

A job names the one precision its code needs (e.g. fp64 for a climate model, bf16 for a
transformer). A partition offers a set. Matching is exact membership: fp64 hardware can of
course emulate fp16, but an AI centre that only lists fp16/bf16/int8 cannot run fp64 code
at any useful speed, and a user asking for bf16 wants tensor-core rates, not fp64 units.
"""

from __future__ import annotations

# Widest first: the order users read them in `msub sites`.
PRECISIONS: tuple[str, ...] = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")

_ALIASES = {
    "double": "fp64",
    "float64": "fp64",
    "single": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "half": "fp16",
    "float16": "fp16",
    "bfloat16": "bf16",
    "fp8e4m3": "fp8",
    "fp8e5m2": "fp8",
}


class UnknownPrecision(ValueError):
    pass


def normalize(name: str) -> str:
    """'FP64', 'double' -> 'fp64'; '' stays ''; anything else raises UnknownPrecision."""
    key = name.strip().lower()
    if not key:
        return ""
    key = _ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise UnknownPrecision(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    return key
