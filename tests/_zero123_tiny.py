"""A tiny random-weight Zero-1-to-3 folder in the public diffusers layout (tests/test_zero123.py and any test that
needs a ``--prior DIR``): same subfolders, file names, config keys and wiring as ``zero123-xl-diffusers``, with tiny
channel counts so it loads and runs in about a second on a CPU. Written with diffusers/transformers' own
``save_pretrained`` (safetensors), so the loader reads exactly what those libraries write."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lrm.diffusion.zero123 import CLIP_MEAN, CLIP_STD

#: the tiny model's CLIP embedding / cross-attention width
TINY_EMBED = 32


def scheduler_config(prediction_type: str = "epsilon") -> dict:
    """The public zero123-xl-diffusers scheduler config (DDIM, SD 1.x scaled-linear betas)."""
    return {"_class_name": "DDIMScheduler", "_diffusers_version": "0.18.2", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
            "num_train_timesteps": 1000, "prediction_type": prediction_type, "set_alpha_to_one": False,
            "steps_offset": 1, "trained_betas": None}


def write_tiny_zero123(path, seed: int = 0, prediction_type: str = "epsilon", projection_dir: str =
                       "clip_camera_projection") -> Path:
    """Write the folder at ``path`` (created; must not exist yet) and return it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = Path(path)
    root.mkdir(parents=True, exist_ok=False)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_EMBED, attention_head_dim=8, norm_num_groups=8)
    unet.save_pretrained(root / "unet", safe_serialization=True)
    # 256 px -> 32² latents: three downsamplings, as SD's VAE
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=256, scaling_factor=0.18215)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=TINY_EMBED))
    clip.save_pretrained(root / "image_encoder", safe_serialization=True)
    proj = torch.nn.Linear(TINY_EMBED + 4, TINY_EMBED)
    (root / projection_dir).mkdir()
    if projection_dir == "cc_projection":  # diffusers' community pipeline: CCProjection(in_channel, out_channel)
        cfg = {"_class_name": "CCProjection", "in_channel": TINY_EMBED + 4, "out_channel": TINY_EMBED}
        keys = "projection"
    else:  # zero123-xl-diffusers: CLIPCameraProjection(embedding_dim, additional_embeddings)
        cfg = {"_class_name": "CLIPCameraProjection", "_diffusers_version": "0.22.2", "additional_embeddings": 4,
               "embedding_dim": TINY_EMBED}
        keys = "proj"
    (root / projection_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({f"{keys}.weight": proj.weight.detach().contiguous(), f"{keys}.bias": proj.bias.detach().contiguous()},
              str(root / projection_dir / "diffusion_pytorch_model.safetensors"))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(prediction_type), indent=2))
    (root / "feature_extractor").mkdir()
    (root / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "resample": 3, "size": 224}, indent=2))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "Zero123Pipeline", "_diffusers_version": "0.22.2",
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    return root
