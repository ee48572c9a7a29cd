"""Stage 2 — camera conditioning: the input camera as a vector the transformer is modulated by.

The camera (flattened top 3x4 of the canonical c2w + normalised intrinsics = 16 numbers, see
``lrm.cameras.camera_vector``) goes through a 2-layer MLP. Each LayerNorm in the triplane transformer
then turns this embedding into a per-channel shift and scale (adaLN, as in OpenLRM's ``ModLN``):
``LN(x) * (1 + scale) + shift``. With several input views this is the first view's camera (the one that defines
the canonical frame).

Multi-view models (``transformer.multiview``) also give every view's camera a place on its own image tokens:
``ViewEmbedder`` maps each view's camera vector (canonical frame, i.e. relative to the first view) to one vector
added to all of that view's tokens. Its last layer starts at zero, so a new multi-view model treats its views
as the one-view model would until training says otherwise.
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


class ViewEmbedder(nn.Module):
    """Per-view camera embedding: cameras [B, V, 16] -> [B, V, 1, out_dim], to add to each view's tokens."""

    def __init__(self, hidden_dim: int, out_dim: int, in_dim: int = CAMERA_VECTOR_DIM):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, cameras: torch.Tensor) -> torch.Tensor:
        return self.net(cameras).unsqueeze(-2)


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
