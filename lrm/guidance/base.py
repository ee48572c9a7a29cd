"""Guidance: something that looks at rendered views and says how to change them (a dict of named loss terms).

    guidance = make_guidance("sds", prior, SDSConfig(guidance_scale=3.0))
    ref = Reference(image, c2w)                  # the input view [1, 3, H, W] in [0, 1] and its c2w [1, 4, 4]
    losses = guidance(renders, cameras, ref, step=i)   # renders [N, 3, H, W] in [0, 1], cameras [N, 4, 4]
    total = sum(weights[k] * v for k, v in losses.items())
    guidance.info      # diagnostics of the last call (floats), guidance.skipped: calls whose term was skipped

Guidances are registered by name in a plain dict (:func:`register_guidance`); :func:`make_guidance` builds one.
A guidance never owns the renderer or the optimiser; the refinement loop (lrm/refine/) calls it once per step.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Callable, Dict, Optional, Type

import torch
from torch import Tensor


@dataclass
class Reference:
    """The input condition: the input view as the prior is conditioned on it, and its camera."""

    image: Tensor  # [1, 3, H, W] RGB in [0, 1] (composited on the background the prior expects: white)
    c2w: Tensor  # [1, 4, 4] camera-to-world of the input view (canonical: azimuth 0, elevation 0)


class Guidance:
    """Base class. Subclasses set ``config_class`` (a dataclass) and implement :meth:`losses`."""

    name: str = ""
    config_class: Optional[type] = None

    def __init__(self, prior, cfg=None):
        self.prior = prior
        self.cfg = coerce_config(self.config_class, cfg) if self.config_class is not None else cfg
        self.info: Dict[str, float] = {}
        self.skipped = 0  # calls whose loss term was non-finite and replaced by zero
        self.calls = 0
        self._cond_key = None
        self._cond = None

    def condition(self, ref: Reference):
        """``prior.condition(ref.image)``, computed once per reference image (cached on tensor identity)."""
        if self._cond_key is not ref.image:
            with torch.no_grad():
                self._cond = self.prior.condition(ref.image)
            self._cond_key = ref.image
        return self._cond

    def __call__(self, rgb: Tensor, c2w: Tensor, ref: Reference, step: int = 0, **kw) -> Dict[str, Tensor]:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"guidance expects renders [N, 3, H, W], got {tuple(rgb.shape)}")
        if c2w.shape != (rgb.shape[0], 4, 4):
            raise ValueError(f"guidance expects cameras [N, 4, 4] for {rgb.shape[0]} renders, got {tuple(c2w.shape)}")
        self.calls += 1
        return self.losses(rgb, c2w, ref, step, **kw)

    def losses(self, rgb: Tensor, c2w: Tensor, ref: Reference, step: int, **kw) -> Dict[str, Tensor]:
        raise NotImplementedError


def coerce_config(cls, cfg):
    """``cfg`` as an instance of the dataclass ``cls``: None -> defaults, a dict -> fields (unknown keys fail)."""
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    if is_dataclass(cfg):
        cfg = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    if not isinstance(cfg, dict):
        raise TypeError(f"{cls.__name__}: expected a dict or {cls.__name__}, got {type(cfg).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**cfg)


GUIDANCES: Dict[str, Type[Guidance]] = {}


def register_guidance(name: str) -> Callable[[Type[Guidance]], Type[Guidance]]:
    """Class decorator: ``make_guidance(name, ...)`` builds this class."""

    def deco(cls):
        if name in GUIDANCES and GUIDANCES[name] is not cls:
            raise ValueError(f"guidance {name!r} is already registered ({GUIDANCES[name].__name__})")
        cls.name = name
        GUIDANCES[name] = cls
        return cls

    return deco


def make_guidance(name: str, prior, cfg=None) -> Guidance:
    if name not in GUIDANCES:
        raise ValueError(f"unknown guidance {name!r}; available: {', '.join(sorted(GUIDANCES)) or 'none'}")
    return GUIDANCES[name](prior, cfg)
