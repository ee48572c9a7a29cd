"""The project's own view-conditioned diffusion model (Zero-1-to-3 style), pixel space, small enough for a CPU.

``ViewConditionedUNet`` predicts the noise ε of a noisy *target* view ``x_t`` [B, 3, S, S] (pixel values scaled to
[-1, 1]) at DDPM timestep ``t``, given the *input* view and the relative camera from input to target
(``lrm.diffusion.prior.relative_camera``: [Δelevation rad, sin Δazimuth, cos Δazimuth, Δdistance]). The condition
enters twice:

* the input view (also in [-1, 1]) is concatenated to ``x_t`` on channels: the UNet sees 3 + 3 channels, so
  pixel-aligned appearance is available at every resolution level;
* a small conv image encoder pools the input view into a vector, which is concatenated with the 4-vector camera
  and mapped by an MLP to a vector added to the UNet's timestep embedding (diffusers ``UNet2DModel`` with
  ``class_embed_type="identity"``), so the global "where is the target camera" signal reaches every ResNet block.

Classifier-free guidance: with probability ``cond_dropout`` per sample (training) the whole condition is dropped
together: the concatenated image becomes zeros and the condition vector becomes the learned ``null_condition``
(camera included), which is also what ``drop=True`` rows use at sampling time.

Noise schedule (``schedule_config``): 1000 DDPM steps with cosine betas (``squaredcos_cap_v2``, Nichol & Dhariwal
2021). The cosine schedule was designed for low-resolution pixel-space models: a linear or scaled-linear schedule
(made for 256² pixels / Stable Diffusion latents) leaves a 64² image almost pure noise for the last few hundred
steps, which wastes training steps; cosine keeps ᾱ_t decaying evenly over t.

Jointly denoised views (``joint_views: true``, MVDream's "3D self-attention"): the batch is laid out as
``[B * V, ...]``, the V target views of each object contiguous (each with its own relative camera, all with the same
input view), and ``forward(..., num_views=V)``. Every self-attention layer of the UNet then attends over the tokens
of all V views of an object together ([B, V * h * w, C]) instead of one image at a time; everything else (ResNet
blocks, group norms, the condition) stays per view. No weights are added, so a single-view checkpoint loads as is,
and with V = 1 the model computes exactly what the single-view model computes (docs/diffusion.md, "Jointly denoised
views").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional

import torch
from torch import Tensor, nn


@dataclass
class ViewUNetConfig:
    """``model`` section of the ``zero123`` task (configs/zero123-tiny.yaml)."""

    resolution: int = 64  # side of the images the model denoises (pixel space)
    block_out_channels: List[int] = field(default_factory=lambda: [32, 64, 96])  # per UNet level
    attention: List[bool] = field(default_factory=lambda: [False, False, True])  # self-attention per level
    layers_per_block: int = 1
    attention_head_dim: int = 16
    norm_num_groups: int = 16
    encoder_channels: List[int] = field(default_factory=lambda: [32, 64, 96])  # image encoder, stride 2 each
    image_embed_dim: int = 128  # pooled input-view vector
    cond_dropout: float = 0.1  # probability of dropping the whole condition in training (classifier-free guidance)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine; see the module docstring
    prediction_type: str = "epsilon"
    joint_views: bool = False  # self-attention across the V views of one object (forward(..., num_views=V))


#: What the network outputs: the noise ε, or the velocity v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0 (Salimans & Ho 2022).
#: Both are trained on their own target and read as ε everywhere else (:meth:`ViewConditionedUNet.to_noise`).
PREDICTION_TYPES = ("epsilon", "v_prediction")


def training_target(x0: Tensor, noise: Tensor, alphas_cumprod_t: Tensor, prediction_type: str) -> Tensor:
    """What the network is trained to output for x_t = sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε: ε, or v (``alphas_cumprod_t``
    [B], ᾱ at each row's timestep)."""
    if prediction_type == "epsilon":
        return noise
    a = alphas_cumprod_t.to(x0).view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def noise_from_output(out: Tensor, x_t: Tensor, alphas_cumprod_t: Tensor, prediction_type: str) -> Tensor:
    """The network's output read as ε: v -> ε = sqrt(1 − ᾱ) x_t + sqrt(ᾱ) v (exact inverse of
    :func:`training_target` given x_t)."""
    if prediction_type == "epsilon":
        return out
    a = alphas_cumprod_t.to(out).view(-1, 1, 1, 1)
    return (1 - a).sqrt() * x_t + a.sqrt() * out


#: Allowed ranges of the size-like keys (inclusive), checked before a model is built.
MODEL_LIMITS = {"resolution": (8, 1024), "layers_per_block": (1, 8), "attention_head_dim": (1, 1024),
                "norm_num_groups": (1, 1024), "image_embed_dim": (1, 8192), "num_train_timesteps": (2, 100000)}


def check_config(cfg: ViewUNetConfig) -> ViewUNetConfig:
    """Raise :class:`lrm.config.ConfigError` on a model section that cannot build a model."""
    from ..config import ConfigError, check_number

    for key, (lo, hi) in MODEL_LIMITS.items():
        check_number(f"model.{key}", getattr(cfg, key), lo, hi)
    chans = list(cfg.block_out_channels)
    if len(cfg.attention) != len(chans) or not chans:
        raise ConfigError(f"model.attention needs one flag per UNet level ({len(chans)}), got {list(cfg.attention)}")
    if any(c % cfg.norm_num_groups for c in chans):
        raise ConfigError(f"model.block_out_channels {chans} must be multiples of model.norm_num_groups "
                          f"({cfg.norm_num_groups})")
    if cfg.joint_views and not any(cfg.attention):
        raise ConfigError("model.joint_views needs self-attention at one UNet level at least (model.attention)")
    if cfg.resolution % (2 ** (len(chans) - 1)):
        raise ConfigError(f"model.resolution {cfg.resolution} must be divisible by 2^{len(chans) - 1} "
                          f"({len(chans)} UNet levels)")
    if not 0.0 <= float(cfg.cond_dropout) < 1.0:
        raise ConfigError(f"model.cond_dropout must be in [0, 1), got {cfg.cond_dropout}")
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"model.prediction_type must be {' | '.join(PREDICTION_TYPES)}, got {cfg.prediction_type!r}")
    if cfg.beta_schedule not in ("squaredcos_cap_v2", "scaled_linear", "linear"):
        raise ConfigError(f"model.beta_schedule must be squaredcos_cap_v2 | scaled_linear | linear, "
                          f"got {cfg.beta_schedule!r}")
    return cfg


def model_config(section) -> ViewUNetConfig:
    """A validated :class:`ViewUNetConfig` from a dict / DictConfig model section (unknown keys are errors)."""
    from omegaconf import OmegaConf

    from ..config import merge_configs

    merged = merge_configs(OmegaConf.structured(ViewUNetConfig), section if section is not None else {})
    return check_config(ViewUNetConfig(**OmegaConf.to_container(merged, resolve=True)))


def schedule_config(cfg: ViewUNetConfig) -> dict:
    """Keyword arguments of the diffusers DDPM/DDIM schedulers that match the model's training noise schedule."""
    return dict(num_train_timesteps=int(cfg.num_train_timesteps), beta_schedule=cfg.beta_schedule,
                prediction_type=cfg.prediction_type, clip_sample=False)


def train_scheduler(cfg: ViewUNetConfig):
    """The DDPMScheduler used for training (``add_noise``, ``alphas_cumprod``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**schedule_config(cfg))


class ImageEncoder(nn.Module):
    """Input view [B, 3, S, S] in [-1, 1] -> vector [B, D]: stride-2 conv + GroupNorm + SiLU stages, mean pool."""

    def __init__(self, channels: List[int], out_dim: int, groups: int):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(groups, c), c), nn.SiLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, out_dim)

    def forward(self, image: Tensor) -> Tensor:
        return self.proj(self.convs(image).mean(dim=(-2, -1)))


class _ViewCount:
    """How many views one object has in the batch of the forward pass in progress (set and restored by
    ``ViewConditionedUNet.forward``; 1 outside a call). Shared by the model's attention processors."""

    def __init__(self):
        self.n = 1


class JointViewAttnProcessor:
    """A diffusers attention processor for the UNet's self-attention layers that attends over the tokens of all
    views of one object: hidden states [B * V, C, h, w] (or [B * V, h * w, C]) -> group norm per view (as the
    single-view layer) -> tokens regrouped to [B, V * h * w, C] -> the layer's own q / k / v / out projections and
    scaled dot-product attention -> back to [B * V, ...], plus the residual. With V = 1 it performs the same
    operations as diffusers' ``AttnProcessor2_0`` on the same shapes."""

    def __init__(self, views: _ViewCount):
        self.views = views

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, temb: Optional[Tensor] = None) -> Tensor:
        import torch.nn.functional as F

        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("JointViewAttnProcessor is for self-attention without a mask")
        v = int(self.views.n)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            n, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(n, channel, height * width).transpose(1, 2)
        n, length, _ = hidden_states.shape
        if n % v:
            raise ValueError(f"a batch of {n} images is not a whole number of objects of {v} views")
        if attn.group_norm is not None:  # per view, as in the single-view model
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        hidden_states = hidden_states.reshape(n // v, v * length, hidden_states.shape[-1])  # views of one object
        b = n // v
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                                       is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout
        hidden_states = hidden_states.reshape(n, length, hidden_states.shape[-1])  # back to one row per view
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(n, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class ViewConditionedUNet(nn.Module):
    """ε-prediction UNet for a target view given an input view and a relative camera (module docstring)."""

    def __init__(self, cfg: Optional[ViewUNetConfig] = None):
        super().__init__()
        from diffusers import UNet2DModel

        self.cfg = cfg = check_config(cfg or ViewUNetConfig())
        chans = [int(c) for c in cfg.block_out_channels]
        self.time_dim = 4 * chans[0]
        down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention]
        up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)]
        self.unet = UNet2DModel(
            sample_size=cfg.resolution, in_channels=6, out_channels=3, down_block_types=tuple(down),
            up_block_types=tuple(up), block_out_channels=tuple(chans), layers_per_block=cfg.layers_per_block,
            attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups,
            add_attention=any(cfg.attention), class_embed_type="identity")
        self.image_encoder = ImageEncoder(list(cfg.encoder_channels), cfg.image_embed_dim, cfg.norm_num_groups)
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.image_embed_dim + 4, self.time_dim), nn.SiLU(),
                                      nn.Linear(self.time_dim, self.time_dim))
        nn.init.zeros_(self.cond_mlp[-1].weight)  # starts as an unconditional model; learns to use the condition
        nn.init.zeros_(self.cond_mlp[-1].bias)
        #: the condition vector of a dropped condition (image and camera together), learned
        self.null_condition = nn.Parameter(torch.zeros(self.time_dim))
        self._views = _ViewCount()
        if cfg.joint_views:
            self.set_joint_views(True)

    @property
    def joint_views(self) -> bool:
        return bool(self.cfg.joint_views)

    def set_joint_views(self, joint: bool) -> None:
        """Switch the self-attention layers between per-image (diffusers' default processor) and across the views
        of an object (:class:`JointViewAttnProcessor`); weights are untouched, ``cfg.joint_views`` follows."""
        from diffusers.models.attention_processor import Attention, AttnProcessor2_0

        for m in self.unet.modules():
            if isinstance(m, Attention):
                m.set_processor(JointViewAttnProcessor(self._views) if joint else AttnProcessor2_0())
        self.cfg = replace(self.cfg, joint_views=bool(joint))  # a copy: the caller's config object is not changed

    def embed_image(self, cond_image: Tensor) -> Tensor:
        """Input view [B, 3, S, S] in [-1, 1] -> [B, image_embed_dim] (precomputed once per image at sampling)."""
        return self.image_encoder(cond_image)

    def condition_vector(self, image_embedding: Tensor, rel_camera: Tensor, drop: Optional[Tensor] = None) -> Tensor:
        """[B, time_dim] added to the timestep embedding; rows where ``drop`` is True get ``null_condition``."""
        c = self.cond_mlp(torch.cat([image_embedding, rel_camera.to(image_embedding)], dim=-1))
        if drop is None:
            return c
        return torch.where(drop.to(c.device).view(-1, 1), self.null_condition.to(c).expand_as(c), c)

    def forward(self, x_t: Tensor, t: Tensor, cond_image: Tensor, rel_camera: Tensor, drop: Optional[Tensor] = None,
                image_embedding: Optional[Tensor] = None, num_views: int = 1) -> Tensor:
        """ε̂ [B, 3, S, S] for ``x_t`` [B, 3, S, S] at integer timesteps ``t`` [B]; ``cond_image`` [B, 3, S, S] in
        [-1, 1]; ``rel_camera`` [B, 4]; ``drop`` [B] bool: drop the condition of those rows (classifier-free
        guidance); ``image_embedding``: ``embed_image(cond_image)`` when already computed. ``num_views`` V > 1
        (``joint_views`` models only): the rows are B / V objects of V consecutive views, denoised together."""
        num_views = int(num_views)
        if num_views < 1 or x_t.shape[0] % num_views:
            raise ValueError(f"num_views={num_views} does not divide the batch of {x_t.shape[0]} views")
        if num_views != 1 and not self.cfg.joint_views:
            raise ValueError(f"num_views={num_views}: this model denoises views independently "
                             "(model.joint_views: false)")
        if image_embedding is None:
            image_embedding = self.embed_image(cond_image)
        c = self.condition_vector(image_embedding, rel_camera, drop)
        if drop is not None:
            cond_image = cond_image * (~drop.to(cond_image.device)).to(cond_image).view(-1, 1, 1, 1)
        t = t.to(x_t.device)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        self._views.n = num_views
        try:
            return self.unet(torch.cat([x_t, cond_image.to(x_t)], dim=1), t, class_labels=c).sample
        finally:
            self._views.n = 1

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ViewUNetConfig", "ViewConditionedUNet", "JointViewAttnProcessor", "ImageEncoder", "model_config",
           "check_config", "schedule_config", "train_scheduler", "parameter_count"]
