"""Writing a :class:`~lrm.pipeline.Result` to files: the one export path of infer.py and the web app (lrm.app).

    files = write_result(result, out_dir, formats=("glb", "obj"), radius=pipe.cfg.model.render.radius)
    files["glb"] -> [out_dir/mesh.glb]; files["obj"] -> [mesh.obj, mesh.mtl, texture...]

Files: ``<mesh_name>.<format>`` per mesh format (OBJ with its MTL and texture), ``triplane.safetensors`` (for
SDS refinement; metadata: the renderer radius), ``input.png`` (the preprocessed model input), ``input_mask.png`` (its alpha, for refinement) and, when the
result has turntable frames, ``turntable.<video_format>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .pipeline import export_mesh, save_video
from .preprocess import InputError

MESH_FORMATS = ("glb", "obj", "ply")


def require_surface(result, image) -> None:
    """Refuse a result whose mesh is empty (the density never reached the surface level)."""
    if len(result.mesh.faces) == 0:
        raise InputError(f"no surface found for {image} (try a lower --mc-threshold)")


def save_triplane(triplane, path: Path, radius: Optional[float] = None) -> Path:
    from safetensors.torch import save_file

    metadata = {"radius": str(radius)} if radius is not None else None
    save_file({"triplane": triplane.contiguous()}, str(path), metadata=metadata)
    return path


def save_image(image: np.ndarray, path: Path) -> Path:
    """Float [H, W, 3] image in [0, 1] -> 8-bit PNG."""
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def write_result(result, out_dir: Path, formats: Sequence[str] = ("glb",), orientation: str = "viewer",
                 video_format: str = "mp4", radius: Optional[float] = None,
                 mesh_name: str = "mesh") -> Dict[str, List[Path]]:
    """Write every output of ``result`` under ``out_dir``; returns {kind: files} with kinds = the mesh formats,
    "triplane", "input" and (with frames) "video"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: Dict[str, List[Path]] = {}
    for fmt in formats:
        if fmt not in MESH_FORMATS:
            raise InputError(f"unknown mesh format {fmt!r} (one of {', '.join(MESH_FORMATS)})")
        files[fmt] = export_mesh(result.mesh, out_dir / f"{mesh_name}.{fmt}", fmt, orientation)
    files["triplane"] = [save_triplane(result.triplane, out_dir / "triplane.safetensors", radius)]
    files["input"] = [save_image(result.input_image, out_dir / "input.png")]
    if getattr(result, "input_mask", None) is not None:
        files["input"].append(save_image(np.repeat(result.input_mask[..., None], 3, -1), out_dir / "input_mask.png"))
    if result.frames is not None:
        files["video"] = [save_video(result.frames, out_dir / f"turntable.{video_format}")]
    return files
