"""Training losses: RGB MSE, mask (opacity) MSE, optional LPIPS (local weights only), triplane TV."""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

# VGG16 "features" layout (torchvision indices): convs, ReLUs, max-pools. LPIPS taps relu1_2 .. relu5_3.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices of the ReLU outputs LPIPS compares
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS (VGG variant) built in plain torch; weights from ONE local file, never downloaded.

    The file (``.safetensors`` or a torch ``.pt``/``.pth`` state dict) holds torchvision VGG16 keys
    ``features.<i>.weight|bias`` and the LPIPS linear heads ``lin<k>.model.1.weight`` (as the ``lpips``
    package names them). See docs/training.md for a two-line conversion on a machine that has both.
    Inputs in [0, 1], [N, 3, H, W]; returns [N].
    """

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: str) -> None:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        own = {}
        for k, v in sd.items():
            if k.startswith("features."):
                own[k] = v
            elif k.startswith("lin") and k.endswith("model.1.weight"):
                own[f"lins.{int(k[3])}.weight"] = v
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [m for m in missing if m not in ("shift", "scale")]
        if missing:
            raise ValueError(f"LPIPS weights in {path} lack {missing[:4]}...")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = ((x * 2 - 1) - self.shift) / self.scale
        y = ((y * 2 - 1) - self.shift) / self.scale
        h = torch.cat([x, y])
        total = 0.0
        lin_i = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                a, b = h.chunk(2)
                a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[lin_i]((a - b) ** 2).mean(dim=(1, 2, 3))
                lin_i += 1
                if lin_i == len(_TAPS):
                    break
        return total


def load_lpips(path: Optional[str]) -> Optional[LPIPS]:
    """The LPIPS module, or None (with one warning) when ``path`` is unset or missing."""
    if not path or not os.path.isfile(str(path)):
        log.warning("LPIPS disabled: weights file %r not found (set train.loss.lpips_path); no download is tried",
                    path)
        return None
    m = LPIPS()
    m.load_weights(str(path))
    return m


def tv_loss(triplanes: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring triplane cells, [B, 3, C, H, W] -> scalar."""
    dh = triplanes[..., 1:, :] - triplanes[..., :-1, :]
    dw = triplanes[..., :, 1:] - triplanes[..., :, :-1]
    return dh.pow(2).mean() + dw.pow(2).mean()


def occupancy_bce(density: torch.Tensor, inside: torch.Tensor, step: float) -> torch.Tensor:
    """BCE between the opacity ``1 - exp(-density * step)`` of a fixed step length and 0/1 labels, in a stable
    form: outside costs ``density * step``, inside ``-log(1 - exp(-density * step))``."""
    x = (density.float() * step).clamp_min(1e-6)
    inside = inside.float()
    return (inside * -torch.log(-torch.expm1(-x)) + (1 - inside) * x).mean()


def depth_l1(depth: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |depth - target| over foreground rays (target mask > 0.5 and a target depth); 0 when none."""
    fg = (mask > 0.5) & (target > 0)
    if not bool(fg.any()):
        return depth.sum() * 0.0
    return (depth.float() - target.float()).abs()[fg].mean()


def input_depth_offsets(depth: torch.Tensor, intrinsics: torch.Tensor, size: int, distance: float, radius: float,
                        fov_deg: float):
    """The input view's ray-distance depth [B, S, S] (0 off the object) and intrinsics [B, 4] -> (offset, weight), each
    [B, size, size] on the pixel plane's grid (the canonical camera's image plane, lrm/models/pixel_plane.py): the depth
    offset (z - distance) / radius that the decoder reads for a point, averaged over the object's pixels, and the
    fraction of each plane cell the object covers."""
    from ..cameras import camera_directions, pixel_grid
    from ..models.pixel_plane import canonical_grid

    b, s = depth.shape[0], depth.shape[-1]
    d = depth.float()
    dirs = camera_directions(pixel_grid(s, s, device=d.device).expand(b, -1, -1), intrinsics.float(), s, s)
    z = d / dirs.norm(dim=-1).view(b, s, s)  # ray distance -> depth along the camera axis
    valid = (d > 0).float()
    grid = canonical_grid(intrinsics.float(), size, fov_deg)
    both = torch.stack([(z - distance) / radius * valid, valid], 1)
    num, weight = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False).unbind(1)
    return num / weight.clamp_min(1e-6), weight


def input_depth_l1(predicted: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean |predicted - offset| over plane cells mostly on the object (weight > 0.5); 0 when there are none."""
    fg = weight > 0.5
    if not bool(fg.any()):
        return predicted.sum() * 0.0
    return (predicted.float() - offset).abs()[fg].mean()


def point_terms(out: Dict[str, torch.Tensor], targets: Dict, lcfg) -> Dict[str, torch.Tensor]:
    """Unweighted 3D-supervision and depth terms for the weights in ``lcfg`` that are on."""
    terms: Dict[str, torch.Tensor] = {}
    n = int(targets.get("n_occupancy") or 0)
    if float(lcfg.get("occupancy", 0)) > 0 and n > 0:
        terms["occupancy"] = occupancy_bce(out["point_density"][:, :n], targets["occupancy"], targets["point_step"])
    if float(lcfg.get("surface_rgb", 0)) > 0 and targets.get("surface_rgb") is not None:
        terms["surface_rgb"] = F.mse_loss(out["point_rgb"][:, n:].float(), targets["surface_rgb"].float())
    if float(lcfg.get("depth", 0)) > 0 and targets.get("depth") is not None:
        terms["depth"] = depth_l1(out["depth"], targets["depth"], targets["mask"])
    if float(lcfg.get("input_depth", 0)) > 0 and targets.get("input_depth") is not None:
        terms["input_depth"] = input_depth_l1(targets["predicted_input_depth"], *targets["input_depth"])
    return terms


def compute_losses(out: Dict[str, torch.Tensor], target_rgb, target_mask, lcfg, triplanes=None,
                   lpips_model: Optional[LPIPS] = None, patch: int = 0,
                   targets: Optional[Dict] = None) -> Dict[str, torch.Tensor]:
    """Weighted loss terms; ``out`` holds rgb [B, N, 3] and opacity [B, N] (and depth, point_density,
    point_rgb for the 3D terms); ``targets`` the 3D/depth targets; ``total`` is the weighted sum."""
    terms: Dict[str, torch.Tensor] = {}
    rgb = out["rgb"].float()
    terms["rgb"] = F.mse_loss(rgb, target_rgb)
    terms["mask"] = F.mse_loss(out["opacity"].float(), target_mask)
    total = float(lcfg.rgb) * terms["rgb"] + float(lcfg.mask) * terms["mask"]
    if lpips_model is not None and float(lcfg.lpips) > 0 and patch >= 16:
        n = rgb.shape[0] * rgb.shape[1] // (patch * patch)
        to_img = lambda t: t.reshape(n, patch, patch, 3).permute(0, 3, 1, 2)
        terms["lpips"] = lpips_model(to_img(rgb), to_img(target_rgb)).mean()
        total = total + float(lcfg.lpips) * terms["lpips"]
    if triplanes is not None and float(lcfg.tv) > 0:
        terms["tv"] = tv_loss(triplanes.float())
        total = total + float(lcfg.tv) * terms["tv"]
    for k, v in point_terms(out, dict(targets or {}, mask=target_mask), lcfg).items():
        terms[k] = v
        total = total + float(lcfg[k]) * v
    terms["total"] = total
    return terms
