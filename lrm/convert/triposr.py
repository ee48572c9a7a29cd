"""Import TripoSR checkpoints (MIT licence, github.com/VAST-AI-Research/TripoSR) into this project's LRM.

TripoSR is the same kind of model as ours (ViT image tokens -> triplane transformer -> upsampled triplane ->
NeRF MLP -> volume rendering), with a fixed input camera. Everything where it differs is a config option of
our modules (see ``config_from_triposr``), so a converted checkpoint is an ordinary checkpoint folder
(``model.safetensors`` + ``config.yaml``, ``lrm.checkpoint.load_checkpoint``) that inference, evaluation and
training use like any other.

What the conversion does:

* config: TripoSR's ``config.yaml`` (+ the ViT's HF ``config.json``; ViT-B/16 ``facebook/dino-vitb16`` is
  built in) -> our config tree, including the renderer rules TripoSR was trained with (128 midpoint samples,
  constant step 1/128, box margin 1e-3, minimum ray length 0.01, ``exp`` density with bias -1, white
  background) and its camera (distance 1.9, vertical FoV 40°, input composited on grey 0.5);
* weights: every key is renamed (table ``KEY_PAIRS``); ``tokenizer.embeddings`` [3, C, P, P] becomes our
  token table [3·P·P, C] (plane-major, row, column: the order both models flatten in); the ViT pooler,
  which TripoSR builds but never uses, is dropped. Any missing, unexpected, mis-shaped, non-float or
  non-finite tensor is refused with a message that names it, in TripoSR's key names.

Cameras: TripoSR's ``c2w`` are OpenGL-style (x right, y up, looking down -z); ours are OpenCV. Its spherical
cameras are exactly ``lrm.cameras.orbit_camera`` (same azimuth origin +X, z-up, look-at origin), so nothing
needs converting at render time; ``triposr_cameras`` gives them (and ``lrm.cameras.opengl_to_opencv``
converts a TripoSR ``c2w`` if you have one). See docs/pretrained.md.

CLI: ``python -m lrm.convert.triposr CKPT CONFIG OUT_DIR [--vit-config config.json]``.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError
from ..outdir import OutputExistsError

log = logging.getLogger(__name__)

#: ``facebook/dino-vitb16``'s HF config (ViT-B/16 at 224 px), which TripoSR loads its image tokenizer from.
DINO_VITB16 = {
    "model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": 224,
    "patch_size": 16, "num_channels": 3, "qkv_bias": True,
}
KNOWN_VIT_CONFIGS = {"facebook/dino-vitb16": DINO_VITB16}

#: TripoSR's camera and input conventions (its ``TSR.render`` defaults and ``run.py``).
TRIPOSR_CAMERA_DISTANCE = 1.9
TRIPOSR_FOVY_DEG = 40.0
TRIPOSR_FOREGROUND_RATIO = 0.85
TRIPOSR_INPUT_BACKGROUND = (0.5, 0.5, 0.5)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_EXPECTED_CLASSES = {
    "image_tokenizer_cls": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer_cls": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone_cls": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor_cls": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder_cls": "tsr.models.network_utils.NeRFMLP",
    "renderer_cls": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}
# Fields of each config section that this importer understands; anything else is refused (unless
# ``strict=False``) because it might change the numbers.
_KNOWN_FIELDS = {
    "image_tokenizer": {"pretrained_model_name_or_path", "freeze", "enable_gradient_checkpointing"},
    "tokenizer": {"plane_size", "num_channels"},
    "backbone": {"in_channels", "num_attention_heads", "attention_head_dim", "num_layers", "cross_attention_dim",
                 "out_channels", "norm_num_groups", "dropout", "attention_bias", "activation_fn",
                 "gradient_checkpointing"},
    "post_processor": {"in_channels", "out_channels"},
    "decoder": {"in_channels", "n_neurons", "n_hidden_layers", "activation", "bias", "weight_init"},
    "renderer": {"radius", "feature_reduction", "density_activation", "density_bias", "color_activation",
                 "num_samples_per_ray", "randomized"},
}


class TripoSRConversionError(ValueError):
    """The checkpoint or config does not describe a TripoSR model this importer can convert exactly."""


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
def _plain(cfg) -> dict:
    if cfg is None:
        return None
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def _check_fields(tsr: dict, strict: bool) -> None:
    problems = []
    for k in tsr:
        if k in ("cond_image_size",) or k in _EXPECTED_CLASSES or k in _KNOWN_FIELDS:
            continue
        problems.append(k)
    for sec, known in _KNOWN_FIELDS.items():
        problems += [f"{sec}.{k}" for k in (tsr.get(sec) or {}) if k not in known]
    for k, cls in _EXPECTED_CLASSES.items():
        if k in tsr and tsr[k] != cls:
            raise TripoSRConversionError(f"TripoSR config: {k} is {tsr[k]!r}; only {cls!r} is supported")
    if problems:
        msg = f"TripoSR config has fields this importer does not know: {problems}"
        if strict:
            raise TripoSRConversionError(msg + " (pass strict=False / --allow-unknown-config to ignore them)")
        log.warning("%s; ignoring them", msg)


def config_from_triposr(tsr_cfg: dict, vit_cfg: Optional[dict] = None, strict: bool = True) -> DictConfig:
    """Our full config tree (``lrm.config.Config``) for a TripoSR ``config.yaml`` and its ViT's ``config.json``.

    ``vit_cfg`` may be None when the image tokenizer is a ViT whose config is built in
    (``facebook/dino-vitb16``).
    """
    from ..config import Config, merge_configs, check_model_limits

    tsr = _plain(tsr_cfg)
    missing = [k for k in ("cond_image_size", "image_tokenizer", "tokenizer", "backbone", "post_processor",
                           "decoder", "renderer") if k not in tsr]
    if missing:
        raise TripoSRConversionError(f"TripoSR config lacks {missing}")
    _check_fields(tsr, strict)
    if vit_cfg is None:
        name = (tsr.get("image_tokenizer") or {}).get("pretrained_model_name_or_path")
        if name not in KNOWN_VIT_CONFIGS:
            raise TripoSRConversionError(
                f"image tokenizer {name!r}: pass its HF config.json (--vit-config); built in: {list(KNOWN_VIT_CONFIGS)}")
        vit_cfg = KNOWN_VIT_CONFIGS[name]
    vit = _plain(vit_cfg)
    if vit.get("model_type", "vit") != "vit":
        raise TripoSRConversionError(f"image tokenizer model_type {vit.get('model_type')!r}: only 'vit' is supported")
    if vit.get("hidden_act", "gelu") != "gelu":
        raise TripoSRConversionError(f"ViT hidden_act {vit.get('hidden_act')!r}: only exact 'gelu' is supported")
    if vit.get("num_channels", 3) != 3:
        raise TripoSRConversionError("ViT num_channels must be 3")

    tok, bb, post, dec, ren = (tsr[k] for k in ("tokenizer", "backbone", "post_processor", "decoder", "renderer"))
    d_tok = int(tok["num_channels"])
    checks = [
        (bb["in_channels"] == d_tok, f"backbone.in_channels {bb['in_channels']} != tokenizer.num_channels {d_tok}"),
        (bb.get("out_channels") in (None, d_tok), f"backbone.out_channels {bb.get('out_channels')} != {d_tok}"),
        (bb["cross_attention_dim"] == vit["hidden_size"],
         f"backbone.cross_attention_dim {bb['cross_attention_dim']} != ViT hidden_size {vit['hidden_size']}"),
        (post["in_channels"] == d_tok, f"post_processor.in_channels {post['in_channels']} != {d_tok}"),
        (not bb.get("attention_bias", False), "backbone.attention_bias=True is not supported"),
        (bb.get("activation_fn", "geglu") == "geglu", f"backbone.activation_fn {bb.get('activation_fn')!r} != 'geglu'"),
        (dec.get("bias", True), "decoder.bias=False is not supported"),
        (ren.get("color_activation", "sigmoid") == "sigmoid", "renderer.color_activation must be 'sigmoid'"),
        (ren.get("feature_reduction", "concat") in ("concat", "mean"), "renderer.feature_reduction must be concat|mean"),
        (ren.get("density_activation", "trunc_exp") in ("exp", "trunc_exp"), "renderer.density_activation must be exp|trunc_exp"),
        (dec.get("activation", "relu") in ("silu", "relu"), "decoder.activation must be silu|relu"),
    ]
    bad = [m for ok, m in checks if not ok]
    if bad:
        raise TripoSRConversionError("TripoSR config not supported: " + "; ".join(bad))
    agg = ren.get("feature_reduction", "concat")
    c = int(post["out_channels"])
    want_in = 3 * c if agg == "concat" else c
    if dec["in_channels"] != want_in:
        raise TripoSRConversionError(f"decoder.in_channels {dec['in_channels']} != {want_in} ({agg} of {c}-ch planes)")
    if bb.get("dropout", 0.0):
        log.warning("TripoSR backbone dropout %s is not reproduced (our triplane transformer has no dropout)",
                    bb["dropout"])

    model = {
        "encoder": {
            "image_size": int(tsr["cond_image_size"]), "patch_size": int(vit["patch_size"]),
            "dim": int(vit["hidden_size"]), "depth": int(vit["num_hidden_layers"]),
            "heads": int(vit["num_attention_heads"]),
            "mlp_ratio": vit["intermediate_size"] / vit["hidden_size"], "qkv_bias": bool(vit.get("qkv_bias", True)),
            "ln_eps": float(vit.get("layer_norm_eps", 1e-12)), "cls_token": True, "num_register_tokens": 0,
            "layer_scale": None, "pos_grid": int(vit["image_size"]) // int(vit["patch_size"]),
            "pos_interp": "bicubic_legacy", "normalize_mean": IMAGENET_MEAN, "normalize_std": IMAGENET_STD,
            "pretrained_path": None,
        },
        "transformer": {
            "token_dim": d_tok, "heads": int(bb["num_attention_heads"]), "head_dim": int(bb["attention_head_dim"]),
            "depth": int(bb["num_layers"]), "plane_tokens": int(tok["plane_size"]), "mlp_ratio": 4.0,
            "mlp_type": "geglu", "ln_eps": 1e-5, "cross_first": False, "io_proj": True,
            "io_groups": int(bb.get("norm_num_groups", 32)), "final_norm": False, "camera_modulation": False,
            "qkv_bias": False,
        },
        "upsampler": {"channels": c, "kernel": 2},
        "decoder": {
            "aggregation": agg, "hidden": int(dec["n_neurons"]), "hidden_layers": int(dec["n_hidden_layers"]),
            "activation": dec.get("activation", "relu"),
            "density_activation": ren.get("density_activation", "trunc_exp"),
            "density_bias": float(ren.get("density_bias", -1.0)),
        },
        "render": {
            "radius": float(ren["radius"]), "box_margin": 1e-3, "min_ray_length": 0.01,
            "n_samples": int(ren["num_samples_per_ray"]), "n_importance": 0, "sampler": "midpoint",
            "step": "normalized", "background": [1.0, 1.0, 1.0], "resolution": 256,
            # The nerfacc path marches at a world-space step; TripoSR's rules need the torch path.
            "backend": "torch",
        },
    }
    cfg = merge_configs(OmegaConf.structured(Config), {
        "name": "triposr",
        "model": model,
        "camera": {"distance": TRIPOSR_CAMERA_DISTANCE, "fov_deg": TRIPOSR_FOVY_DEG,
                   "foreground_ratio": TRIPOSR_FOREGROUND_RATIO},
        # Read by inference / evaluation: TripoSR was trained on inputs composited over grey 0.5, and its
        # encoder resizes the preprocessed image to cond_image_size (so preprocess at that size, not smaller).
        "infer": {"input_background": list(TRIPOSR_INPUT_BACKGROUND), "foreground_ratio": TRIPOSR_FOREGROUND_RATIO,
                  "input_size": int(tsr["cond_image_size"])},
    })
    check_model_limits(cfg.model)  # e.g. num_layers: 1e6 would build a million blocks
    return cfg


def read_triposr_config(path: str | Path, vit_config: Optional[str | Path] = None) -> Tuple[dict, Optional[dict]]:
    """``(tsr_cfg, vit_cfg)`` from TripoSR's ``config.yaml``, or a JSON holding ``tsr_config`` (+ ``vit_config``)
    as in the conformance folder. ``vit_config`` (an HF ``config.json``) overrides the ViT config."""
    from ..config import read_json, read_yaml

    path = Path(path)
    raw = read_json(path) if path.suffix == ".json" else OmegaConf.to_container(read_yaml(path), resolve=True)
    tsr, vit = (raw["tsr_config"], raw.get("vit_config")) if "tsr_config" in raw else (raw, None)
    if vit_config is not None:
        vit = read_json(vit_config)
    return tsr, vit


# --------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------
_VIT = "image_tokenizer.model."
_BLK = "backbone.transformer_blocks.{i}."
#: (TripoSR key pattern, our key pattern); ``{i}`` is a layer index, ``{p}`` weight|bias. None = dropped.
KEY_PAIRS: List[Tuple[str, Optional[str]]] = [
    (_VIT + "embeddings.cls_token", "encoder.cls_token"),
    (_VIT + "embeddings.position_embeddings", "encoder.pos_embed"),
    (_VIT + "embeddings.patch_embeddings.projection.{p}", "encoder.patch_embed.{p}"),
    (_VIT + "encoder.layer.{i}.attention.attention.query.{p}", "encoder.blocks.{i}.attn.to_q.{p}"),
    (_VIT + "encoder.layer.{i}.attention.attention.key.{p}", "encoder.blocks.{i}.attn.to_k.{p}"),
    (_VIT + "encoder.layer.{i}.attention.attention.value.{p}", "encoder.blocks.{i}.attn.to_v.{p}"),
    (_VIT + "encoder.layer.{i}.attention.output.dense.{p}", "encoder.blocks.{i}.attn.to_out.{p}"),
    (_VIT + "encoder.layer.{i}.intermediate.dense.{p}", "encoder.blocks.{i}.mlp.fc1.{p}"),
    (_VIT + "encoder.layer.{i}.output.dense.{p}", "encoder.blocks.{i}.mlp.fc2.{p}"),
    (_VIT + "encoder.layer.{i}.layernorm_before.{p}", "encoder.blocks.{i}.norm1.{p}"),
    (_VIT + "encoder.layer.{i}.layernorm_after.{p}", "encoder.blocks.{i}.norm2.{p}"),
    (_VIT + "layernorm.{p}", "encoder.norm.{p}"),
    (_VIT + "pooler.dense.{p}", None),  # built by HF ViTModel, unused by TripoSR
    ("tokenizer.embeddings", "transformer.tokens"),
    ("backbone.norm.{p}", "transformer.io_norm.{p}"),
    ("backbone.proj_in.{p}", "transformer.proj_in.{p}"),
    ("backbone.proj_out.{p}", "transformer.proj_out.{p}"),
    (_BLK + "norm1.{p}", "transformer.blocks.{i}.norm_self.norm.{p}"),
    (_BLK + "norm2.{p}", "transformer.blocks.{i}.norm_cross.norm.{p}"),
    (_BLK + "norm3.{p}", "transformer.blocks.{i}.norm_mlp.norm.{p}"),
    (_BLK + "attn1.to_q.{p}", "transformer.blocks.{i}.attn_self.to_q.{p}"),
    (_BLK + "attn1.to_k.{p}", "transformer.blocks.{i}.attn_self.to_k.{p}"),
    (_BLK + "attn1.to_v.{p}", "transformer.blocks.{i}.attn_self.to_v.{p}"),
    (_BLK + "attn1.to_out.0.{p}", "transformer.blocks.{i}.attn_self.to_out.{p}"),
    (_BLK + "attn2.to_q.{p}", "transformer.blocks.{i}.attn_cross.to_q.{p}"),
    (_BLK + "attn2.to_k.{p}", "transformer.blocks.{i}.attn_cross.to_k.{p}"),
    (_BLK + "attn2.to_v.{p}", "transformer.blocks.{i}.attn_cross.to_v.{p}"),
    (_BLK + "attn2.to_out.0.{p}", "transformer.blocks.{i}.attn_cross.to_out.{p}"),
    (_BLK + "ff.net.0.proj.{p}", "transformer.blocks.{i}.mlp.fc1.{p}"),
    (_BLK + "ff.net.2.{p}", "transformer.blocks.{i}.mlp.fc2.{p}"),
    ("post_processor.upsample.{p}", "upsampler.deconv.{p}"),
    ("decoder.layers.{i}.{p}", "decoder.layers.{i}.{p}"),
]
#: The ViT pooler keys TripoSR checkpoints carry (and we drop), for a ViT of width ``d``.
POOLER_KEYS = (_VIT + "pooler.dense.weight", _VIT + "pooler.dense.bias")


def _compile(pattern: str) -> re.Pattern:
    rx = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(rx + r"\Z")


_FWD = [(_compile(a), b) for a, b in KEY_PAIRS]
_INV = [(_compile(b), a) for a, b in KEY_PAIRS if b is not None]


def _apply(rules, key: str):
    for rx, template in rules:
        m = rx.match(key)
        if m:
            if template is None:
                return None, True
            return template.format(**{k: v for k, v in m.groupdict().items() if v is not None}), True
    return None, False


def triposr_to_ours(key: str) -> Optional[str]:
    """Our key for a TripoSR key; None for keys that are dropped (the pooler). KeyError if unknown."""
    out, known = _apply(_FWD, key)
    if not known:
        raise KeyError(key)
    return out


def ours_to_triposr(key: str) -> str:
    out, known = _apply(_INV, key)
    if not known:
        raise KeyError(key)
    return out


def tokens_from_triposr(t: torch.Tensor) -> torch.Tensor:
    """TripoSR ``tokenizer.embeddings`` [3, C, P, P] -> our ``transformer.tokens`` [3·P·P, C]."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def tokens_to_triposr(t: torch.Tensor, plane: int) -> torch.Tensor:
    return t.reshape(3, plane, plane, t.shape[1]).permute(0, 3, 1, 2)


def expected_triposr_shapes(model_cfg) -> Dict[str, Tuple[int, ...]]:
    """Every key (and shape) a TripoSR checkpoint for ``model_cfg`` must hold, in TripoSR names.

    Derived from our model built on the meta device, so the two can never drift apart.
    """
    from ..models.lrm import build_model

    model = build_model(model_cfg, meta=True)
    mc = model.cfg
    out = {}
    for k, v in model.state_dict().items():
        shape = tuple(v.shape)
        if k == "transformer.tokens":
            p = mc.transformer.plane_tokens
            shape = (3, shape[1], p, p)
        out[ours_to_triposr(k)] = shape
    d = mc.encoder.dim
    out[POOLER_KEYS[0]], out[POOLER_KEYS[1]] = (d, d), (d,)
    return out


def convert_state_dict(tsr_sd: Dict[str, torch.Tensor], cfg, check_finite: bool = True) -> Dict[str, torch.Tensor]:
    """TripoSR state dict -> ours, refusing anything that does not match ``cfg`` exactly."""
    from ..config import model_config_from

    mc = model_config_from(cfg)
    expected = expected_triposr_shapes(mc)
    missing = sorted(set(expected) - set(tsr_sd))
    unexpected = sorted(set(tsr_sd) - set(expected))
    misshaped = [f"{k}: checkpoint {tuple(tsr_sd[k].shape)}, expected {expected[k]}"
                 for k in sorted(expected) if k in tsr_sd and tuple(tsr_sd[k].shape) != expected[k]]
    not_float = [f"{k}: {tsr_sd[k].dtype}" for k in sorted(expected)
                 if k in tsr_sd and not (isinstance(tsr_sd[k], torch.Tensor) and tsr_sd[k].is_floating_point())]
    if missing or unexpected or misshaped or not_float:
        parts = []
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("mis-shaped tensors", misshaped), ("non-float tensors", not_float)):
            if items:
                more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
                parts.append(f"{len(items)} {name}: " + ", ".join(items[:8]) + more)
        raise TripoSRConversionError("checkpoint does not match the TripoSR config: " + "; ".join(parts))
    if check_finite:
        bad = [k for k in sorted(expected) if not tsr_sd[k].is_meta and not torch.isfinite(tsr_sd[k]).all()]
        if bad:
            raise TripoSRConversionError(f"checkpoint has non-finite values (NaN/inf) in {len(bad)} tensors: {bad[:8]}")
    out = {}
    for k, v in tsr_sd.items():
        ours = triposr_to_ours(k)
        if ours is None:
            continue
        v = v.to(torch.float32)  # half-precision checkpoints are upcast; the model runs in fp32
        out[ours] = tokens_from_triposr(v).contiguous() if ours == "transformer.tokens" else v.contiguous()
    return out


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def read_triposr_checkpoint(path: str | Path) -> Dict[str, torch.Tensor]:
    """A TripoSR state dict from ``model.ckpt`` (torch pickle, loaded with ``weights_only=True``) or
    ``.safetensors``. Unreadable or truncated files raise ``TripoSRConversionError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupted / not a checkpoint
        raise TripoSRConversionError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise TripoSRConversionError(f"{path} does not hold a state dict")
    notensor = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if notensor:
        raise TripoSRConversionError(f"{path}: entries that are not tensors: {notensor[:8]}")
    return sd


def convert(ckpt: str | Path, config: str | Path, out_dir: str | Path, vit_config: Optional[str | Path] = None,
            strict_config: bool = True, overwrite: bool = False) -> Path:
    """Convert a TripoSR checkpoint + config into our checkpoint folder ``out_dir``; returns it. An existing
    ``out_dir`` that is not a checkpoint this program wrote is refused (before any work) unless ``overwrite``."""
    from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_checkpoint
    from ..models.lrm import LRM
    from ..outdir import check_target

    check_target(Path(out_dir), overwrite, {WEIGHTS_NAME, CONFIG_NAME, "SOURCE.txt"})

    tsr_cfg, vit_cfg = read_triposr_config(config, vit_config)
    cfg = config_from_triposr(tsr_cfg, vit_cfg, strict=strict_config)
    state = convert_state_dict(read_triposr_checkpoint(ckpt), cfg)
    with torch.device("meta"):
        model = LRM(cfg, load_pretrained_encoder=False)
    model.load_state_dict(state, strict=True, assign=True)  # no copy; checks the keys once more
    note = (f"Converted from the TripoSR checkpoint {Path(ckpt).name} by lrm.convert.triposr.\n"
            "TripoSR: github.com/VAST-AI-Research/TripoSR; its weights are released under the MIT licence.\n")
    return save_checkpoint(model, cfg, out_dir, extra={"SOURCE.txt": note}, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------
def triposr_cameras(n_views: int, elevation_deg: float = 0.0, camera_distance: float = TRIPOSR_CAMERA_DISTANCE,
                    fovy_deg: float = TRIPOSR_FOVY_DEG, dtype=torch.float32):
    """The turntable ``TSR.render`` uses, as (OpenCV c2w [n, 4, 4], normalised intrinsics [n, 4]).

    Azimuths ``linspace(0, 360, n + 1)[:n]`` from +X toward +Y, z-up, looking at the origin. The camera bases
    are computed correctly for every ``n_views`` (the reference mis-computes them for ``n_views == 3``).
    """
    from .. import cameras as cam

    az = torch.linspace(0.0, 360.0, n_views + 1, dtype=torch.float64)[:n_views]
    c2w = cam.orbit_camera(az, torch.full_like(az, float(elevation_deg)), torch.full_like(az, float(camera_distance)))
    intr = cam.intrinsics_from_fov(torch.full((n_views,), float(fovy_deg), dtype=torch.float64))
    return c2w.to(dtype), intr.to(dtype)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def main(argv: Optional[Iterable[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lrm.convert.triposr", description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", help="TripoSR model.ckpt (or the same state dict as .safetensors)")
    ap.add_argument("config", help="TripoSR config.yaml (or a JSON with tsr_config/vit_config)")
    ap.add_argument("out_dir", help="output checkpoint folder (model.safetensors + config.yaml)")
    ap.add_argument("--vit-config", default=None,
                    help="HF config.json of the image tokenizer's ViT (facebook/dino-vitb16 is built in)")
    ap.add_argument("--allow-unknown-config", action="store_true", help="warn instead of failing on unknown config fields")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace out_dir even if it is not a checkpoint folder this program wrote")
    args = ap.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = convert(args.ckpt, args.config, args.out_dir, args.vit_config,
                      strict_config=not args.allow_unknown_config, overwrite=args.overwrite)
    except (TripoSRConversionError, FileNotFoundError, ConfigError, OutputExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/model.safetensors and {out}/config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
