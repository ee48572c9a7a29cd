"""Inference precision: ``fp32`` or ``bf16`` autocast for image -> triplane (encoder, transformer, upsampler).

The decoder and the renderer stay in fp32 (the triplane is cast back to fp32; the renderer composites in fp32
whatever its field returns). Tolerances and measurements: docs/inference.md, tests/test_precision.py.
"""
from __future__ import annotations

import functools
import logging

import torch

PRECISIONS = ("fp32", "bf16")
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or AMX, from /proc/cpuinfo). Without it torch emulates
    bf16 matmuls, which on an AVX2-only CPU measured ~16x slower than fp32 (docs/inference.md)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


_WARNED = set()


def warn_if_emulated_bf16(device, what: str) -> bool:
    """Log a warning (once per ``what``) when bf16 is asked for on a CPU without native bf16; returns whether bf16
    is emulated here."""
    if torch.device(device).type != "cpu" or cpu_native_bf16():
        return False
    if what in _WARNED:
        return True
    _WARNED.add(what)
    log.warning("%s: bf16 was asked for, but this CPU has no native bf16 (avx512_bf16 / AMX): torch emulates it, "
                "several times slower than fp32 here; use fp32", what)
    return True


def autocast_for(precision: str, device: torch.device):
    """The autocast context of a ``precision`` option (a no-op for fp32); ValueError for an unknown one."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "bf16":
        warn_if_emulated_bf16(device, "precision")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
