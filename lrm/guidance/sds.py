"""Score distillation sampling (DreamFusion, Poole et al. 2022) with a view-conditioned prior (lrm/diffusion/prior.py).

For renders ``x`` of the object at cameras ``c2w``:

    x0 = prior.encode(x)                        # differentiable (pixel prior: resize + scale to [-1, 1])
    t ~ U{t_min .. t_max}                       # per view; [t_min, t_max] annealed linearly over the steps
    x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε,  ε ~ N(0, I)
    ε̂ = cfg_combine(ε̂(x_t; ∅), ε̂(x_t; input image, relative camera), δ)        # no autograd through the prior
    g = w(t) (ε̂ − ε)                            # w = snr_weight(kind): 1 − ᾱ_t ("sds") or 1 ("uniform")

and the returned term is ``sds = 0.5 · Σ ||x0 − sg(x0 − g)||² / N``: its gradient with respect to view i's ``x0``
is exactly ``g_i / N`` (the batch mean of the per-view SDS gradients; N = number of views), so the U-Net
Jacobian never enters and the gradient reaches the scene parameters only through ``∂x0/∂θ``. The loss *value*
is ``0.5 Σ ||g||² / N`` (a magnitude diagnostic, not something that decreases).

Multi-view SDS: with a prior that denoises views jointly (``prior.joint_views``, cross-view attention; e.g. one
trained with ``--config zero123-mv-tiny``) the N renders of one call are treated as N views of the object,
denoised together (``predict_noise(..., num_views=N)``) at one shared timestep, as that prior was trained.

A non-finite ``g`` (a render or prior gone bad) skips the term for that call: it returns a constant zero (no
gradient), increments ``skipped``, and ``info["skipped"]`` says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..diffusion.prior import guided_noise, is_joint, relative_camera, snr_weight
from .base import Guidance, Reference, register_guidance


@dataclass
class SDSConfig:
    guidance_scale: float = 3.0  # δ of classifier-free guidance (1 = the conditional prediction, one prior call)
    t_range_start: Tuple[float, float] = (0.02, 0.98)  # [t_min, t_max] as fractions of num_train_timesteps, step 0
    t_range_end: Tuple[float, float] = (0.02, 0.50)  # ... reached after anneal_steps (then kept)
    anneal_steps: int = 0  # 0: t_range_start throughout
    weighting: str = "sds"  # w(t): sds (1 − ᾱ_t) | uniform
    grad_clip: Optional[float] = None  # clamp each element of g to [−c, c] (None: off)

    def __post_init__(self):
        for name in ("t_range_start", "t_range_end"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"sds.{name} must satisfy 0 <= min <= max <= 1, got {getattr(self, name)}")
            setattr(self, name, (lo, hi))
        if self.anneal_steps < 0:
            raise ValueError(f"sds.anneal_steps must be >= 0, got {self.anneal_steps}")
        if self.weighting not in ("sds", "uniform"):
            raise ValueError(f"sds.weighting must be sds or uniform, got {self.weighting!r}")


def t_range(cfg: SDSConfig, step: int) -> Tuple[float, float]:
    """[t_min, t_max] (fractions) at ``step``: linear from t_range_start to t_range_end over anneal_steps."""
    f = min(max(step, 0) / cfg.anneal_steps, 1.0) if cfg.anneal_steps > 0 else 0.0
    (a0, b0), (a1, b1) = cfg.t_range_start, cfg.t_range_end
    return a0 + f * (a1 - a0), b0 + f * (b1 - b0)


def sample_timesteps(n: int, lo: float, hi: float, num_train_timesteps: int, device=None,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` integer timesteps uniform on [round(lo T), round(hi T)] ∩ [0, T − 1]."""
    last = num_train_timesteps - 1
    t0 = min(max(int(round(lo * num_train_timesteps)), 0), last)
    t1 = min(max(int(round(hi * num_train_timesteps)), t0), last)
    return torch.randint(t0, t1 + 1, (n,), generator=generator, device="cpu").to(device)


def predict_cfg(prior, x_t: Tensor, t: Tensor, cond, rel: Tensor, scale: float,
                num_views: int = 1) -> Tuple[Tensor, int]:
    """Guided ε̂ and the number of prior passes made (lrm/diffusion/prior.py ``guided_noise``: δ = 1 needs only the
    conditional branch; otherwise one batched pass when the prior offers it, else two calls). ``num_views`` > 1:
    views denoised together (a joint prior)."""
    return guided_noise(prior, x_t, t, cond, rel, scale, num_views)


def sds_loss(x0: Tensor, grad: Tensor) -> Tensor:
    """``0.5 Σ ||x0 − sg(x0 − grad)||² / N``: d loss / d x0 = grad / N."""
    target = (x0 - grad).detach()
    return 0.5 * (x0 - target).pow(2).sum() / x0.shape[0]


@register_guidance("sds")
class SDSGuidance(Guidance):
    config_class = SDSConfig

    def __init__(self, prior, cfg=None, generator: Optional[torch.Generator] = None):
        super().__init__(prior, cfg)
        self.generator = generator
        self.prior_calls = 0

    def losses(self, rgb: Tensor, c2w: Tensor, ref: Reference, step: int = 0, t: Optional[Tensor] = None,
               noise: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``t`` [N] and ``noise`` (shaped like x0) may be given (tests); otherwise drawn (one shared t for a joint
        prior, which denoises the N views together)."""
        cfg, prior = self.cfg, self.prior
        n = rgb.shape[0]
        views = n if is_joint(prior) else 1
        x0 = prior.encode(rgb)
        lo, hi = t_range(cfg, step)
        if t is None:
            t = sample_timesteps(n // views, lo, hi, prior.num_train_timesteps, x0.device, self.generator)
            t = t.repeat_interleave(views)
        t = t.to(x0.device).long()
        if noise is None:
            noise = torch.randn(x0.shape, generator=self.generator, dtype=x0.dtype, device="cpu").to(x0.device)
        abar = prior.alphas_cumprod.to(x0.device, x0.dtype)
        cond = self.condition(ref)
        rel = relative_camera(ref.c2w.to(c2w).expand(n, 4, 4), c2w)
        with torch.no_grad():
            a = abar[t].view(n, *([1] * (x0.dim() - 1)))
            x_t = a.sqrt() * x0.detach() + (1 - a).sqrt() * noise
            eps_hat, calls = predict_cfg(prior, x_t, t, cond, rel, cfg.guidance_scale, views)
            w = snr_weight(abar, t, cfg.weighting).view_as(a)
            grad = w * (eps_hat - noise)
            if cfg.grad_clip is not None:
                grad = grad.clamp(-cfg.grad_clip, cfg.grad_clip)
            finite = bool(torch.isfinite(grad).all())
        self.prior_calls += calls
        self.info = {"t_mean": float(t.float().mean()), "t_min": lo, "t_max": hi, "prior_calls": calls,
                     "skipped": 0.0, "grad_norm": float(grad.flatten(1).norm(dim=1).mean()) if finite else float("nan")}
        if not finite:
            self.skipped += 1
            self.info["skipped"] = 1.0
            return {"sds": x0.new_zeros(())}
        return {"sds": sds_loss(x0, grad)}
