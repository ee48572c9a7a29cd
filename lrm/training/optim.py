"""AdamW with decoupled weight decay on matrices only, and a linear-warm-up cosine schedule."""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn as nn

_WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d)


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Decay only the weight matrices of Linear/Conv layers. Biases, norm scales, LayerScale gammas and
    embeddings (learned tokens, position tables, CLS/register tokens, nn.Embedding) get no decay."""
    decay, no_decay = [], []
    seen = set()
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(mod, _WEIGHT_MODULES) and name == "weight" and p.ndim >= 2:
                decay.append(p)
            else:
                no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, tcfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, float(tcfg.weight_decay)), lr=float(tcfg.lr),
                             betas=tuple(float(b) for b in tcfg.betas), eps=float(tcfg.eps))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warm-up then cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer, tcfg):
    warmup, total, mr = int(tcfg.warmup_steps), int(tcfg.max_steps), float(tcfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, mr))
