"""The interface every view-conditioned diffusion prior offers to guidance (SDS) and sampling.

A prior denoises a *target* view given a *condition*: the input image plus the relative camera from the input view
to the target (Zero-1-to-3's conditioning). Two implementations share it:
- the project's own pixel-space model trained with ``train.py --config zero123-tiny`` (lrm/diffusion/model.py), and
- the public Zero-1-to-3 / zero123-xl weights in diffusers layout, loaded from a local folder
  (lrm/diffusion/zero123.py).

Guidance (lrm/guidance/) and sampling (lrm/diffusion/sample.py) use only what is written here.

Conventions
- Images handed in are ``[N, 3, H, W]`` RGB in [0, 1] on a white background (as infer.py composites its input).
- ``encode`` maps such images to the prior's sample space ``x0`` (pixel space: resized to ``resolution`` and scaled
  to [-1, 1]; latent space: the VAE's scaled latents); ``decode`` is its inverse back to [0, 1] RGB.
- Timesteps are integers in [0, num_train_timesteps); ``alphas_cumprod[t]`` is ᾱ_t of the DDPM forward process
  ``x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε``.
- ``predict_noise`` returns ε̂ (priors trained for v-prediction convert before returning).
- ``cond=None`` (or ``drop`` set) is the unconditional branch for classifier-free guidance.
- Jointly denoised views (optional): a prior whose ``joint_views`` attribute is True also takes
  ``predict_noise(..., num_views=V)``: the N rows are N / V objects of V consecutive views (each with its own
  relative camera), which the prior denoises together. Callers go through :func:`predict_noise_views`, which
  passes ``num_views`` only when it is not 1, so priors without the option keep the four-argument call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import Tensor


@dataclass
class Condition:
    """What a prior is conditioned on, precomputed once per input image (embeddings, concat latents...)."""

    image: Tensor  # [B, 3, H, W] in [0, 1], the input view
    extras: dict  # prior-specific precomputed tensors (e.g. CLIP embedding, VAE latent of the input)


@runtime_checkable
class ViewPrior(Protocol):
    resolution: int  # side of the images the prior sees (renders are resized to it)
    num_train_timesteps: int
    alphas_cumprod: Tensor  # [num_train_timesteps], float32, on the prior's device

    def condition(self, image: Tensor) -> Condition: ...

    def encode(self, rgb: Tensor) -> Tensor: ...

    def decode(self, x0: Tensor) -> Tensor: ...

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Optional[Condition], rel_camera: Tensor) -> Tensor:
        """ε̂ for ``x_t`` [N, C, h, w] at integer timesteps ``t`` [N]; ``rel_camera`` [N, 4] (see
        ``relative_camera``); ``cond`` is expanded to N when it holds one image. ``cond=None``: unconditional."""
        ...


def is_joint(prior) -> bool:
    """Whether ``prior`` denoises the views of one object together (``predict_noise(..., num_views=V)``)."""
    return bool(getattr(prior, "joint_views", False))


def predict_noise_views(prior, x_t: Tensor, t: Tensor, cond: Optional[Condition], rel_camera: Tensor,
                        num_views: int = 1) -> Tensor:
    """``prior.predict_noise`` with ``num_views`` views per object; V = 1 is the plain four-argument call, V > 1
    needs a joint prior (:func:`is_joint`) and a batch that is a whole number of objects."""
    num_views = int(num_views)
    if num_views == 1:
        return prior.predict_noise(x_t, t, cond, rel_camera)
    if num_views < 1 or x_t.shape[0] % num_views:
        raise ValueError(f"num_views={num_views} does not divide the batch of {x_t.shape[0]} views")
    if not is_joint(prior):
        raise ValueError(f"num_views={num_views}: {type(prior).__name__} denoises views independently "
                         "(a prior with joint_views, e.g. trained with --config zero123-mv-tiny, is needed)")
    return prior.predict_noise(x_t, t, cond, rel_camera, num_views=num_views)


def orbit_parameters(c2w: Tensor) -> Tensor:
    """(elevation°, azimuth°, distance) of camera-to-world matrices [..., 4, 4] looking at the origin, in the
    project's orbit convention (lrm/cameras.py: +Z up, azimuth 0 on +X growing toward +Y)."""
    pos = c2w[..., :3, 3]
    dist = pos.norm(dim=-1).clamp_min(1e-8)
    elev = torch.rad2deg(torch.asin((pos[..., 2] / dist).clamp(-1.0, 1.0)))
    azim = torch.rad2deg(torch.atan2(pos[..., 1], pos[..., 0]))
    return torch.stack([elev, azim, dist], dim=-1)


def relative_camera(src_c2w: Tensor, tgt_c2w: Tensor) -> Tensor:
    """Zero-1-to-3's relative pose ``[Δelevation (rad), sin Δazimuth, cos Δazimuth, Δdistance]`` from the source
    (input) camera to the target camera, both [..., 4, 4] orbit cameras around the origin."""
    s, t = orbit_parameters(src_c2w), orbit_parameters(tgt_c2w)
    d_elev = torch.deg2rad(t[..., 0] - s[..., 0])
    d_azim = torch.deg2rad(t[..., 1] - s[..., 1])
    return torch.stack([d_elev, torch.sin(d_azim), torch.cos(d_azim), t[..., 2] - s[..., 2]], dim=-1)


def relative_camera_from_angles(d_elevation_deg, d_azimuth_deg, d_distance=0.0) -> Tensor:
    """The same 4-vector from angle offsets in degrees (sampling CLI: ``--azimuth 90 --elevation 10``)."""
    e = torch.as_tensor(d_elevation_deg, dtype=torch.float32)
    a = torch.as_tensor(d_azimuth_deg, dtype=torch.float32)
    d = torch.as_tensor(d_distance, dtype=torch.float32)
    e, a, d = torch.broadcast_tensors(e, a, d)
    return torch.stack([torch.deg2rad(e), torch.sin(torch.deg2rad(a)), torch.cos(torch.deg2rad(a)), d], dim=-1)


def cfg_combine(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ε̂ = ε̂_uncond + s (ε̂_cond − ε̂_uncond); s = 1 gives the conditional prediction."""
    if scale == 1.0:
        return eps_cond
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_noise(prior, x_t: Tensor, t: Tensor, cond: Optional[Condition], rel_camera: Tensor, scale: float,
                 num_views: int = 1) -> Tuple[Tensor, int]:
    """ε̂ with classifier-free guidance and the number of prior forward passes made. ``scale`` = 1: the conditional
    branch only. Otherwise a prior with ``predict_noise_pair`` (both branches in one batched pass: :class:`PixelPrior`)
    makes one pass, any other prior a conditional and an unconditional call. ``num_views`` V > 1: the rows are
    objects of V views denoised together (a joint prior), in both branches."""
    if scale == 1.0:
        return predict_noise_views(prior, x_t, t, cond, rel_camera, num_views), 1
    pair = getattr(prior, "predict_noise_pair", None)
    if pair is not None and cond is not None:
        if int(num_views) > 1 and not is_joint(prior):
            predict_noise_views(prior, x_t, t, cond, rel_camera, num_views)  # raises the same error as unbatched
        eps_u, eps_c = pair(x_t, t, cond, rel_camera, num_views=int(num_views))
        return cfg_combine(eps_u, eps_c, scale), 1
    eps_c = predict_noise_views(prior, x_t, t, cond, rel_camera, num_views)
    eps_u = predict_noise_views(prior, x_t, t, None, rel_camera, num_views)
    return cfg_combine(eps_u, eps_c, scale), 2


def snr_weight(alphas_cumprod: Tensor, t: Tensor, kind: str = "sds") -> Tensor:
    """w(t) of DreamFusion: ``sds`` = 1 − ᾱ_t; ``uniform`` = 1."""
    if kind == "uniform":
        return torch.ones_like(alphas_cumprod[t])
    if kind == "sds":
        return 1.0 - alphas_cumprod[t]
    raise ValueError(f"unknown SDS weighting {kind!r} (sds | uniform)")


__all__ = ["Condition", "ViewPrior", "is_joint", "predict_noise_views", "guided_noise", "orbit_parameters", "relative_camera",
           "relative_camera_from_angles", "cfg_combine", "snr_weight"]
