"""Files of a refinement: reading infer.py's output folder, loading the prior, writing the refined folder.

infer.py writes OUT/<name>/ with ``triplane.safetensors`` (key ``triplane``), ``input.png`` (the preprocessed input
composited on the checkpoint's input background), ``input_mask.png`` (its alpha; folders from before it existed get a
mask estimated from the background colour) and ``timings.json`` (records the checkpoint). A refinement is written
to a new folder (default ``OUT/<name>-refined-<mode>``) with the lrm/outdir.py rules: built in a temporary sibling,
renamed into place, never replacing a folder this program did not write.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .loop import RefineConfig, RefineError, RefineResult, check_triplane, with_decoder

log = logging.getLogger(__name__)

DEFAULT_PRIOR = Path(__file__).resolve().parent.parent.parent / "checkpoints" / "zero123-tiny"
TRIPLANE_NAME, INPUT_NAME, MASK_NAME, RECORD_NAME = "triplane.safetensors", "input.png", "input_mask.png", "timings.json"


def load_prior(path=None, device="cpu"):
    """The diffusion prior through ``lrm.diffusion.load_prior`` (imported lazily: it is optional)."""
    path = Path(path) if path else DEFAULT_PRIOR
    try:
        from ..diffusion import load_prior as _load
    except ImportError as e:
        raise RefineError(f"SDS refinement needs a diffusion prior, but lrm.diffusion.load_prior is not available "
                          f"({e}); use --mode ref, which needs none") from None
    if not path.exists():
        raise RefineError(f"diffusion prior not found: {path} (train one with `train.py --config zero123-tiny` or "
                          "pass --prior DIR; --mode ref needs none)")
    try:
        return _load(path, device=device)
    except TypeError:  # a loader without a device keyword
        return _load(path)


def read_image(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            return np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise RefineError(f"cannot read {path}: {e}") from None


def load_triplane_file(path: Path) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise RefineError(f"{path} not found: refine reads the folder infer.py wrote for one image "
                          "(OUT/<name>/ with triplane.safetensors and input.png)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RefineError(f"cannot read {path}: {e}") from None
    if "triplane" not in tensors:
        raise RefineError(f"{path} holds no 'triplane' tensor (keys: {sorted(tensors)})")
    return tensors["triplane"]


def read_output_dir(out_dir: Path, lrm=None) -> dict:
    """{triplane [1, 3, C, H, W], image [S, S, 3], mask [S, S] or None, record (timings.json or {})} of an infer.py
    folder; with ``lrm`` the triplane's shape is checked against its decoder."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise RefineError(f"not a folder: {out_dir} (give the folder infer.py wrote for one image)")
    tri = load_triplane_file(out_dir / TRIPLANE_NAME)
    if lrm is not None:
        tri = check_triplane(tri, lrm, str(out_dir / TRIPLANE_NAME))
    if not (out_dir / INPUT_NAME).is_file():
        raise RefineError(f"{out_dir / INPUT_NAME} not found (the preprocessed input infer.py saves)")
    image = read_image(out_dir / INPUT_NAME, 3)
    mask = read_image(out_dir / MASK_NAME, 1) if (out_dir / MASK_NAME).is_file() else None
    if mask is not None and mask.shape != image.shape[:2]:
        raise RefineError(f"{out_dir / MASK_NAME} is {mask.shape}, {out_dir / INPUT_NAME} is {image.shape[:2]}")
    record = {}
    if (out_dir / RECORD_NAME).is_file():
        try:
            record = json.loads((out_dir / RECORD_NAME).read_text())
        except ValueError:
            record = {}
    return {"triplane": tri, "image": image, "mask": mask, "record": record if isinstance(record, dict) else {}}


def refined_result(pipe, res: RefineResult, image: np.ndarray, video: bool = False, mask=None):
    """A :class:`lrm.pipeline.Result` for the refined triplane: mesh (the pipeline's settings), turntable."""
    from ..pipeline import Pipeline, Result
    from ..preprocess import InputError

    model = with_decoder(pipe.model, res.decoder)
    opts = {**pipe.opts, **({"mc_threshold": float(res.level)} if res.level is not None else {})}
    p = Pipeline(model, pipe.cfg, pipe.device, **opts) if res.decoder is not None or opts != pipe.opts else pipe
    tri = res.triplane.to(pipe.device)
    timings, stats = {}, {}
    with torch.no_grad():
        mesh = p.extract_mesh(tri, timings, stats)
    if len(mesh.faces) == 0:
        raise InputError(f"the refined triplane has no surface at density level {p.opts['mc_threshold']:g} "
                         "(try fewer steps or --mode ref)")
    frames = p.turntable(tri) if video else None
    return Result(mesh=mesh, triplane=res.triplane, input_image=image, timings=timings, frames=frames,
                  stats=stats, input_mask=mask)


def write_refined(pipe, res: RefineResult, image: np.ndarray, final: Path, cfg: RefineConfig, *, mask=None,
                  fmt: str = "glb", orientation: str = "viewer", video: bool = False, video_format: str = "mp4",
                  overwrite: bool = False, source: Optional[str] = None, tmp: Optional[Path] = None) -> Path:
    """Publish the refined mesh, triplane (+ decoder), input, turntable and ``refine.json`` to ``final``.
    ``tmp``: a temporary folder already holding files to publish with them (progress renders)."""
    from ..outdir import check_target, make_temp_dir, publish
    from ..outputs import write_result

    check_target(final, overwrite)
    tmp = tmp or make_temp_dir(final)
    try:
        result = refined_result(pipe, res, image, video, mask)
        files = write_result(result, tmp, [fmt], orientation, video_format, radius=pipe.cfg.model.render.radius)
        if res.decoder is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in res.decoder.state_dict().items()}, str(tmp / "decoder.safetensors"),
                      metadata={"format": "lrm-decoder"})
        info = {"source": source, "mode": cfg.mode, "config": _jsonable(asdict(cfg)), "stats": res.stats,
                "first": res.history[0] if res.history else None, "last": res.history[-1] if res.history else None,
                "faces": int(len(result.mesh.faces)), "mesh": [f.name for f in files[fmt]],
                "mc_threshold": float(res.level if res.level is not None else pipe.opts["mc_threshold"]),
                "decoder": "decoder.safetensors" if res.decoder is not None else None}
        (tmp / "refine.json").write_text(json.dumps(info, indent=2))
        (tmp / "history.json").write_text(json.dumps(res.history))
        return publish(tmp, final, overwrite=overwrite)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def refine_to_folder(pipe, triplane, image: np.ndarray, mask, prior, cfg: RefineConfig, final: Path, *,
                     fmt: str = "glb", orientation: str = "viewer", video: bool = False, video_format: str = "mp4",
                     overwrite: bool = False, source: Optional[str] = None, progress: bool = True) -> RefineResult:
    """Refine and publish ``final`` (progress renders, mesh, triplane, refine.json...) all at once; on any error
    nothing is left behind. The pipeline stage of infer.py and the body of ``python -m lrm.refine``."""
    import shutil

    from ..outdir import check_target, make_temp_dir
    from .loop import refine

    check_target(final, overwrite)
    tmp = make_temp_dir(final)
    try:
        res = refine(triplane, pipe, image, prior, cfg, mask=mask, out_dir=tmp, progress=progress)
        write_refined(pipe, res, image, final, cfg, mask=mask, fmt=fmt, orientation=orientation, video=video,
                      video_format=video_format, overwrite=overwrite, source=source, tmp=tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return res


def default_target(out_dir: Path, mode: str) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}-refined-{mode}"
