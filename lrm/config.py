"""The one config tree shared by train / infer / SDS / eval.

Configs are OmegaConf objects built on the dataclass schema below, merged with a YAML file and with
dotted command-line overrides (``model.transformer.depth=4``). Unknown keys are errors, so typos fail
loudly. ``load_config`` is the only entry point that scripts need.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from .conventions import CANONICAL_DISTANCE, CANONICAL_FOV_DEG, CUBE_RADIUS


@dataclass
class EncoderConfig:
    """Image encoder: a ViT (lrm/models/encoder.py) or EfficientNet-Lite0 (lrm/models/efficientnet_lite.py)."""

    # "vit" | "efficientnet_lite0". dim, image_size, patch_size (token grid = image_size // patch_size), cls_token,
    # ln_eps, pretrained_path and freeze apply to both; the efficientnet kind scales its input to [-1, 1] itself and
    # has no depth/heads/mlp_ratio/qkv_bias/layer_scale/pos_*/attention (ignored) and no normalize_* (must stay default)
    kind: str = "vit"
    image_size: int = 224  # input resolution fed to the ViT
    patch_size: int = 14
    dim: int = 384
    depth: int = 6
    heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    cls_token: bool = True
    num_register_tokens: int = 0
    layer_scale: Optional[float] = None  # DINOv2 LayerScale init value; None = no layer scale
    pos_grid: Optional[int] = None  # patches per side of the position table (default image_size // patch_size)
    # "bicubic": resize the position grid to the target size; "bicubic_legacy": HF ViT <= 4.35 behaviour
    # (scale_factor = (n + 0.1) / g), needed for TripoSR checkpoints.
    pos_interp: str = "bicubic"
    normalize_mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    normalize_std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # local HF folder (ViT or DINOv2 weights) or, for efficientnet_lite0, a .safetensors file; never downloaded
    pretrained_path: Optional[str] = None
    freeze: bool = False
    attention: str = "sdpa"


@dataclass
class TransformerConfig:
    """Triplane transformer (lrm/models/transformer.py)."""

    token_dim: int = 256  # channels of the learned triplane tokens (and of the transformer output)
    heads: int = 4
    head_dim: Optional[int] = None  # default token_dim // heads; inner dim = heads * head_dim
    depth: int = 4
    plane_tokens: int = 16  # h = w of each plane's token grid (3 * h * w tokens)
    mlp_ratio: float = 4.0
    mlp_type: str = "gelu"  # gelu | geglu
    ln_eps: float = 1e-6
    cross_first: bool = False  # block order: self-attn, cross-attn, MLP (or cross first, as OpenLRM)
    # TripoSR wraps the blocks in GroupNorm + proj_in ... proj_out + residual; OpenLRM uses a final LayerNorm.
    io_proj: bool = False
    io_groups: int = 32
    final_norm: bool = True
    camera_modulation: bool = True  # adaLN modulation by the input camera (False = fixed-camera model)
    camera_embed_dim: int = 256
    qkv_bias: bool = False
    attention: str = "sdpa"  # sdpa | math | xformers (CUDA only)
    grad_checkpoint: bool = False
    # Add image features back-projected along each token's line of sight to the learned triplane tokens
    # (lrm/models/lift.py): a geometric prior that makes small models learn shapes much sooner.
    lift_image: bool = False
    lift_samples: int = 8  # points per line of sight
    # Several input views (lrm/models/lrm.py): each view's camera is embedded and added to its own image tokens
    # (lrm/models/camera_embed.py, ViewEmbedder; zero-initialised). False = a one-view model (V > 1 is refused),
    # which is what every checkpoint made before the view axis is: its weights have no view embedding.
    multiview: bool = False


@dataclass
class UpsamplerConfig:
    channels: int = 32  # triplane feature channels C
    kernel: int = 2  # transposed-conv stride (resolution multiplier); the kernel is kernel + 2 * overlap
    # texels each token's kernel reaches into its neighbours' patches, per side (0: the patches are independent, and
    # the planes can jump at every patch border; >0: neighbouring tokens overlap there and can make it continuous)
    overlap: int = 0


@dataclass
class DecoderConfig:
    """Triplane sampling + NeRF MLP (lrm/models/decoder.py)."""

    aggregation: str = "concat"  # concat | sum | mean of the three plane features
    hidden: int = 64
    hidden_layers: int = 3  # Linear+act layers before the output Linear
    activation: str = "silu"  # silu | relu | gelu
    density_activation: str = "trunc_exp"  # exp | trunc_exp | softplus | relu
    density_bias: float = -1.0
    # bf16: without autograd (rendering, meshing, evaluation) the MLP runs under bf16 autocast; plane sampling and
    # the outputs stay fp32. Training and refinement (autograd on) always run it in fp32.
    mlp_precision: str = "fp32"
    # without autograd, map the planes' texels through the first layer once per scene and read each point's first-layer
    # input as one weighted gather of 4 taps per plane (lrm/models/plane_fold.py): the same values, fewer operations
    fold_planes: bool = True


@dataclass
class PixelPlaneConfig:
    """Pixel-aligned features as a fourth plane of the scene (lrm/models/pixel_plane.py)."""

    enabled: bool = False
    hidden: int = 32  # channels of the conv over the input image
    distance: float = CANONICAL_DISTANCE  # the canonical input camera the plane lives on
    fov_deg: float = CANONICAL_FOV_DEG
    # > 0: the pixel features' input to the decoder's first layer is gated per hidden unit by a linear map of this many
    # sine/cosine bands of the point's depth offset (zero-initialised: the gate starts at 1), so a pixel's features can
    # act at some depths along its ray and not others instead of the same at every depth
    depth_bands: int = 0
    # > 0: a non-linear depth head of this many channels (dilated convs over the plane + an MLP of the encoder's tokens)
    # adds its output to channel 3, the channel train.loss.input_depth supervises; its last layer starts at zero
    depth_head: int = 0


@dataclass
class RenderConfig:
    """Volume renderer (lrm/render/volume.py)."""

    radius: float = CUBE_RADIUS  # triplane cube half-size R
    box_margin: float = 0.0  # rays are clipped to the cube of half-size R * (1 - box_margin)
    min_ray_length: float = 0.0  # rays whose segment inside the cube is not longer than this are empty
    n_samples: int = 48
    n_importance: int = 48
    sampler: str = "stratified"  # stratified (random jitter when training) | midpoint (deterministic)
    step: str = "world"  # world: delta = sample spacing; normalized: delta = 1 / n_samples (TripoSR)
    background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    chunk: int = 8192  # rays per chunk
    backend: str = "auto"  # auto | torch | nerfacc (CUDA only)
    resolution: int = 64
    # inference only (no autograd, no jitter): skip empty space with a coarse occupancy grid and stop rays whose
    # transmittance fell below ``early_stop``; same image as the dense path within tolerance (tests/test_render.py)
    skip_empty: bool = True
    occupancy_resolution: int = 64  # cells per side of the occupancy grid over the cube
    # rays per chunk on the skipping path (most samples are skipped, so longer chunks pay: fewer, larger field calls);
    # null = chunk
    skip_chunk: Optional[int] = 4096
    # > 1: build the grid at occupancy_resolution / this first and query the fine grid only inside its occupied
    # cells (lrm/render/occupancy.py); finds structures thicker than this many fine cells. 1 = every corner
    occupancy_coarse_factor: int = 1
    occupancy_tolerance: float = 0.1  # skipped optical depth per ray at most about this (sets the density threshold)
    early_stop: float = 1e-4  # transmittance below which a ray stops
    skip_max_occupancy: float = 0.5  # a grid more occupied than this saves too few queries: dense path instead
    # rays whose coarse samples composite to less opacity than this take their importance samples' values by
    # interpolating the coarse ones instead of querying the field (0 = off)
    fine_min_opacity: float = 0.01
    # importance samples per ray when no gradient is taken (views, turntables, evaluation); null = n_importance. A
    # checkpoint sets it where it measured the image unchanged (checkpoints/default/README.md: PSNR vs n_importance)
    inference_importance: Optional[int] = None
    # coarse (uniform) samples per ray when no gradient is taken; null = n_samples. Set the same way (the grid of
    # empty-space skipping still finds structures at its own resolution; coarse samples decide where importance
    # samples go, so a sharp field needs more of them than a blurry one)
    inference_samples: Optional[int] = None
    # inference only (no autograd): chunks of rays rendered by this many threads at once, each with one intra-op
    # thread (small decoder calls scale better across chunks than inside one op); 0 = torch.get_num_threads(),
    # 1 = the calling thread only
    threads: int = 0


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pixel_plane: PixelPlaneConfig = field(default_factory=PixelPlaneConfig)
    render: RenderConfig = field(default_factory=RenderConfig)


@dataclass
class CameraDefaults:
    distance: float = CANONICAL_DISTANCE
    fov_deg: float = CANONICAL_FOV_DEG
    foreground_ratio: float = 0.85


@dataclass
class Config:
    """Top-level tree. Sections other than ``model``/``camera`` are free-form here: each is typed by the module
    that owns it, merged there with :func:`merge_over_defaults` (``data`` / ``train``: the task's schema, for the
    LRM lrm/training/defaults.py ``DataConfig`` / ``TrainConfig``; ``infer``: lrm/pipeline.py ``InferConfig``;
    ``eval``, ``sds``: their modules). Free-form here, a saved config keeps loading whatever its task."""

    name: str = "tiny"
    seed: int = 0
    # the kind of training run (lrm/training/tasks.py): "lrm" = this schema's triplane LRM; for any other
    # task the ``model`` section is free-form and checked by that task (TaskConfig below)
    task: str = "lrm"
    model: ModelConfig = field(default_factory=ModelConfig)
    camera: CameraDefaults = field(default_factory=CameraDefaults)
    data: Any = field(default_factory=dict)
    train: Any = field(default_factory=dict)
    infer: Any = field(default_factory=dict)
    eval: Any = field(default_factory=dict)
    sds: Any = field(default_factory=dict)


@dataclass
class TaskConfig(Config):
    """The tree of a non-LRM training task: as :class:`Config`, with a free-form ``model`` section."""

    model: Any = field(default_factory=dict)


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A config file path, or the name of one in ``configs/`` (``tiny`` -> ``configs/tiny.yaml``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"config not found: {name_or_path} (looked in . and {CONFIG_DIR})")


class ConfigError(ValueError):
    """A config file or value that cannot be used: one clear line, no traceback."""


#: Size-like keys of the model section and their allowed ranges (inclusive). Out-of-range values would build
#: absurd models (minutes of construction, gigabytes of memory) or divide by zero later.
MODEL_LIMITS = {
    "encoder.image_size": (8, 4096), "encoder.patch_size": (1, 512), "encoder.dim": (1, 16384),
    "encoder.depth": (0, 256), "encoder.heads": (1, 512), "encoder.num_register_tokens": (0, 1024),
    "encoder.pos_grid": (1, 1024), "encoder.mlp_ratio": (0, 64),
    "transformer.token_dim": (1, 16384), "transformer.heads": (1, 512), "transformer.head_dim": (1, 4096),
    "transformer.depth": (0, 256), "transformer.plane_tokens": (1, 512), "transformer.mlp_ratio": (0, 64),
    "transformer.io_groups": (1, 4096), "transformer.camera_embed_dim": (1, 16384),
    "transformer.lift_samples": (1, 4096),
    "upsampler.channels": (1, 4096), "upsampler.kernel": (1, 64), "upsampler.overlap": (0, 64),
    "decoder.hidden": (1, 16384), "decoder.hidden_layers": (0, 256),
    "render.n_samples": (1, 8192), "render.n_importance": (0, 8192), "render.inference_importance": (0, 8192),
    "render.inference_samples": (1, 8192), "render.occupancy_coarse_factor": (1, 64),
    "render.skip_chunk": (1, 1 << 24),
    "render.chunk": (1, 1 << 24), "render.resolution": (1, 8192),
}
_FLOAT_KEYS = {"encoder.mlp_ratio", "transformer.mlp_ratio"}


def check_number(label: str, value, lo, hi, integer: bool = True):
    """``value`` as a number in [lo, hi] (an integer unless ``integer=False``), else :class:`ConfigError`."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer and isinstance(value, float):
        ok = value.is_integer()
    if not ok or not (lo <= value <= hi):  # NaN fails the range test
        raise ConfigError(f"{label} must be {kind} in [{lo}, {hi}], got {value!r}")
    return int(value) if integer else float(value)


def check_limits(cfg, limits: dict, prefix: str = "", float_keys=()) -> None:
    """Range-check every ``key: (lo, hi)`` of ``limits`` that ``cfg`` sets (None = unset / default)."""
    for key, (lo, hi) in limits.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_number(f"{prefix}{key}", value, lo, hi, integer=key not in float_keys)


ENCODER_KINDS = ("vit", "efficientnet_lite0")


def check_model_limits(model_cfg) -> None:
    check_limits(model_cfg, MODEL_LIMITS, "model.", _FLOAT_KEYS)
    enc = model_cfg.get("encoder", None)
    if enc is None:
        return
    kind = enc.get("kind", "vit")
    if kind not in ENCODER_KINDS:
        raise ConfigError(f"model.encoder.kind must be one of {', '.join(ENCODER_KINDS)}, got {kind!r}")
    if kind != "vit":
        default = EncoderConfig()
        for key in ("normalize_mean", "normalize_std"):
            if key in enc and [float(x) for x in enc[key]] != getattr(default, key):
                raise ConfigError(f"model.encoder.{key} does not apply to encoder.kind {kind} (it scales its input "
                                  "to [-1, 1], as its pretrained weights expect); leave it at the default")


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Schema defaults <- YAML file (may ``_base_: other.yaml``) <- dotted ``key=value`` overrides.
    Unreadable files and out-of-range model sizes raise :class:`ConfigError`."""
    raw = _load_yaml_with_base(resolve_config_path(path)) if path is not None else None
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key=value, got: {bad}")
    lrm = _task_of(raw, overrides) == "lrm"
    cfg = OmegaConf.structured(Config if lrm else TaskConfig)
    if raw is not None:
        cfg = merge_configs(cfg, raw)
    if overrides:
        cfg = merge_configs(cfg, OmegaConf.from_dotlist(list(overrides)))
    if lrm:
        check_model_limits(cfg.model)
    return cfg


def _task_of(raw: Optional[DictConfig], overrides: Sequence[str]) -> str:
    """The ``task`` a config file + overrides name (the last ``task=`` override wins; default ``lrm``)."""
    found = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "task"]
    if found:
        return found[-1]
    task = raw.get("task", None) if raw is not None else None
    return "lrm" if task is None else str(task)


def merge_configs(base, other):
    """OmegaConf.merge with its multi-line validation errors turned into one :class:`ConfigError` line."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"invalid config value{f' for {key}' if key else ''}: {first}") from None


def _integral_floats(schema, given):
    """``given`` (a plain container) with integer-valued floats at the ``int`` fields of the dataclass ``schema``
    made ints (``train.max_steps=1e4`` is 10000, as :func:`check_number` accepts), nested sections included."""
    if not isinstance(given, dict):
        return given
    hints = typing.get_type_hints(schema)
    out = dict(given)
    for f in dataclasses.fields(schema):
        if f.name not in out:
            continue
        kind, value = hints[f.name], out[f.name]
        if kind in (int, Optional[int]) and isinstance(value, float) and value.is_integer():
            out[f.name] = int(value)
        elif dataclasses.is_dataclass(kind):
            out[f.name] = _integral_floats(kind, value)
    return out


def merge_over_defaults(defaults, given, section: str) -> DictConfig:
    """The config section ``section`` as a plain DictConfig: ``given`` (what the YAML file and the command line set
    there: a mapping or None) merged over ``defaults``, a dataclass (class or instance; its fields are the keys and
    their types) or a dict. A key the defaults lack, a value a typed field cannot take, or a section that is not a
    mapping raise :class:`ConfigError` with one line that names the section and the key."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    if isinstance(given, DictConfig):  # resolved in place, where ${...} can reach the rest of the tree
        given = OmegaConf.to_container(given, resolve=True)
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise ConfigError(f"the {section!r} config section must be a mapping of keys, got {given!r}")
    if dataclasses.is_dataclass(defaults):
        base = OmegaConf.structured(defaults)
        given = _integral_floats(defaults if isinstance(defaults, type) else type(defaults), given)
    else:
        base = OmegaConf.create(defaults)
    OmegaConf.set_struct(base, True)  # unknown keys -> error
    try:
        merged = OmegaConf.merge(base, given)
    except OmegaConfBaseException as e:
        key = f"{section}.{e.full_key}" if getattr(e, "full_key", None) else section
        if isinstance(e, ConfigKeyError):
            raise ConfigError(f"unknown key in the {section!r} config section: {key}") from None
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"invalid value in the {section!r} config section for {key}: {first}") from None
    return OmegaConf.create(OmegaConf.to_container(merged, resolve=True))  # plain: no schema attached


def read_yaml(path: str | os.PathLike) -> DictConfig:
    """A YAML (or JSON) file as a DictConfig; binary or malformed files raise :class:`ConfigError`."""
    try:
        raw = OmegaConf.load(path)
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"config file {path} is not a readable text config ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001  yaml.YAMLError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"config file {path} does not hold a mapping of keys")
    return raw


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from a file; binary or malformed files raise :class:`ConfigError`."""
    import json

    try:
        raw = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"config file {path} is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} does not hold a JSON object")
    return raw


def _load_yaml_with_base(path: Path) -> DictConfig:
    raw = read_yaml(path)
    base = raw.pop("_base_", None)
    if base is None:
        return raw
    return merge_configs(_load_yaml_with_base(resolve_config_path(path.parent / base)), raw)


def model_config_from(cfg: DictConfig | dict) -> DictConfig:
    """Accept either a full config or a bare model section; return a validated model section."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    section = cfg.model if "model" in cfg else cfg
    merged = merge_configs(OmegaConf.structured(ModelConfig), section)
    check_model_limits(merged)
    return merged


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write a config as YAML atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)
