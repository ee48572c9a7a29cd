"""Inference precision: ``fp32`` or ``bf16`` autocast for image -> triplane (encoder, transformer, upsampler).

The decoder and the renderer stay in fp32 (the triplane is cast back to fp32; the renderer composites in fp32
whatever its field returns). Tolerances and measurements: docs/inference.md, tests/test_precision.py.
"""
from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16")


def autocast_for(precision: str, device: torch.device):
    """The autocast context of a ``precision`` option (a no-op for fp32); ValueError for an unknown one."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
