"""Stage 1 — image encoder: a ViT that turns an RGB image into a sequence of feature tokens.

Pre-norm transformer blocks with PyTorch SDPA attention (lrm/models/attention.py). The layout follows
HF ``ViTModel`` / ``Dinov2Model`` closely enough that their weights load from a **local folder**
(``encoder.pretrained_path``, the folder ``save_pretrained`` writes: ``config.json`` + ``model.safetensors``
or ``pytorch_model.bin``). Nothing is ever downloaded; without a path the encoder starts from random
weights and logs that it did.

Input: images [B, 3, H, W] in [0, 1] (sRGB, already composited on a background). They are resized to
``image_size`` (bilinear, antialiased) when needed, normalised with ImageNet mean/std, patchified, and
prefixed with the CLS token and register tokens. Output: [B, 1 + R + (image_size / patch)^2, dim] tokens
after the final LayerNorm, CLS and registers included.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import MultiHeadAttention

log = logging.getLogger(__name__)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, qkv_bias, eps, layer_scale, backend):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, heads, qkv_bias=qkv_bias, out_bias=True, backend=backend)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def interpolate_pos_grid(grid: torch.Tensor, n_h: int, n_w: int, mode: str) -> torch.Tensor:
    """Resample a [1, g*g, D] position table to [1, n_h*n_w, D].

    ``bicubic``: resize to (n_h, n_w). ``bicubic_legacy``: HF ViT (<= 4.35) behaviour, a bicubic resample
    with ``scale_factor = (n + 0.1) / g`` (PyTorch then maps coordinates by 1 / scale_factor), which
    TripoSR checkpoints were trained with.
    """
    g = int(math.isqrt(grid.shape[1]))
    if g * g != grid.shape[1]:
        raise ValueError(f"position table of {grid.shape[1]} entries is not a square grid")
    if (n_h, n_w) == (g, g):
        return grid
    d = grid.shape[-1]
    x = grid.reshape(1, g, g, d).permute(0, 3, 1, 2)
    if x.dtype not in (torch.float32, torch.float64):  # bicubic needs fp32; keep fp64 exact
        x = x.float()
    if mode == "bicubic":
        x = F.interpolate(x, size=(n_h, n_w), mode="bicubic", align_corners=False)
    elif mode == "bicubic_legacy":
        x = F.interpolate(x, scale_factor=((n_h + 0.1) / g, (n_w + 0.1) / g), mode="bicubic",
                          align_corners=False)
        if x.shape[-2:] != (n_h, n_w):
            raise ValueError(f"legacy position interpolation gave {tuple(x.shape[-2:])}, expected {(n_h, n_w)}")
    else:
        raise ValueError(f"unknown encoder.pos_interp {mode!r}")
    return x.to(grid.dtype).permute(0, 2, 3, 1).reshape(1, n_h * n_w, d)


class ImageEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embed = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        g = cfg.pos_grid or cfg.image_size // cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.cls_token else None
        self.register_tokens = (nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d))
                                if cfg.num_register_tokens else None)
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g + (1 if cfg.cls_token else 0), d))
        self.blocks = nn.ModuleList(
            ViTBlock(d, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.ln_eps, cfg.layer_scale, cfg.attention)
            for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.register_buffer("mean", torch.tensor(list(cfg.normalize_mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(cfg.normalize_std)).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()

    @property
    def out_dim(self) -> int:
        return self.cfg.dim

    def reset_parameters(self):
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.register_tokens is not None:
            nn.init.trunc_normal_(self.register_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> resized, normalised pixels entering the patch embedding."""
        s = self.cfg.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (images - self.mean) / self.std

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        n_h, n_w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        pos = self.pos_embed
        has_cls = self.cls_token is not None
        grid = interpolate_pos_grid(pos[:, 1:] if has_cls else pos, n_h, n_w, self.cfg.pos_interp)
        x = x + grid
        prefix = []
        if has_cls:
            prefix.append((self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1))
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.expand(x.shape[0], -1, -1))
        return torch.cat(prefix + [x], dim=1) if prefix else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.prepare(images))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# --------------------------------------------------------------------------------------------------
# Loading HF ViT / DINOv2 weights from a local folder
# --------------------------------------------------------------------------------------------------
def read_local_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Load ``model.safetensors`` (preferred) or ``pytorch_model.bin`` (``weights_only=True``) from a folder."""
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    if not files:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
    f = files[0]
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(f))
    return torch.load(f, map_location="cpu", weights_only=True)


def encoder_config_from_hf(folder) -> dict:
    """Encoder config values read from a HF ``config.json`` (model_type vit, dinov2 or dinov2_with_registers)."""
    hf = json.loads((Path(folder) / "config.json").read_text())
    mt = hf.get("model_type", "vit")
    out = dict(dim=hf["hidden_size"], depth=hf["num_hidden_layers"], heads=hf["num_attention_heads"],
               patch_size=hf["patch_size"], ln_eps=hf.get("layer_norm_eps", 1e-12), qkv_bias=hf.get("qkv_bias", True),
               pos_grid=hf["image_size"] // hf["patch_size"])
    if mt == "vit":
        out["mlp_ratio"] = hf["intermediate_size"] / hf["hidden_size"]
    else:
        out["mlp_ratio"] = hf.get("mlp_ratio", 4)
        out["layer_scale"] = hf.get("layerscale_value", 1.0)
        out["num_register_tokens"] = hf.get("num_register_tokens", 0)
        if hf.get("use_swiglu_ffn"):
            raise ValueError("DINOv2 checkpoints with SwiGLU feed-forward (giant) are not supported")
    return out


def map_hf_vit_keys(sd: Dict[str, torch.Tensor], model_type: str) -> Dict[str, torch.Tensor]:
    """HF ViT/DINOv2 state dict -> ImageEncoder state dict (prefixes ``vit.``/``dinov2.``/``model.`` dropped)."""
    out = {}
    for k, v in sd.items():
        for p in ("vit.", "dinov2.", "model."):
            if k.startswith(p):
                k = k[len(p):]
        if k.startswith(("pooler.", "embeddings.mask_token", "classifier.")):
            continue
        r = k
        r = r.replace("embeddings.patch_embeddings.projection", "patch_embed")
        r = r.replace("embeddings.cls_token", "cls_token").replace("embeddings.position_embeddings", "pos_embed")
        r = r.replace("embeddings.register_tokens", "register_tokens")
        if r.startswith("layernorm."):
            r = "norm." + r[len("layernorm."):]
        r = r.replace("encoder.layer.", "blocks.")
        r = r.replace("attention.attention.query", "attn.to_q").replace("attention.attention.key", "attn.to_k")
        r = r.replace("attention.attention.value", "attn.to_v").replace("attention.output.dense", "attn.to_out")
        if model_type == "vit":
            r = r.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
            r = r.replace("intermediate.dense", "mlp.fc1").replace("output.dense", "mlp.fc2")
        else:
            r = r.replace("layer_scale1.lambda1", "ls1.gamma").replace("layer_scale2.lambda1", "ls2.gamma")
        out[r] = v
    return out


def load_pretrained(encoder: ImageEncoder, folder) -> None:
    """Load HF ViT/DINOv2 weights from a local folder into ``encoder``; any mismatch is an error."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"encoder.pretrained_path does not exist: {folder} (weights are never downloaded)")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "vit") \
        if (folder / "config.json").is_file() else "vit"
    sd = map_hf_vit_keys(read_local_state_dict(folder), model_type)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"pretrained encoder at {folder} does not fit encoder config: missing={missing[:5]} "
                         f"unexpected={unexpected[:5]} shape mismatches={shapes[:5]}")
    encoder.load_state_dict(sd)
    log.info("image encoder: loaded %s weights from %s", model_type, folder)
