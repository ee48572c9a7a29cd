"""Model checkpoints: a folder with ``model.safetensors`` (the LRM ``state_dict``) + ``config.yaml`` (the full
config tree). Training writes them, inference / evaluation read them, importers (``lrm.convert.triposr``)
produce them.

Writes are atomic (everything goes to a temporary sibling folder that is then renamed into place) and never
replace a folder this program did not write (lrm/outdir.py); loads never unpickle anything, and a checkpoint
whose weights are truncated, non-float, non-finite or don't fit its config is refused with one clear message.
The interface (``save_checkpoint(model, cfg, folder, extra)``, ``load_checkpoint(folder, device, overrides)
-> (model, cfg)``, ``CheckpointError``) is the one infer.py uses.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

import logging

import torch
from omegaconf import DictConfig, OmegaConf

from .config import load_config
from .outdir import check_target, make_temp_dir, publish, sweep_stale

log = logging.getLogger(__name__)

#: Modules a newer model may have that older checkpoints lack, and that start as exact no-ops: prefix -> (what it is,
#: the zero-initialised output tensors that make it a no-op). :func:`load_init_weights` leaves only these fresh.
NOOP_MODULES = {
    "view_embed.": ("the per-view camera embedding (model.transformer.multiview)",
                    ("view_embed.net.2.weight", "view_embed.net.2.bias")),
    "pixel_plane.": ("the pixel plane (model.pixel_plane); the decoder reads it through a zero map",
                     ("decoder.pixel_in.weight",)),
    "decoder.pixel_in.": ("the decoder's pixel-plane input (model.pixel_plane)", ("decoder.pixel_in.weight",)),
    "pixel_plane.depth_head.": ("the pixel plane's depth head (model.pixel_plane.depth_head)",
                                ("pixel_plane.depth_head.out.weight", "pixel_plane.depth_head.out.bias")),
    "decoder.pixel_gate.": ("the depth gate of the pixel-plane input (model.pixel_plane.depth_bands)",
                            ("decoder.pixel_gate.weight", "decoder.pixel_gate.bias")),
}

#: Weights that ``--init-from`` may take from a checkpoint with a smaller upsampler kernel (``model.upsampler.kernel``
#: k -> m·k): each kernel tap is repeated m x m times, so the new planes are the old ones nearest-upsampled m times.
WIDENED_KERNELS = ("upsampler.deconv.weight",)


def widen_kernels(state: dict, own: dict, skip=()) -> List[str]:
    """In place: the :data:`WIDENED_KERNELS` of ``state`` whose last two sizes divide the model's are repeated to
    its size (nearest upsampling of the transposed conv's output; kernel = stride only: ``skip`` names the keys of
    an overlapping upsampler, which this would not reproduce). Returns the keys widened."""
    done = []
    for k in WIDENED_KERNELS:
        if k not in state or k not in own or k in skip or state[k].shape == own[k].shape:
            continue
        a, b = tuple(state[k].shape), tuple(own[k].shape)
        if a[:2] != b[:2] or b[2] % a[2] or b[3] % a[3] or b[2] // a[2] != b[3] // a[3]:
            continue
        m = b[2] // a[2]
        state[k] = state[k].repeat_interleave(m, 2).repeat_interleave(m, 3)
        done.append(k)
    return done

def pad_kernels(state: dict, model: torch.nn.Module) -> List[str]:
    """In place: a transposed-conv kernel of :data:`WIDENED_KERNELS` that the model runs with padding o and a kernel
    2o larger than ``state``'s (``model.upsampler.overlap``) is zero-padded by o on each side: the output is then the
    checkpoint's exactly (lrm/models/upsampler.py). Returns the keys padded."""
    done = []
    own = model.state_dict()
    for k in WIDENED_KERNELS:
        conv = model.get_submodule(k.rsplit(".", 1)[0]) if k in own else None
        pad = getattr(conv, "padding", (0, 0))
        if k not in state or conv is None or not pad[0] or pad[0] != pad[1]:
            continue
        a, b = tuple(state[k].shape), tuple(conv.weight.shape)
        o = pad[0]
        if a[:2] != b[:2] or (a[2] + 2 * o, a[3] + 2 * o) != b[2:] or tuple(conv.stride) != a[2:]:
            continue
        state[k] = torch.nn.functional.pad(state[k], (o, o, o, o))
        done.append(k)
    return done


#: Residual output projections of a transformer block: zeroed, they make a block the identity.
BLOCK_OUTPUTS = ("attn_self.to_out.", "attn_cross.to_out.", "mlp.fc2.")


def deepen_blocks(state: dict, own: dict, prefix: str = "transformer.blocks.") -> List[int]:
    """In place: when the model has more transformer blocks than ``state`` (which holds blocks 0..n-1), blocks n.. take
    the model's fresh weights with their :data:`BLOCK_OUTPUTS` zeroed: each adds nothing to its residual stream, so the
    deeper model starts as the checkpoint's. Returns the indices added."""
    def index(k):
        return int(k[len(prefix):].split(".")[0])

    have = {index(k) for k in state if k.startswith(prefix)}
    want = {index(k) for k in own if k.startswith(prefix)}
    if not have or have != set(range(len(have))) or not (want - have) or min(want - have) != len(have):
        return []
    added = sorted(want - have)
    for k, v in own.items():
        if k.startswith(prefix) and index(k) in added:
            rest = k[len(prefix):].split(".", 1)[1]
            state[k] = torch.zeros_like(v) if rest.startswith(BLOCK_OUTPUTS) else v.clone()
    return added


#: The checkpoint shipped in the repository.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete or does not match its config."""


def is_checkpoint_dir(path) -> bool:
    p = Path(path)
    return (p / WEIGHTS_NAME).is_file() and (p / CONFIG_NAME).is_file()


def save_checkpoint(model: torch.nn.Module, cfg: DictConfig, folder: str | os.PathLike,
                    extra: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Write ``model.safetensors`` + ``config.yaml`` (+ ``extra``: small text files by name) atomically."""
    return save_state_dict(model.state_dict(), cfg, folder, extra, overwrite)


def save_state_dict(state_dict: dict, cfg: DictConfig, folder: str | os.PathLike,
                    extra: Optional[dict] = None, overwrite: bool = False) -> Path:
    """:func:`save_checkpoint` for a bare state dict (e.g. one gathered from a distributed engine).

    An existing ``folder`` is replaced only if it is a checkpoint this program wrote (lrm/outdir.py);
    anything else raises :class:`~lrm.outdir.OutputExistsError` unless ``overwrite``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    legacy = {WEIGHTS_NAME, CONFIG_NAME, *(extra or {})}
    check_target(folder, overwrite, legacy)  # before any work
    sweep_stale(folder.parent)
    tmp = make_temp_dir(folder)
    try:
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "lrm"})
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        (tmp / CONFIG_NAME).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish(tmp, folder, overwrite, legacy)


def model_folder_files(folder: str | os.PathLike, what: str) -> Tuple[Path, Path]:
    """(weights, config) paths of an exported model folder; :class:`CheckpointError` naming ``what`` (e.g.
    "checkpoint", "prior") when the folder or either file is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{what} folder not found: {folder}")
    weights, cfg_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for p in (weights, cfg_path):
        if not p.is_file():
            raise CheckpointError(f"{what} {folder} is incomplete: {p.name} missing")
    return weights, cfg_path


def read_checkpoint(folder: str | os.PathLike, overrides=()) -> Tuple[DictConfig, dict]:
    """Config and state dict of a checkpoint folder (no model built)."""
    from safetensors.torch import load_file

    weights, cfg_path = model_folder_files(folder, "checkpoint")
    try:
        cfg = load_config(cfg_path, overrides)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint config {cfg_path} is invalid: {e}") from None
    verify_safetensors(weights)
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001  (SafetensorError, OSError, ...)
        raise CheckpointError(f"checkpoint weights {weights} are unreadable: {e}") from None
    return cfg, state


def verify_safetensors(path: str | os.PathLike) -> None:
    """Check a safetensors file's header and that its size is exactly what the header describes (a truncated
    or padded file raises :class:`CheckpointError`) without reading the tensors."""
    import json
    import struct

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        raise CheckpointError(f"{path} is damaged: {size} bytes, its header describes {expected} "
                              "(truncated or partly written)")


def check_weights(state: dict, own: dict, source) -> dict:
    """Stored tensors against the model's own (meta) tensors: integer/bool tensors where the model has floats and
    non-finite values raise :class:`CheckpointError`; other float precisions are cast to the model's dtype."""
    wrong = [f"{k} ({state[k].dtype})" for k, t in own.items()
             if t.is_floating_point() and not state[k].is_floating_point()]
    if wrong:
        raise CheckpointError(f"checkpoint {source} has non-float tensors where the model needs floats: "
                              f"{len(wrong)}, e.g. {wrong[:3]}")
    bad = [k for k in own if state[k].is_floating_point() and not torch.isfinite(state[k]).all()]
    if bad:
        raise CheckpointError(f"checkpoint {source} has non-finite weights (NaN/inf) in {len(bad)} tensors, "
                              f"e.g. {bad[:3]}")
    return {k: v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v
            for k, v in state.items()}


def load_checkpoint(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu", overrides=()):
    """Build the model a checkpoint folder describes and load its weights. Returns ``(model, cfg)``, eval mode.

    The model is built on the meta device and the stored tensors are assigned to it, so a large model is not
    randomly initialised first. The encoder's ``pretrained_path`` is never read (the checkpoint holds it).
    """
    from .models.lrm import LRM

    folder = Path(folder) if folder is not None else DEFAULT_CHECKPOINT
    cfg, state = read_checkpoint(folder, overrides)
    cfg.model.encoder.pretrained_path = None
    with torch.device("meta"):
        model = LRM(cfg, load_pretrained_encoder=False)
    own = model.state_dict()
    check_keys(state, own, sorted(set(own) - set(state)), f"checkpoint {folder} does not match its config")
    state = check_weights(state, own, folder)
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_nonpersistent_buffers(model)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors left uninitialised after loading {folder}: {left[:5]}")
    return model.to(device).eval(), cfg


def check_keys(state: dict, own: dict, missing: List[str], what: str) -> None:
    """Raise :class:`CheckpointError` (``what``: counts and examples) when ``state`` has keys ``own`` lacks, lacks
    the ``missing`` ones, or has tensors of another shape."""
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
           if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{what}: {len(missing)} missing, {len(unexpected)} unexpected, {len(bad)} "
                              f"mis-shaped keys (e.g. {(missing + unexpected + bad)[:3]})")


def load_init_weights(model: torch.nn.Module, state: dict, source="the checkpoint", keep=()) -> List[str]:
    """Load ``state`` into ``model`` to start training from it (``--init-from``): strict, except that a module of
    :data:`NOOP_MODULES` which the model has and the checkpoint lacks *entirely* keeps its fresh zero-initialised
    weights (e.g. a one-view checkpoint into a ``multiview`` model: the model's V = 1 output then equals the
    one-view model's bit for bit); extra transformer blocks start as the identity (:func:`deepen_blocks`). Anything
    else missing, unexpected or mis-shaped raises :class:`CheckpointError`. Returns the prefixes left fresh (logged).
    ``keep``: key prefixes (``train.init_keep``, e.g. ``encoder.``) where the model keeps its own weights, as built
    (a new, pretrained encoder), and the checkpoint's are ignored: the model then does *not* start as the checkpoint's."""
    own = model.state_dict()
    keep = tuple(keep)
    for prefix in keep:
        if not prefix:
            raise CheckpointError("train.init_keep: an empty prefix would keep every weight (the checkpoint would be "
                                  "ignored); name module prefixes such as encoder.")
        if not any(k.startswith(prefix) for k in own):
            raise CheckpointError(f"train.init_keep {prefix!r} matches no weight of this model")
    state = {k: v for k, v in state.items() if not k.startswith(keep)} if keep else dict(state)
    own_all, own = own, {k: v for k, v in own.items() if not k.startswith(keep)} if keep else own
    for k in pad_kernels(state, model):
        log.info("init from %s: %s zero-padded to %s (overlapping upsampler; the planes start as the checkpoint's)",
                 source, k, tuple(own[k].shape))
    overlapping = [k for k in WIDENED_KERNELS if k in own
                   and any(getattr(model.get_submodule(k.rsplit(".", 1)[0]), "padding", (0,)))]
    for k in widen_kernels(state, own, skip=overlapping):
        log.info("init from %s: %s widened to %s (the planes start as the checkpoint's, nearest-upsampled)",
                 source, k, tuple(own[k].shape))
    added = deepen_blocks(state, own)
    if added:
        log.info("init from %s: transformer blocks %s added with zero output projections (the model starts as the "
                 "checkpoint's)", source, added)
    missing = sorted(set(own) - set(state))
    fresh = []
    for prefix, (what, zero_keys) in NOOP_MODULES.items():
        mine = [k for k in own if k.startswith(prefix)]
        if mine and not any(k.startswith(prefix) for k in state):
            not_zero = [k for k in zero_keys if k in own and bool(own[k].ne(0).any())]
            if not_zero:
                raise CheckpointError(f"{source} lacks {prefix[:-1]} and the model's own {not_zero[0]} is not "
                                      "zero: loading it fresh would change the model's output")
            fresh.append(prefix)
            missing = [k for k in missing if not k.startswith(prefix)]
    check_keys(state, own, missing, f"{source} does not fit this model")
    state = check_weights(state, {k: t for k, t in own.items() if k in state}, source)
    model.load_state_dict(state, strict=False)
    for prefix in keep:
        log.info("init from %s: %s keeps the model's own weights (train.init_keep; %d tensors)", source, prefix[:-1]
                 if prefix.endswith(".") else prefix, sum(k.startswith(prefix) for k in own_all))
    for prefix in fresh:
        log.info("init from %s: it has no %s (%s); that module starts at its zero initialisation, so the model "
                 "begins as the checkpoint's", source, prefix[:-1], NOOP_MODULES[prefix][0])
    return fresh


def _rebuild_nonpersistent_buffers(model) -> None:
    """Buffers that are not saved (``persistent=False``) derive from the config: recreate them as ``__init__``
    does (float32, so ``model.double()`` afterwards rounds them exactly like a freshly built model)."""
    enc = model.encoder
    for name, values in (("mean", enc.cfg.normalize_mean), ("std", enc.cfg.normalize_std)):
        enc.register_buffer(name, torch.tensor(list(values), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
