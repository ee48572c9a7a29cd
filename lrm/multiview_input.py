"""Several photos of one object with known cameras -> one triplane and mesh (``infer.py a.png b.png --cameras
cams.json``; the cameras file: lrm/cameras_file.py, docs/inference.md).

Each image is preprocessed exactly like a single input (foreground, square crop so the object fills
``foreground_ratio``, resize, composite on the input background); the crop is carried into that view's intrinsics
(``crop_intrinsics``), so the cameras still describe the images the model sees. The cameras are re-expressed in the
first view's frame as the training loader does (``canonical_cameras``) and all views go to the model at once
(``Pipeline.run_views``). The mesh is in the canonical frame of the first view, like a single-image result.
"""
from __future__ import annotations

import time
from typing import List, Sequence, Tuple

import numpy as np
import torch

from .cameras_file import CameraRig, CamerasFileError, canonical_cameras, crop_intrinsics


def prepare_views(pipe, images: Sequence, rig: CameraRig) -> Tuple[np.ndarray, torch.Tensor, List[str]]:
    """(preprocessed views [V, S, S, 3], camera vectors [V, 16] in view 0's canonical frame, mask sources)."""
    if len(images) != len(rig.c2w):
        raise CamerasFileError(f"{len(rig.c2w)} camera(s) for {len(images)} image(s)")
    views, intr, sources = [], [], []
    for image, k in zip(images, rig.intrinsics):
        pre = pipe.preprocess(image)
        views.append(pre.image)
        intr.append(crop_intrinsics(k, pre.source_hw, pre.window))
        sources.append(pre.mask_source)
    return np.stack(views), canonical_cameras(rig.c2w, torch.stack(intr)), sources


def run_views(pipe, images: Sequence, rig: CameraRig, video: bool = False, progress=None):
    """Images (paths or arrays) + their cameras -> (:class:`lrm.pipeline.Result`, views [V, S, S, 3]).
    ``Result.input_image`` is the first view; the mesh is in its canonical frame."""
    if len(images) > 1 and getattr(pipe.model, "view_embed", None) is None:
        raise CamerasFileError(f"{len(images)} views need a multi-view checkpoint (model.transformer.multiview; "
                               "e.g. one trained with --config mv-tiny); this one takes one view")
    report = progress or (lambda stage, done: None)
    timings, stats = {}, {"views": len(images)}
    report("preprocess", 0.0)
    t = time.perf_counter()
    views, cams, sources = prepare_views(pipe, images, rig)
    timings["preprocess"] = time.perf_counter() - t
    stats["mask_source"] = ",".join(sources)
    result = pipe.run_views(views, cams, timings, stats, video, report)
    return result, views
