"""Shared settings for the trainer tests: a micro model so every step takes milliseconds on CPU."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MICRO = [
    "model.encoder.image_size=32", "model.encoder.patch_size=8", "model.encoder.dim=48", "model.encoder.depth=1",
    "model.encoder.heads=2", "model.transformer.token_dim=48", "model.transformer.heads=2",
    "model.transformer.depth=1", "model.transformer.plane_tokens=4", "model.transformer.camera_embed_dim=48",
    "model.upsampler.channels=8", "model.decoder.hidden=32", "model.decoder.hidden_layers=1",
    "model.render.n_samples=8", "model.render.n_importance=8",
    "data.source=synthetic", "data.image_size=24", "data.num_views_target=2", "train.render.rays_per_view=64",
    "train.batch_size=1", "data.input_background=null", "train.val_resolution=null",
    "train.progress=false", "train.val_every=0", "train.image_every=0", "train.log_every=1",
    "train.warmup_steps=2", "train.lr=1e-3",
]


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def load_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


PY = sys.executable
