"""The LRM task: one input view -> triplane, supervised by rendered rays of other views (see docs/training.md).

Per object and micro-batch: ``data.num_input_views`` input views -> triplane; ``data.num_views_target``
supervision views, each supervised on ``train.render.rays_per_view`` random pixels or one random
``train.render.patch_size``² patch (plus points / depth when the 3D losses are on). Randomness of the pixel
choice and sample jitter comes from the runner's per-micro-batch generator, so resume is exact.
The loop around it is lrm/training/runner.py; ``task: lrm`` (the default) selects this task.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

import torch
from omegaconf import DictConfig, open_dict

from .. import cameras as cam
from ..checkpoint import save_state_dict
from ..data.batch import check_batch
from .data import VAL_SEED, make_source, resolve_source
from ..image_metrics import mask_iou, psnr
from .losses import compute_losses, input_depth_offsets, load_lpips
from .runner import to_device
from .task import Task

log = logging.getLogger("lrm.train")


# ----------------------------------------------------------------------------------------------- rays
def sample_rays(batch, rcfg, generator: torch.Generator):
    """Pick supervised pixels per view. Returns rays_o, rays_d [B, K*N, 3], rgb [B, K*N, 3], mask [B, K*N],
    the patch side (0 when pixels are scattered) and depth [B, K*N] (None unless the batch has target_depth)."""
    rgb, mask = batch["target_rgb"], batch["target_mask"]
    b, k, h, w, _ = rgb.shape
    dev = rgb.device
    patch = int(rcfg.patch_size)
    n_rays = int(rcfg.rays_per_view)
    if patch > 0:
        patch = min(patch, h, w)
        oy = torch.randint(0, h - patch + 1, (b, k, 1, 1), generator=generator, device=dev)
        ox = torch.randint(0, w - patch + 1, (b, k, 1, 1), generator=generator, device=dev)
        gy, gx = torch.meshgrid(torch.arange(patch, device=dev), torch.arange(patch, device=dev), indexing="ij")
        rows = (oy + gy).reshape(b, k, -1)
        cols = (ox + gx).reshape(b, k, -1)
    elif 0 < n_rays < h * w:
        fg = float(rcfg.get("fg_fraction", 0.0))
        if fg > 0:  # mixture: fg of the rays from foreground pixels, the rest uniform over the image
            m = (mask.reshape(b * k, h * w) > 0.5).float()
            p = (1 - fg) / (h * w) + fg * m / m.sum(-1, keepdim=True).clamp_min(1.0)
            p = torch.where(m.sum(-1, keepdim=True) > 0, p, torch.full_like(p, 1.0 / (h * w)))
            flat = torch.multinomial(p, n_rays, replacement=True, generator=generator).reshape(b, k, n_rays)
        else:
            flat = torch.randint(0, h * w, (b, k, n_rays), generator=generator, device=dev)
        rows, cols = flat // w, flat % w
    else:
        rows = torch.arange(h, device=dev).repeat_interleave(w).expand(b, k, -1)
        cols = torch.arange(w, device=dev).repeat(h).expand(b, k, -1)
    uv = torch.stack([cols, rows], -1).to(batch["target_c2w"].dtype) + 0.5
    rays_o, rays_d = cam.get_rays(batch["target_c2w"], batch["target_intrinsics"], h, w, uv=uv)
    idx = (rows * w + cols).reshape(b, k, -1)
    t_rgb = rgb.reshape(b, k, h * w, 3).gather(2, idx[..., None].expand(-1, -1, -1, 3))
    t_mask = mask.reshape(b, k, h * w).gather(2, idx)
    n = idx.shape[-1]
    t_depth = None
    if "target_depth" in batch:
        t_depth = batch["target_depth"].reshape(b, k, h * w).gather(2, idx).reshape(b, k * n)
    return (rays_o.reshape(b, k * n, 3), rays_d.reshape(b, k * n, 3), t_rgb.reshape(b, k * n, 3),
            t_mask.reshape(b, k * n), patch, t_depth)


class TrainStep(torch.nn.Module):
    """The LRM plus its ray rendering as ONE forward, so DDP / DeepSpeed (ZeRO-3 included) see every
    parameter use inside the wrapped module's forward. State-dict keys get the prefix ``lrm.``.

    ``checkpoint_rays > 0`` renders the rays in chunks of that many per image under activation checkpointing:
    each chunk's samples are re-drawn from a per-chunk seed and its decoder activations recomputed in the
    backward pass, so render memory is one chunk's instead of all rays' (one extra decoder forward)."""

    def __init__(self, lrm: torch.nn.Module, checkpoint_rays: int = 0):
        super().__init__()
        self.lrm = lrm
        self.checkpoint_rays = int(checkpoint_rays)
        self.use_checkpoint = True  # False: same chunks and seeds without recomputation (tests)

    def _chunk(self, tri, rays_o, rays_d, background, seed):
        g = None
        if seed is not None:
            g = torch.Generator(device=rays_o.device)
            g.manual_seed(seed)
        return self.lrm.render_rays(tri, rays_o, rays_d, randomize=True, background=background, generator=g)

    def forward(self, images, cameras, rays_o, rays_d, background, generator=None, points=None):
        """-> (render outputs, triplanes); with ``points`` [B, P, 3] the outputs also hold the field there:
        ``point_density`` [B, P] and ``point_rgb`` [B, P, 3] (3D supervision, no ray marching)."""
        tri = self.lrm(images, cameras)
        out = self._render(tri, rays_o, rays_d, background, generator)
        if points is not None and points.shape[1] > 0:
            q = self.lrm.query(tri, points)
            out = dict(out, point_density=q["density"].reshape(points.shape[:2]), point_rgb=q["rgb"])
        return out, tri

    def _render(self, tri, rays_o, rays_d, background, generator):
        c = self.checkpoint_rays
        if c <= 0 or c >= rays_o.shape[1]:
            return self.lrm.render_rays(tri, rays_o, rays_d, randomize=True, background=background,
                                        generator=generator)
        from torch.utils.checkpoint import checkpoint

        outs = []
        for i in range(0, rays_o.shape[1], c):
            seed = None if generator is None else int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                                                    device=generator.device))
            args = (tri, rays_o[:, i:i + c], rays_d[:, i:i + c], background, seed)
            if self.use_checkpoint and torch.is_grad_enabled():
                outs.append(checkpoint(self._chunk, *args, use_reentrant=False))
            else:
                outs.append(self._chunk(*args))
        return {k: torch.cat([o[k] for o in outs], 1) for k in outs[0]}


def step_losses(step_module, batch: Dict, tcfg, generator: torch.Generator, lpips_model=None, mcfg=None) -> Dict:
    """Loss terms of one micro-batch through a (possibly DDP/DeepSpeed-wrapped) :class:`TrainStep`; ``mcfg`` (the
    ``model`` section) is needed by the input-depth term only."""
    rays_o, rays_d, t_rgb, t_mask, patch, t_depth = sample_rays(batch, tcfg.render, generator)
    parts = [batch[k] for k in ("points", "surface_points") if k in batch]
    points = torch.cat(parts, 1) if parts else None
    out, tri = step_module(batch["input_images"], batch["input_cameras"], rays_o, rays_d,
                           batch["background"][:, None, :], generator, points)
    targets = {"depth": t_depth}
    if float(tcfg.loss.get("input_depth", 0)) > 0:
        targets.update(input_depth_targets(batch, tri, mcfg))
    if points is not None:
        n = batch["points"].shape[1] if "points" in batch else 0
        targets.update(occupancy=batch.get("occupancy"), surface_rgb=batch.get("surface_rgb"),
                       n_occupancy=n, point_step=float(tcfg.points.step))
    return compute_losses(out, t_rgb, t_mask, tcfg.loss, triplanes=tri, lpips_model=lpips_model, patch=patch,
                          targets=targets)


def input_depth_targets(batch: Dict, tri: torch.Tensor, mcfg) -> Dict:
    """What the input-depth term compares (lrm/training/losses.py): pixel-plane channel 3 and the input view's depth
    offsets on the plane's grid."""
    if mcfg is None or not mcfg.pixel_plane.enabled or tri.shape[1] != 4:
        raise ValueError("train.loss.input_depth needs the pixel plane (model.pixel_plane.enabled: true)")
    if "input_depth" not in batch:
        raise ValueError("train.loss.input_depth needs the input view's depth in the batch (shards built with depth)")
    pp = mcfg.pixel_plane
    intr = batch["input_cameras"][:, 0, 12:16]
    offset = input_depth_offsets(batch["input_depth"], intr, tri.shape[-1], float(pp.distance),
                                 float(mcfg.render.radius), float(pp.fov_deg))
    return {"predicted_input_depth": tri[:, 3, 3], "input_depth": offset}


# ----------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model, batch: Dict, resolution: int, n_views: int, triplane=None) -> Dict[str, torch.Tensor]:
    """Full-image renders of the first ``n_views`` supervision views of a fixed batch (no jitter), scored against
    the targets resized to ``resolution`` (returned too, with the triplanes). ``triplane``: render this scene
    instead of the model's reconstruction (e.g. a refined one)."""
    was = model.training
    model.eval()
    try:
        c2w = batch["target_c2w"][:, :n_views]
        intr = batch["target_intrinsics"][:, :n_views]
        tri = model(batch["input_images"], batch["input_cameras"]) if triplane is None else triplane
        out = model.render(tri, c2w, intr, resolution=resolution, randomize=False,
                           background=batch["background"][:, None, :])
    finally:
        model.train(was)
    tgt = batch["target_rgb"][:, :n_views]
    msk = batch["target_mask"][:, :n_views]
    if tgt.shape[2] != resolution:  # compare at the rendered resolution
        b, v, h, w, _ = tgt.shape
        tgt = torch.nn.functional.interpolate(tgt.reshape(b * v, h, w, 3).permute(0, 3, 1, 2), size=resolution,
                                              mode="area").permute(0, 2, 3, 1).reshape(b, v, resolution, resolution, 3)
        msk = torch.nn.functional.interpolate(msk.reshape(b * v, 1, h, w), size=resolution,
                                              mode="area").reshape(b, v, resolution, resolution)
    return {"psnr": psnr(out["rgb"].clamp(0, 1), tgt), "mask_iou": mask_iou(out["opacity"], msk),
            "pred": out["rgb"].clamp(0, 1), "target": tgt, "target_mask": msk, "triplane": tri}


def fixed_val_batch(cfg) -> Dict:
    """The validation batch logged throughout a run: the first batch of the val split (white background), its views
    drawn with ``VAL_SEED`` whatever the run's seed, so that runs of different seeds log comparable numbers."""
    n = int(cfg.train.val_batch_size)
    if resolve_source(cfg) == "synthetic":
        n = min(n, max(1, int(cfg.data.synthetic.num_val_objects)))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.seed = VAL_SEED
    with torch.random.fork_rng():
        torch.manual_seed(VAL_SEED)  # the shard loader's view choice also depends on torch.initial_seed()
        try:
            return make_source(cfg, "val", 0, 1, batch_size=n).get(0)
        except FileNotFoundError as e:  # no val shards (tiny data sets): use training objects, say so
            log.warning("no validation split (%s); validating on the first training batch", e)
            return make_source(cfg, "train", 0, 1, batch_size=n).get(0)


def image_grid(batch: Dict, val: Dict) -> torch.Tensor:
    """[3, H, W] grid: per object, row 1 input views + targets, row 2 blank + predictions."""
    pred, tgt = val["pred"].float().cpu(), val["target"].float().cpu()
    b, v, r = pred.shape[:3]
    inp = batch["input_images"].float().cpu()
    n_in = inp.shape[1]
    inp = torch.nn.functional.interpolate(inp.flatten(0, 1), size=r, mode="area").unflatten(0, (b, n_in))
    rows = []
    for i in range(b):
        rows.append(torch.cat(list(inp[i].permute(0, 2, 3, 1)) + list(tgt[i]), 1))
        rows.append(torch.cat([torch.ones(r, n_in * r, 3)] + list(pred[i]), 1))
    return torch.cat(rows, 0).permute(2, 0, 1).clamp(0, 1)


class LRMTask(Task):
    """The triplane LRM (lrm/models): model section ``model.*`` (lrm/config.py), ``data.*`` / ``train.*``
    defaults in lrm/training/defaults.py."""

    name = "lrm"
    export_prefix = "lrm."  # TrainStep's state-dict keys
    image_tag = "val/input_target_prediction"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.lpips_model = None
        self._last_val = None  # (batch, validate() output) for validation_image

    def apply_defaults(self, cfg: DictConfig) -> DictConfig:
        from .defaults import apply_lrm_defaults

        return apply_lrm_defaults(cfg)

    def resolve_config(self, cfg: DictConfig) -> None:
        with open_dict(cfg):
            cfg.data.source = resolve_source(cfg)  # "auto" decided once, recorded in the run's config

    def build_model(self) -> torch.nn.Module:
        from ..models import build_model

        return build_model(self.cfg)

    def load_init_weights(self, model, state_dict, source) -> None:
        """Strict, except a one-view checkpoint may start a ``multiview`` model (its zero-initialised view
        embedding stays fresh: the V = 1 output is unchanged); ``train.init_keep`` prefixes keep the model's own
        weights; lrm/checkpoint.py ``load_init_weights``."""
        from ..checkpoint import CheckpointError, load_init_weights

        try:
            load_init_weights(model, state_dict, source, keep=tuple(self.cfg.train.get("init_keep", None) or ()))
        except CheckpointError as e:
            theirs, mine = encoder_kind_of(source), self.cfg.model.encoder.get("kind", "vit")
            if theirs is None or theirs == mine:
                raise
            raise CheckpointError(f"{e} -- its image encoder is {theirs} and this config's is {mine}: add "
                                  f"model.encoder.kind={theirs} (or train.init_keep=[encoder.] to start a new "
                                  "encoder under its other weights)") from None

    def wrap_for_training(self, model: torch.nn.Module) -> torch.nn.Module:
        return TrainStep(model, int(self.cfg.train.render.checkpoint_rays))

    def build_source(self, split: str, rank: int, world: int, position: int = 0):
        return make_source(self.cfg, split, rank, world)

    def check_batch(self, batch: Dict) -> Optional[str]:
        return check_batch(batch)

    def build_loss(self, device: torch.device) -> None:
        lcfg = self.cfg.train.loss
        self.lpips_model = load_lpips(lcfg.lpips_path) if float(lcfg.lpips) > 0 else None
        if self.lpips_model is not None:
            self.lpips_model.to(device)

    def step_losses(self, module: torch.nn.Module, batch: Dict, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        return step_losses(module, batch, self.cfg.train, generator, self.lpips_model, self.cfg.model)

    def validation_batch(self, device: torch.device) -> Optional[Dict]:
        return to_device(fixed_val_batch(self.cfg), device)

    def validate(self, model: torch.nn.Module, batch: Dict) -> Dict[str, float]:
        tcfg = self.cfg.train
        out = validate(model, batch, int(tcfg.val_resolution or self.cfg.data.image_size), int(tcfg.val_views))
        self._last_val = (batch, out)
        return {"psnr": float(out["psnr"]), "mask_iou": float(out["mask_iou"])}

    def validation_image(self, model: torch.nn.Module, batch: Dict) -> Optional[torch.Tensor]:
        if self._last_val is None or self._last_val[0] is not batch:
            self.validate(model, batch)
        out, self._last_val = self._last_val[1], None
        return image_grid(batch, out)

    def export(self, state_dict: Dict[str, torch.Tensor], out_dir: Path) -> None:
        save_state_dict(state_dict, self.cfg, out_dir)


def encoder_kind_of(model_dir) -> Optional[str]:
    """``model.encoder.kind`` of an exported model folder's config.yaml (``vit`` when unset); None if unreadable."""
    import yaml

    try:
        raw = yaml.safe_load((Path(model_dir) / "config.yaml").read_text())
        return str(((raw.get("model") or {}).get("encoder") or {}).get("kind") or "vit")
    except (OSError, yaml.YAMLError, AttributeError, TypeError):
        return None
