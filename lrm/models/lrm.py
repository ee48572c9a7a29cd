"""The assembled Large Reconstruction Model: images (+ cameras) -> triplane -> density/colour -> pixels.

Data flow (one file per stage, in this order):
encoder.py (ViT tokens) -> camera_embed.py (adaLN conditioning) -> transformer.py (triplane tokens attend to
image tokens) -> upsampler.py (tokens -> 3 x C x H x W planes) -> pixel_plane.py (optional fourth plane: the input image's
features on the canonical camera's image plane) -> decoder.py (plane features at points ->
density, RGB) -> lrm/render/volume.py (rays -> pixels).

The view axis: ``forward`` takes V input views of each object, [B, V, 3, H, W] with their cameras [B, V, 16] in
the canonical frame of view 0. The encoder runs on all B·V images; with ``transformer.multiview`` each view's
camera embedding is added to its own tokens; the views' tokens are concatenated into one context of V·T tokens
for the transformer's cross-attention; the lift averages each view's back-projection; the adaLN modulation uses
view 0's camera. Nothing depends on the order of views 1..V-1. V = 1 is the one-view model exactly.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
import torch.nn as nn

from .. import cameras as cam
from ..config import ENCODER_KINDS, ConfigError, model_config_from
from ..render.volume import VolumeRenderer
from .camera_embed import CameraEmbedder, ViewEmbedder
from .decoder import TriplaneDecoder
from .efficientnet_lite import ConvTokenEncoder, load_pretrained_backbone
from .encoder import ImageEncoder, load_pretrained
from .lift import ImageLift
from .pixel_plane import PixelPlane
from .transformer import TriplaneTransformer
from .upsampler import TriplaneUpsampler

log = logging.getLogger(__name__)


def build_encoder(ecfg) -> nn.Module:
    """The image encoder ``model.encoder.kind`` names: tokens [B, prefix + g*g, dim] either way."""
    if ecfg.kind == "vit":
        return ImageEncoder(ecfg)
    if ecfg.kind == "efficientnet_lite0":
        return ConvTokenEncoder(ecfg)
    raise ConfigError(f"model.encoder.kind must be one of {', '.join(ENCODER_KINDS)}, got {ecfg.kind!r}")


class LRM(nn.Module):
    def __init__(self, cfg, load_pretrained_encoder: bool = True):
        super().__init__()
        cfg = model_config_from(cfg)
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder)
        t = cfg.transformer
        self.camera_embed = CameraEmbedder(t.camera_embed_dim) if t.camera_modulation else None
        self.lift = (ImageLift(self.encoder.out_dim, t.token_dim, t.plane_tokens, cfg.render.radius, t.lift_samples,
                               prefix_tokens=int(cfg.encoder.cls_token) + cfg.encoder.num_register_tokens)
                     if t.lift_image else None)
        self.view_embed = ViewEmbedder(t.camera_embed_dim, self.encoder.out_dim) if t.multiview else None
        self.transformer = TriplaneTransformer(t, context_dim=self.encoder.out_dim)
        self.upsampler = TriplaneUpsampler(t.token_dim, cfg.upsampler.channels, cfg.upsampler.kernel,
                                            cfg.upsampler.get("overlap", 0))
        pp = cfg.pixel_plane
        self.pixel_plane = (PixelPlane(self.encoder.out_dim, cfg.upsampler.channels, pp.hidden,
                                       int(cfg.encoder.cls_token) + cfg.encoder.num_register_tokens, pp.distance,
                                       pp.fov_deg, int(getattr(pp, "depth_head", 0) or 0)) if pp.enabled else None)
        self.decoder = TriplaneDecoder(cfg.decoder, cfg.upsampler.channels, cfg.render.radius, pp)
        self.renderer = VolumeRenderer(cfg.render)
        if load_pretrained_encoder and not _is_meta(self):
            if cfg.encoder.pretrained_path and cfg.encoder.kind == "efficientnet_lite0":
                load_pretrained_backbone(self.encoder, cfg.encoder.pretrained_path)
            elif cfg.encoder.pretrained_path:
                load_pretrained(self.encoder, cfg.encoder.pretrained_path)
            else:
                log.info("image encoder: random init (no encoder.pretrained_path)")
        if cfg.encoder.freeze:  # the pretrained part: all of a ViT; the backbone of a conv encoder (its token
            # projection, positions and norm start random and keep training)
            getattr(self.encoder, "backbone", self.encoder).requires_grad_(False)

    # ------------------------------------------------------------------ images -> triplane
    def forward(self, images: torch.Tensor, cameras: Optional[torch.Tensor] = None) -> torch.Tensor:
        """images [B, V, 3, H, W] in [0, 1]; cameras [B, V, 16] (``lrm.cameras.camera_vector`` of each view's camera
        in the canonical frame of view 0; ignored by fixed-camera models) -> triplanes [B, 3, C, H', W']
        ([B, 4, C, H', W'] with ``model.pixel_plane``: the fourth is the pixel plane).
        One view may also come as images [B, 3, H, W] and cameras [B, 16]."""
        images, cameras = self._with_view_axis(images, cameras)
        b, v = images.shape[:2]
        tokens = self.encoder(images.flatten(0, 1)).unflatten(0, (b, v))  # [B, V, T, D]
        cond = self.camera_embed(cameras[:, 0]) if self.camera_embed is not None else None
        offset = self.lift(tokens, cameras) if self.lift is not None else None
        x = self.transformer(self.context(tokens, cameras), cond, offset)
        planes = self.upsampler(x, self.cfg.transformer.plane_tokens)
        if self.pixel_plane is None:
            return planes
        pix = self.pixel_plane(images[:, 0], tokens[:, 0], cameras[:, 0], planes.shape[-1])
        return torch.cat([planes, pix.to(planes.dtype).unsqueeze(1)], 1)

    def context(self, tokens: torch.Tensor, cameras: Optional[torch.Tensor]) -> torch.Tensor:
        """Image tokens [B, V, T, D] (+ each view's camera embedding) -> the transformer's context [B, V·T, D]."""
        if self.view_embed is not None:
            tokens = tokens + self.view_embed(cameras).to(tokens.dtype)
        return tokens.flatten(1, 2)

    def _with_view_axis(self, images: torch.Tensor, cameras: Optional[torch.Tensor]):
        """(images [B, V, 3, H, W], cameras [B, V, 16] or None), checked; one-view inputs get V = 1."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        if cameras is not None and cameras.dim() == 2:
            cameras = cameras.unsqueeze(1)
        if images.dim() != 5:
            raise ValueError(f"images must be [B, V, 3, H, W] or [B, 3, H, W], got {tuple(images.shape)}")
        b, v = images.shape[:2]
        if v > 1 and self.view_embed is None:
            raise ValueError(f"{v} input views given to a one-view model (model.transformer.multiview=false): "
                             "pass one view, or use a model built with multiview=true")
        uses_cameras = (self.camera_embed is not None or self.lift is not None or self.view_embed is not None
                        or self.pixel_plane is not None)
        if cameras is None and uses_cameras:
            if v > 1:
                raise ValueError(f"{v} input views need their cameras [B, V, 16]")
            cameras = self.default_camera(b, images.device, images.dtype).unsqueeze(1)
        if cameras is not None and tuple(cameras.shape[:2]) != (b, v):
            raise ValueError(f"cameras {tuple(cameras.shape)} do not match images {tuple(images.shape)}: "
                             "expected [B, V, 16]")
        return images, cameras

    @staticmethod
    def default_camera(batch: int, device=None, dtype=torch.float32, distance=cam.CANONICAL_DISTANCE,
                       fov_deg=cam.CANONICAL_FOV_DEG) -> torch.Tensor:
        """Camera vector of the canonical input view (azimuth 0, elevation 0)."""
        c2w = cam.orbit_camera(0.0, 0.0, distance)
        intr = cam.intrinsics_from_fov(fov_deg)
        return cam.camera_vector(c2w, intr).to(device=device, dtype=dtype).expand(batch, -1)

    # ------------------------------------------------------------------ triplane -> field -> pixels
    def query(self, triplanes: torch.Tensor, points: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Density [B, N] and RGB [B, N, 3] at world points [B, N, 3]."""
        return self.decoder(triplanes, points)

    def field(self, triplanes: torch.Tensor):
        def fn(points):
            out = self.decoder(triplanes, points)
            return out["density"], out["rgb"]

        return fn

    def occupancy_grid(self, triplanes: torch.Tensor):
        """Occupancy grid of ``triplanes`` for empty-space skipping; build once, pass ``occupancy=`` to each
        ``render`` of the same triplanes (lrm/render/occupancy.py)."""
        return self.renderer.occupancy_grid(self.field(triplanes), triplanes.shape[0], triplanes.device)

    def render_rays(self, triplanes, rays_o, rays_d, **kw) -> Dict[str, torch.Tensor]:
        """Render rays [B, N, 3] -> rgb [B, N, 3], opacity [B, N], depth [B, N]."""
        return self.renderer(self.field(triplanes), rays_o, rays_d, **kw)

    def render(self, triplanes, c2w, intrinsics, resolution: Optional[int] = None, **kw) -> Dict[str, torch.Tensor]:
        """Render full views. c2w [B, V, 4, 4], intrinsics [B, V, 4] -> rgb [B, V, H, W, 3], opacity and
        depth [B, V, H, W]."""
        res = resolution or self.cfg.render.resolution
        b, v = c2w.shape[:2]
        rays_o, rays_d = cam.get_rays(c2w, intrinsics, res, res)  # [B, V, HW, 3]
        out = self.render_rays(triplanes, rays_o.reshape(b, -1, 3), rays_d.reshape(b, -1, 3), **kw)
        return {k: val.reshape(b, v, res, res, *val.shape[2:]) for k, val in out.items()
                if val.dim() >= 2 and val.shape[1] == v * res * res}

    # ------------------------------------------------------------------ bookkeeping
    def parameter_counts(self) -> Dict[str, int]:
        stages = {"encoder": self.encoder, "camera_embed": self.camera_embed, "view_embed": self.view_embed,
                  "lift": self.lift, "transformer": self.transformer,
                  "upsampler": self.upsampler, "pixel_plane": self.pixel_plane, "decoder": self.decoder}
        counts = {k: sum(p.numel() for p in m.parameters()) if m is not None else 0 for k, m in stages.items()}
        counts["total"] = sum(counts.values())
        return counts


def _is_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def build_model(cfg, device: str | torch.device | None = None, meta: bool = False) -> LRM:
    """Build an LRM from a (full or model-only) config; ``meta=True`` allocates no weights."""
    if meta:
        with torch.device("meta"):
            return LRM(cfg, load_pretrained_encoder=False)
    model = LRM(cfg)
    return model.to(device) if device is not None else model
