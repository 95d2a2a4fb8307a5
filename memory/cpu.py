"""What the processor can do natively, so the encoder picks a fast number format safely.

bfloat16 weights halve the memory the model reads per query (a one-query forward pass is
bound by reading the weights), but only CPUs with bf16 instructions run them fast; elsewhere
the emulation is slower than float32. int8 speed depends on the instruction set (VNNI or not).
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of the first processor (empty where /proc/cpuinfo is not there)."""
    try:
        text = CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_native_bfloat16(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def int8_instruction_set(flags: frozenset[str] | None = None) -> str:
    """The best int8 instruction set this CPU has, named beside benchmark figures: the int8 ONNX
    graph (one file for every CPU, memory/onnx_export.py) runs at a speed that depends on it."""
    flags = cpu_flags() if flags is None else flags
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "asimd" in flags:  # arm64
        return "arm64"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"
