"""Stage 2 — camera conditioning: the input camera as a vector the transformer is modulated by.

The camera (flattened top 3x4 of the canonical c2w + normalised intrinsics = 16 numbers, see
``lrm.cameras.camera_vector``) goes through a 2-layer MLP. Each LayerNorm in the triplane transformer
then turns this embedding into a per-channel shift and scale (adaLN, as in OpenLRM's ``ModLN``):
``LN(x) * (1 + scale) + shift``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

CAMERA_VECTOR_DIM = 16


class CameraEmbedder(nn.Module):
    def __init__(self, embed_dim: int, in_dim: int = CAMERA_VECTOR_DIM):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, cam: torch.Tensor) -> torch.Tensor:
        return self.net(cam)


class ModulatedNorm(nn.Module):
    """LayerNorm, optionally followed by adaLN modulation from a conditioning vector.

    The modulation projection starts at zero so an untrained model behaves like plain pre-norm.
    """

    def __init__(self, dim: int, eps: float, cond_dim: int | None):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mod = None
        if cond_dim:
            self.mod = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
            nn.init.zeros_(self.mod[1].weight)
            nn.init.zeros_(self.mod[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.mod is None:
            return x
        if cond is None:
            raise ValueError("this model is camera-conditioned: pass the input camera")
        shift, scale = self.mod(cond).unsqueeze(1).chunk(2, dim=-1)
        return x * (1 + scale) + shift
