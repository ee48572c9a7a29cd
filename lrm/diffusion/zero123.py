"""The public Zero-1-to-3 / zero123-xl weights, loaded from a local folder in diffusers layout, as a ``ViewPrior``.

The folder is what ``huggingface-cli download ashawkey/zero123-xl-diffusers`` (or ``bennyguo/zero123-xl-diffusers``,
``bennyguo/zero123-diffusers``) writes; docs/pretrained.md says how to get it onto a machine::

    model_index.json                 (not needed)
    unet/                            UNet2DConditionModel, 8 input channels = 4 noisy latent + 4 input-image latent
    vae/                             AutoencoderKL (SD 1.x, scaling factor 0.18215)
    image_encoder/                   CLIPVisionModelWithProjection (CLIP ViT-L/14, 768-d image embedding)
    clip_camera_projection/          Linear(768 + 4 -> 768): config.json {embedding_dim, additional_embeddings}
                                     + diffusion_pytorch_model.safetensors {proj.weight, proj.bias}
                                     (``cc_projection/`` of diffusers' community pipeline is accepted too)
    scheduler/scheduler_config.json  DDIM / PNDM config: the training noise schedule and prediction type
    feature_extractor/               CLIP image-processor config: mean / std (optional; CLIP's are the default)

Only JSON and ``.safetensors`` are read; a folder whose weights are only pickles (``*.bin``, ``*.ckpt``) is refused.

How the model is driven (facts from the Zero-1-to-3 reference code, ``gradio_new.py`` / ``ldm/models/diffusion``,
and the diffusers ports used by threestudio and DreamGaussian):

* Sample space: SD latents, ``x0 = VAE.encode(2 rgb - 1).mean * scaling_factor`` of the 256² view (32² latents).
* Cross-attention context (one token): ``clip_camera_projection([CLIP image embedding, camera 4-vector])``. The CLIP
  input is the 256² input view resized to 224² (bicubic, ``align_corners=True``, no antialiasing, as the reference's
  kornia resize) and normalised with CLIP's mean / std; the embedding is ``image_embeds`` (after the visual projection).
* Concatenated on channels: the input view's latent ``VAE.encode(2 rgb - 1).mode()`` **without** the scaling factor
  (Zero-1-to-3 was trained that way).
* Camera 4-vector: ``[Δpolar (rad), sin Δazimuth, cos Δazimuth, Δradius]`` with polar = 90° − elevation, azimuth
  ``atan2(y, x)`` about +Z (the project's orbit convention), Δ = target − input. The project's ``relative_camera``
  gives Δelevation, so the first entry is negated here (``zero123_camera``): a target *above* the input has a
  *negative* Δpolar.
* Unconditional branch (CFG): a zero cross-attention context and a zero concat latent, as every public sampler does
  (``uncond="zero_context"``). Training dropped the image differently — the CLIP embedding was zeroed *before* the
  projection, so the camera still entered — which ``uncond="null_image"`` reproduces.
* Prediction type from the scheduler config (``epsilon`` for all public Zero-1-to-3 weights); ``v_prediction`` and
  ``sample`` are converted to ε̂ here.

diffusers / transformers are imported lazily (the ``diffusion`` extra).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lrm.diffusion.prior import Condition

#: OpenAI CLIP's normalisation (also what the public folders' feature_extractor/preprocessor_config.json holds)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: subfolders a Zero-1-to-3 folder must have (the camera projection may also be called cc_projection)
REQUIRED_PARTS = ("unet", "vae", "image_encoder", "clip_camera_projection", "scheduler")
PROJECTION_DIRS = ("clip_camera_projection", "cc_projection")
UNCOND_MODES = ("zero_context", "null_image")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class Zero123FolderError(ValueError):
    """A Zero-1-to-3 folder whose content cannot be used (pickle-only weights, inconsistent configs...)."""


# --------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------
def zero123_camera(rel_camera: Tensor) -> Tensor:
    """The project's relative camera ``[Δelevation (rad), sin Δaz, cos Δaz, Δdistance]`` (``prior.relative_camera``)
    → Zero-1-to-3's ``[Δpolar (rad), sin Δaz, cos Δaz, Δradius]``: polar = 90° − elevation, so Δpolar = −Δelevation;
    azimuth (atan2(y, x) about +Z) and distance are the same in both conventions."""
    if rel_camera.shape[-1] != 4:
        raise ValueError(f"relative camera must end in 4 values, got shape {tuple(rel_camera.shape)}")
    return torch.cat([-rel_camera[..., :1], rel_camera[..., 1:]], dim=-1)


def eps_from_prediction(pred: Tensor, x_t: Tensor, alpha_bar: Tensor, prediction_type: str) -> Tensor:
    """ε̂ from a model output of ``prediction_type`` at ``x_t = sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε``; ``alpha_bar`` broadcasts
    against ``x_t`` (e.g. [N, 1, 1, 1]). v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x0 ⇒ ε = sqrt(ᾱ) v + sqrt(1 − ᾱ) x_t."""
    if prediction_type == "epsilon":
        return pred
    a, s = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return a * pred + s * x_t
    if prediction_type == "sample":
        return (x_t - a * pred) / s
    raise ValueError(f"unknown prediction_type {prediction_type!r} ({' | '.join(PREDICTION_TYPES)})")


def resize_square(rgb: Tensor, size: int) -> Tensor:
    """[N, 3, H, W] → [N, 3, size, size] (bilinear, antialiased when shrinking); unchanged if already that size."""
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W], got shape {tuple(rgb.shape)}")
    if rgb.shape[-2:] == (size, size):
        return rgb
    return F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def clip_preprocess(rgb: Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """[N, 3, H, W] in [0, 1] → CLIP pixel values: bicubic resize to ``size``² with ``align_corners=True`` and no
    antialiasing (the Zero-1-to-3 reference's kornia resize), then ``(x − mean) / std``."""
    x = F.interpolate(rgb, size=(size, size), mode="bicubic", align_corners=True)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def alphas_cumprod_from_config(config: dict) -> Tensor:
    """ᾱ_t [num_train_timesteps] float32 of a diffusers scheduler config (the betas of its training schedule)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    return DDPMScheduler(**{k: config[k] for k in keys if config.get(k) is not None}).alphas_cumprod.float()


# --------------------------------------------------------------------------------------------------
# folder checks (before any weights are touched)
# --------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Zero123FolderError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(out, dict):
        raise Zero123FolderError(f"{path}: expected a JSON object")
    return out


def _check_weights(part: Path) -> None:
    """A model subfolder needs config.json and at least one .safetensors file; pickles are never loaded."""
    if not (part / "config.json").is_file():
        raise FileNotFoundError(f"{part}: missing config.json")
    if any(part.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in part.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise Zero123FolderError(
            f"{part}: only pickle weights ({', '.join(pickles)}); they are not loaded (unpickling runs code). "
            "Download the .safetensors files instead (docs/pretrained.md)")
    raise FileNotFoundError(f"{part}: no .safetensors weights")


def check_zero123_folder(path) -> dict:
    """Validate the layout of a Zero-1-to-3 diffusers folder; returns ``{part: Path}`` (``projection`` names the
    camera-projection folder). Raises FileNotFoundError / Zero123FolderError with one line naming what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Zero-1-to-3 folder not found: {root}")
    proj = next((root / d for d in PROJECTION_DIRS if (root / d).is_dir()), None)
    missing = [p for p in REQUIRED_PARTS if p != "clip_camera_projection" and not (root / p).is_dir()]
    if proj is None:
        missing.insert(3, "clip_camera_projection")
    if missing:
        raise FileNotFoundError(f"{root} is not a Zero-1-to-3 diffusers folder: missing subfolder(s) "
                                f"{', '.join(m + '/' for m in missing)}")
    parts = {"unet": root / "unet", "vae": root / "vae", "image_encoder": root / "image_encoder",
             "projection": proj, "scheduler": root / "scheduler"}
    for name in ("unet", "vae", "image_encoder", "projection"):
        _check_weights(parts[name])
    if not (parts["scheduler"] / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"{parts['scheduler']}: missing scheduler_config.json")
    fe = root / "feature_extractor" / "preprocessor_config.json"
    parts["feature_extractor"] = fe if fe.is_file() else None
    return parts


def _load_projection(folder: Path, dtype) -> torch.nn.Linear:
    """The camera projection Linear from its config + safetensors (``proj.*`` or the community ``projection.*``)."""
    from safetensors.torch import load_file

    cfg = _read_json(folder / "config.json")
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if f.name == "diffusion_pytorch_model.safetensors"]
    sd = load_file(str((plain or files)[0]))
    prefix = next((p for p in ("proj.", "projection.") if f"{p}weight" in sd), None)
    if prefix is None or set(sd) != {f"{prefix}weight", f"{prefix}bias"}:
        raise Zero123FolderError(f"{folder}: expected tensors proj.weight and proj.bias, found {sorted(sd)}")
    w, b = sd[f"{prefix}weight"], sd[f"{prefix}bias"]
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise Zero123FolderError(f"{folder}: projection weight {tuple(w.shape)} / bias {tuple(b.shape)} do not match")
    if "embedding_dim" in cfg:  # CLIPCameraProjection(embedding_dim, additional_embeddings)
        want = (int(cfg["embedding_dim"]), int(cfg["embedding_dim"]) + int(cfg.get("additional_embeddings", 4)))
    elif "in_channel" in cfg:  # community CCProjection(in_channel, out_channel)
        want = (int(cfg["out_channel"]), int(cfg["in_channel"]))
    else:
        want = tuple(w.shape)
    if tuple(w.shape) != want:
        raise Zero123FolderError(f"{folder}: weight shape {tuple(w.shape)} disagrees with config.json ({want})")
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin.to(dtype)


# --------------------------------------------------------------------------------------------------
# the prior
# --------------------------------------------------------------------------------------------------
class Zero123Prior:
    """Zero-1-to-3 behind ``lrm.diffusion.prior.ViewPrior``. Build it with ``load_zero123``.

    Inputs are float RGB in [0, 1]; outputs (latents, ε̂, images) are float32 whatever the weights' dtype.
    The networks are frozen (``requires_grad=False``, eval mode); ``encode`` keeps the autograd graph so SDS
    gradients reach the rendered image; ``condition`` runs without gradients.
    """

    joint_views = False  # each view is denoised on its own (lrm/diffusion/prior.py, jointly denoised views)

    def __init__(self, unet, vae, image_encoder, projection, scheduler_config: dict, *, clip_mean=CLIP_MEAN,
                 clip_std=CLIP_STD, uncond: str = "zero_context", source: Optional[str] = None):
        if uncond not in UNCOND_MODES:
            raise ValueError(f"unknown uncond {uncond!r} ({' | '.join(UNCOND_MODES)})")
        self.unet, self.vae, self.image_encoder, self.projection = unet, vae, image_encoder, projection
        for m in (unet, vae, image_encoder, projection):
            m.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type") or "epsilon"
        if self.prediction_type not in PREDICTION_TYPES:
            raise Zero123FolderError(f"scheduler prediction_type {self.prediction_type!r} is not supported "
                                     f"({' | '.join(PREDICTION_TYPES)})")
        self.uncond = uncond
        self.source = source
        self.clip_mean, self.clip_std = tuple(clip_mean), tuple(clip_std)
        self.clip_size = int(image_encoder.config.image_size)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = int(unet.config.sample_size) * self.vae_scale
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.alphas_cumprod = alphas_cumprod_from_config(self.scheduler_config).to(self.device)
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self._check_wiring()

    def _check_wiring(self) -> None:
        ucfg = self.unet.config
        if ucfg.in_channels != 2 * self.latent_channels or ucfg.out_channels != self.latent_channels:
            raise Zero123FolderError(
                f"unet has {ucfg.in_channels} input / {ucfg.out_channels} output channels; Zero-1-to-3 needs "
                f"{2 * self.latent_channels} (noisy latent + input-image latent) / {self.latent_channels}")
        emb = int(self.image_encoder.config.projection_dim)
        if self.projection.in_features != emb + 4 or self.projection.out_features != ucfg.cross_attention_dim:
            raise Zero123FolderError(
                f"camera projection maps {self.projection.in_features} -> {self.projection.out_features}; expected "
                f"CLIP embedding {emb} + 4 camera values -> unet cross_attention_dim {ucfg.cross_attention_dim}")

    # ---- ViewPrior -------------------------------------------------------------------------------
    def _pixels(self, rgb: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] → [N, 3, R, R] in [-1, 1] in the weights' dtype, on the device."""
        x = resize_square(rgb.to(self.device, torch.float32), self.resolution)
        return (x * 2.0 - 1.0).to(self.dtype)

    def encode(self, rgb: Tensor) -> Tensor:
        """RGB [N, 3, H, W] in [0, 1] → scaled latents [N, 4, R/8, R/8]: VAE posterior mean × scaling factor."""
        return self.vae.encode(self._pixels(rgb)).latent_dist.mean.float() * self.scaling_factor

    def decode(self, x0: Tensor) -> Tensor:
        """Scaled latents → RGB [N, 3, R, R] in [0, 1]."""
        z = (x0.to(self.device, torch.float32) / self.scaling_factor).to(self.dtype)
        return ((self.vae.decode(z).sample.float() + 1.0) * 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def condition(self, image: Tensor) -> Condition:
        """Input view(s) [B, 3, H, W] in [0, 1] (object on white) → CLIP image embedding [B, 1, D] and the
        unscaled input latent [B, 4, R/8, R/8] (``extras["clip_embedding"]``, ``extras["image_latent"]``)."""
        x = resize_square(image.to(self.device, torch.float32), self.resolution)
        pix = clip_preprocess(x, self.clip_size, self.clip_mean, self.clip_std).to(self.dtype)
        emb = self.image_encoder(pixel_values=pix).image_embeds[:, None, :]
        lat = self.vae.encode((x * 2.0 - 1.0).to(self.dtype)).latent_dist.mode()
        return Condition(image=image, extras={"clip_embedding": emb, "image_latent": lat})

    def context(self, cond: Optional[Condition], rel_camera: Tensor, n: int):
        """(cross-attention context [n, 1, D], concat latent [n, 4, h, w]) of a condition (None: unconditional)
        for project-convention relative cameras [n, 4] (or [4])."""
        cam = zero123_camera(rel_camera.to(self.device, torch.float32)).reshape(-1, 4)
        if cam.shape[0] not in (1, n):
            raise ValueError(f"{cam.shape[0]} relative cameras for {n} samples (give 1 or {n})")
        cam = cam.expand(n, 4).to(self.dtype)
        h = w = self.resolution // self.vae_scale
        if cond is None:
            lat = torch.zeros(n, self.latent_channels, h, w, device=self.device, dtype=self.dtype)
            if self.uncond == "zero_context":
                return torch.zeros(n, 1, self.projection.out_features, device=self.device, dtype=self.dtype), lat
            emb = torch.zeros(n, 1, self.projection.in_features - 4, device=self.device, dtype=self.dtype)
        else:
            emb, lat = _expand(cond.extras["clip_embedding"], n), _expand(cond.extras["image_latent"], n)
            emb, lat = emb.to(self.device, self.dtype), lat.to(self.device, self.dtype)
        return self.projection(torch.cat([emb, cam[:, None, :]], dim=-1)), lat

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Optional[Condition], rel_camera: Tensor,
                      num_views: int = 1) -> Tensor:
        """ε̂ [N, 4, h, w] (float32) for scaled latents ``x_t`` at integer timesteps ``t`` [N] (or a scalar), target
        cameras ``rel_camera`` [N, 4] relative to the input view (``relative_camera``); ``cond=None``: unconditional.
        Zero-1-to-3 denoises each view on its own: ``num_views`` must be 1 (``joint_views`` is False)."""
        if int(num_views) != 1:
            raise ValueError("Zero-1-to-3 denoises views independently: num_views must be 1")
        n, h = x_t.shape[0], self.resolution // self.vae_scale
        if tuple(x_t.shape[1:]) != (self.latent_channels, h, h):
            raise ValueError(f"x_t must be latents [N, {self.latent_channels}, {h}, {h}], got {tuple(x_t.shape)}")
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(n)
        ctx, lat = self.context(cond, rel_camera, n)
        x = x_t.to(self.device, torch.float32)
        out = self.unet(torch.cat([x.to(self.dtype), lat], dim=1), t, encoder_hidden_states=ctx).sample.float()
        return eps_from_prediction(out, x, self.alphas_cumprod[t].view(n, 1, 1, 1), self.prediction_type)

    def __repr__(self) -> str:
        return (f"Zero123Prior({self.source or '?'}, resolution={self.resolution}, device={self.device}, "
                f"dtype={self.dtype}, prediction_type={self.prediction_type}, uncond={self.uncond})")


def _expand(x: Tensor, n: int) -> Tensor:
    if x.shape[0] == n:
        return x
    if x.shape[0] == 1:
        return x.expand(n, *x.shape[1:])
    raise ValueError(f"condition holds {x.shape[0]} images but {n} samples were asked for (use 1 or {n})")


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
def load_zero123(path, device="cpu", dtype: Optional[torch.dtype] = None, uncond: str = "zero_context"
                 ) -> Zero123Prior:
    """Load a Zero-1-to-3 / zero123-xl folder in diffusers layout (module docstring) as a ``Zero123Prior``.

    Reads only JSON and ``.safetensors`` (``use_safetensors=True, local_files_only=True``: nothing is downloaded,
    nothing unpickled). ``dtype`` defaults to float32 (the public files are fp16; float16 is for GPUs).
    """
    parts = check_zero123_folder(path)
    dtype = dtype or torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if uncond not in UNCOND_MODES:
        raise ValueError(f"unknown uncond {uncond!r} ({' | '.join(UNCOND_MODES)})")
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPVisionModelWithProjection
    except ImportError as e:  # the `diffusion` extra
        raise ImportError(f"the Zero-1-to-3 prior needs diffusers and transformers: pip install -e '.[diffusion]' "
                          f"({e})") from None

    def _diffusers(cls, folder):
        return cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True, torch_dtype=dtype)

    def _transformers(cls, folder):
        import transformers

        kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        return cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True, **{kw: dtype})

    scheduler_config = _read_json(parts["scheduler"] / "scheduler_config.json")
    fe = _read_json(parts["feature_extractor"]) if parts["feature_extractor"] else {}
    unet = _diffusers(UNet2DConditionModel, parts["unet"])
    vae = _diffusers(AutoencoderKL, parts["vae"])
    image_encoder = _transformers(CLIPVisionModelWithProjection, parts["image_encoder"])
    projection = _load_projection(parts["projection"], dtype)
    dev = torch.device(device)
    # already in ``dtype`` (from_pretrained keeps any modules a model wants in float32): only move them
    return Zero123Prior(unet.to(dev), vae.to(dev), image_encoder.to(dev), projection.to(dev), scheduler_config,
                        clip_mean=fe.get("image_mean", CLIP_MEAN), clip_std=fe.get("image_std", CLIP_STD),
                        uncond=uncond, source=str(Path(path)))


__all__ = ["Zero123Prior", "Zero123FolderError", "load_zero123", "check_zero123_folder", "zero123_camera",
           "eps_from_prediction", "clip_preprocess", "resize_square", "alphas_cumprod_from_config", "CLIP_MEAN",
           "CLIP_STD", "UNCOND_MODES"]
