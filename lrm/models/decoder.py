"""Stage 5 — decoder: triplane features at 3D points -> density and colour.

Sampling: a world point p in the cube [-R, R]^3 is divided by R and looked up in the three planes:
plane 0 at (x, y), plane 1 at (x, z), plane 2 at (y, z). The first coordinate indexes a plane's width
(last axis) and the second its height, with ``grid_sample`` bilinear, ``align_corners=False`` (feature
cell centres at (2i+1)/W - 1) and zero padding outside. The three C-channel features are aggregated by
``concat`` (3C channels, default), ``sum`` or ``mean`` (C channels).

Pixel plane (``model.pixel_plane``, lrm/models/pixel_plane.py): the scene is [B, 4, C, H, W]; plane 3 is sampled
at the point's projection into the canonical input camera and, with the point's depth offset along that camera,
enters the first layer through its own linear map (``pixel_in``, zero-initialised: a model warm-started from a
three-plane checkpoint begins as that checkpoint). With ``depth_bands`` K > 0 that input is multiplied per hidden unit
by 1 + ``pixel_gate``(sin/cos of 2^k·π·depth offset, k < K), a linear map that starts at zero (:func:`depth_bands`).

MLP: Linear -> act, (hidden_layers - 1) x [Linear -> act], Linear -> 4. Channel 0 is raw density, made
non-negative by ``density_activation`` applied to ``raw + density_bias`` (exp, trunc_exp: exp with its
gradient clamped, softplus, relu); channels 1..3 go through a sigmoid to RGB in [0, 1].
"""
from __future__ import annotations

import contextlib
import math
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pixel_plane import project_canonical
from .plane_fold import fold_table, folded_first_layer

PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def density_activation(raw: torch.Tensor, kind: str, bias: float) -> torch.Tensor:
    x = raw + bias
    if kind == "exp":
        return torch.exp(x)
    if kind == "trunc_exp":
        return _TruncExp.apply(x)
    if kind == "softplus":
        return F.softplus(x)
    if kind == "relu":
        return F.relu(x)
    raise ValueError(f"unknown density_activation {kind!r}")


def sample_triplane(triplanes: torch.Tensor, points: torch.Tensor, radius: float, aggregation: str = "concat"):
    """Bilinear features of ``triplanes`` [B, 3, C, H, W] at world ``points`` [B, N, 3].

    Returns [B, N, 3C] for ``concat``, [B, N, C] for ``sum``/``mean``.
    """
    b, _, c, h, w = triplanes.shape
    n = points.shape[1]
    p = points / radius
    coords = torch.stack([p[..., list(ax)] for ax in PLANE_AXES], dim=1)  # [B, 3, N, 2]
    feats = F.grid_sample(triplanes.reshape(b * 3, c, h, w), coords.reshape(b * 3, 1, n, 2).to(triplanes.dtype),
                          mode="bilinear", padding_mode="zeros", align_corners=False)
    feats = feats.view(b, 3, c, n).permute(0, 3, 1, 2)  # [B, N, 3, C]
    if aggregation == "concat":
        return feats.reshape(b, n, 3 * c)
    if aggregation == "sum":
        return feats.sum(2)
    if aggregation == "mean":
        return feats.mean(2)
    raise ValueError(f"unknown decoder.aggregation {aggregation!r}")


_ACTS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


def sample_pixel_plane(plane: torch.Tensor, points: torch.Tensor, radius: float, distance: float,
                       fov_deg: float) -> torch.Tensor:
    """Features of the pixel plane [B, C, H, W] at the canonical-camera projections of world ``points`` [B, N, 3],
    with the depth offset appended -> [B, N, C + 1] (zeros off the image and behind the camera)."""
    proj = project_canonical(points, radius, distance, fov_deg)
    feats = F.grid_sample(plane, proj[:, None, :, :2].to(plane.dtype), mode="bilinear", padding_mode="zeros",
                          align_corners=False)[:, :, 0]  # [B, C, N]
    return torch.cat([feats.transpose(1, 2), proj[..., 2:].to(feats.dtype)], -1)


def depth_bands(depth: torch.Tensor, k: int) -> torch.Tensor:
    """[..., N] depth offsets (in cube radii) -> [..., N, 2k]: sin and cos of 2^i·π·depth for i < k."""
    freq = math.pi * 2.0 ** torch.arange(k, device=depth.device, dtype=depth.dtype)
    x = depth[..., None] * freq
    return torch.cat([x.sin(), x.cos()], -1)


class TriplaneDecoder(nn.Module):
    def __init__(self, cfg, channels: int, radius: float, pixel_plane=None):
        """``pixel_plane``: None, or the ``model.pixel_plane`` section (enabled, distance, fov_deg)."""
        super().__init__()
        self.cfg, self.radius = cfg, radius
        if cfg.mlp_precision not in ("fp32", "bf16"):
            raise ValueError(f"model.decoder.mlp_precision must be fp32 or bf16, got {cfg.mlp_precision!r}")
        self.pixel = pixel_plane if pixel_plane is not None and pixel_plane.enabled else None
        self.pixel_in = None
        if self.pixel is not None:
            self.pixel_in = nn.Linear(channels + 1, cfg.hidden if cfg.hidden_layers > 0 else 4, bias=False)
            nn.init.zeros_(self.pixel_in.weight)
        self.pixel_gate = None
        if self.pixel is not None and int(getattr(self.pixel, "depth_bands", 0) or 0) > 0:
            self.pixel_gate = nn.Linear(2 * int(self.pixel.depth_bands), self.pixel_in.out_features)
            nn.init.zeros_(self.pixel_gate.weight)
            nn.init.zeros_(self.pixel_gate.bias)
        in_dim = channels * 3 if cfg.aggregation == "concat" else channels
        layers, d = [], in_dim
        for _ in range(cfg.hidden_layers):
            layers += [nn.Linear(d, cfg.hidden), _ACTS[cfg.activation]()]
            d = cfg.hidden
        layers.append(nn.Linear(d, 4))
        self.layers = nn.Sequential(*layers)
        self._fold_cache = None  # (weakref to the scene tensor, versions, table) of the last folded scene

    def forward(self, triplanes: torch.Tensor, points: torch.Tensor):
        """-> dict(density [B, N] >= 0, rgb [B, N, 3] in [0, 1], raw [B, N, 4])."""
        planes = 3 if self.pixel is None else 4
        if triplanes.shape[1] != planes:
            raise ValueError(f"this decoder reads {planes} planes, got a scene of {triplanes.shape[1]} "
                             f"{tuple(triplanes.shape)} (model.pixel_plane.enabled={self.pixel is not None})")
        if self.can_fold(triplanes):
            return self.outputs(self.folded_mlp(triplanes, points))
        feats = sample_triplane(triplanes[:, :3], points, self.radius, self.cfg.aggregation)
        pix = None
        if self.pixel is not None:
            pix = sample_pixel_plane(triplanes[:, 3], points, self.radius, float(self.pixel.distance),
                                     float(self.pixel.fov_deg)).to(feats.dtype)
        return self.outputs(self.mlp(feats, pix))

    def mlp(self, feats: torch.Tensor, pix=None) -> torch.Tensor:
        """The MLP on sampled features (+ pixel-plane features) -> raw [B, N, 4]. With ``mlp_precision`` bf16 and no
        gradient being taken it runs under bf16 autocast and returns fp32 (tests/test_precision.py); otherwise it runs
        in whatever precision the caller set up (fp32, or the caller's autocast when training in bf16)."""
        fast, ctx = self.mlp_autocast(feats.device.type)
        with ctx:
            if pix is None:
                raw = self.layers(feats)
            else:
                raw = self.layers[1:](self.layers[0](feats) + self.pixel_input(pix))
        return raw.float() if fast else raw

    def mlp_autocast(self, device_type: str):
        """(whether the MLP runs in bf16, the context to run it in): bf16 autocast with ``mlp_precision`` bf16 and no
        gradient being taken; otherwise no context at all (a disabled autocast would also switch off a caller's, e.g.
        bf16 training). The caller casts a bf16 result back to fp32."""
        fast = self.cfg.mlp_precision == "bf16" and not torch.is_grad_enabled()
        return fast, torch.autocast(device_type, dtype=torch.bfloat16) if fast else contextlib.nullcontext()

    # ------------------------------------------------------------ inference fast path (lrm/models/plane_fold.py)
    def can_fold(self, triplanes: torch.Tensor) -> bool:
        """The folded path applies: ``fold_planes``, no autograd, no caller's autocast, no depth-band gate. (With
        ``mlp_precision`` bf16 the table and its first layer stay fp32; the layers after it run in bf16.)"""
        return (bool(getattr(self.cfg, "fold_planes", False)) and not torch.is_grad_enabled()
                and self.pixel_gate is None and not torch.is_autocast_enabled(triplanes.device.type))

    def weight_blocks(self):
        """The first layer's weight split per plane: [hidden, C] for planes 0-2 (and the pixel plane)."""
        w = self.layers[0].weight
        if self.cfg.aggregation == "concat":
            blocks = list(w.chunk(3, dim=1))
        elif self.cfg.aggregation in ("sum", "mean"):
            blocks = [w / 3 if self.cfg.aggregation == "mean" else w] * 3
        else:
            raise ValueError(f"unknown decoder.aggregation {self.cfg.aggregation!r}")
        if self.pixel is not None:
            blocks.append(self.pixel_in.weight[:, :-1])
        return blocks

    def folded_table(self, triplanes: torch.Tensor) -> torch.Tensor:
        """The scene's planes mapped through the first layer (:func:`fold_table`), cached for the same scene tensor
        while neither it nor the weights change in place (inference-mode tensors carry no version: not cached)."""
        params = [self.layers[0].weight, self.layers[0].bias] + ([self.pixel_in.weight] if self.pixel is not None else [])
        try:
            key = tuple(t._version for t in [triplanes, *params])
        except RuntimeError:  # inference tensors
            key = None
        c = self._fold_cache
        if key is not None and c is not None and c[0]() is triplanes and c[1] == key:
            return c[2]
        first = self.layers[0]
        extra = [first.bias] + ([self.pixel_in.weight[:, -1]] if self.pixel is not None else [])
        table = fold_table(triplanes, self.weight_blocks(), extra)
        self._fold_cache = (weakref.ref(triplanes), key, table) if key is not None else None
        return table

    def folded_mlp(self, triplanes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """:meth:`mlp` of :meth:`forward`'s features, computed through the folded table -> raw [B, N, 4]."""
        b, n = points.shape[:2]
        h, w = triplanes.shape[-2:]
        p = (points.to(triplanes.dtype) / self.radius).unbind(-1)
        us, vs = [p[a] for a, _ in PLANE_AXES], [p[c] for _, c in PLANE_AXES]
        proj = None
        if self.pixel is not None:
            proj = project_canonical(points, self.radius, float(self.pixel.distance),
                                     float(self.pixel.fov_deg)).to(triplanes.dtype).unbind(-1)
            us.append(proj[0])
            vs.append(proj[1])
        extra = [1.0] + ([proj[2]] if proj is not None else [])  # the bias, the depth offset's column
        x = folded_first_layer(self.folded_table(triplanes), torch.stack(us), torch.stack(vs), h, w, extra)
        fast, ctx = self.mlp_autocast(x.device.type)  # (no autograd on this path)
        with ctx:
            for layer in self.layers[1:]:
                x = F.silu(x, inplace=True) if isinstance(layer, nn.SiLU) else layer(x)
        return (x.float() if fast else x).view(b, n, -1)

    def pixel_input(self, pix: torch.Tensor) -> torch.Tensor:
        """Pixel-plane features + depth offset [B, N, C + 1] -> their term in the first layer [B, N, hidden]."""
        h = self.pixel_in(pix)
        if self.pixel_gate is None:
            return h
        return h * (1 + self.pixel_gate(depth_bands(pix[..., -1], self.pixel_gate.in_features // 2)))

    def outputs(self, raw: torch.Tensor):
        return {
            "density": density_activation(raw[..., 0], self.cfg.density_activation, self.cfg.density_bias),
            "rgb": torch.sigmoid(raw[..., 1:4]),
            "raw": raw,
        }
