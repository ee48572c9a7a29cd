"""Input images: load robustly, find the foreground, crop / pad / rescale / composite (docs/conventions.md).

Every failure raises :class:`InputError` with one human-readable line; the CLI prints it and exits non-zero.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

MIN_SIDE = 16
MAX_PIXELS = 8192 * 8192
#: Larger images are shrunk by an integer factor right after decoding, before any float copy (an 8000^2 RGBA
#: image is 1 GB as float32; the model sees 256^2 of it).
WORK_SIDE = 2048


class InputError(ValueError):
    """Bad user input (image, mask, options): one clear line, no traceback."""


@dataclass
class Preprocessed:
    image: np.ndarray  # [S, S, 3] float32 in [0, 1], composited on the background
    rgba: np.ndarray  # [S, S, 4] float32, straight alpha (the cropped foreground)
    mask_source: str  # alpha | mask | segmentation | rembg
    # the square cut from the loaded image, (x0, y0, side) in its pixels (may extend past its border), and that
    # image's (H, W): what camera intrinsics need to follow the crop (lrm.cameras_file.crop_intrinsics)
    window: Optional[Tuple[int, int, int]] = None
    source_hw: Optional[Tuple[int, int]] = None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Any common image file -> float32 RGBA [H, W, 4] in [0, 1] (grayscale, palette, 16-bit handled)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"input image not found: {path}")
    if path.is_dir():
        raise InputError(f"input is a directory, not an image: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"input image is empty (0 bytes): {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise InputError(f"input image is too large ({w}x{h}; at most {MAX_PIXELS} pixels): {path}")
            if min(w, h) < MIN_SIDE:
                raise InputError(f"input image is too small ({w}x{h}; at least {MIN_SIDE} px a side): {path}")
            img.load()
            img = _shrink(ImageOps.exif_transpose(img))
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"not a readable image file: {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"image file is corrupt or truncated ({e}): {path}") from None
    except Image.DecompressionBombError:
        raise InputError(f"input image is too large: {path}") from None
    return _to_rgba_float(img)


def _shrink(img):
    """Reduce by the smallest integer factor that brings the longer side to at most :data:`WORK_SIDE`."""
    from PIL import Image

    factor = -(-max(img.size) // WORK_SIDE)
    if factor <= 1:
        return img
    size = (-(-img.size[0] // factor), -(-img.size[1] // factor))
    if img.mode.startswith("I;16"):  # 16-bit: reduce() cannot, a box resize keeps the mode (and its scaling)
        return img.resize(size, Image.BOX)
    if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGBA")
    return img.reduce(factor)


def _to_rgba_float(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        a = a / (65535.0 if a.max() > 255 or mode.startswith("I;16") else 255.0)
        g = np.clip(a, 0, 1).astype(np.float32)
        return np.dstack([g, g, g, np.ones_like(g)])
    if mode == "F":
        g = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
        return np.dstack([g, g, g, np.ones_like(g)])
    return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0


def load_mask(path: str | os.PathLike, shape: Sequence[int]) -> np.ndarray:
    m = load_image(path)
    if m.shape[:2] != tuple(shape[:2]):
        raise InputError(f"mask size {m.shape[1]}x{m.shape[0]} differs from the image's {shape[1]}x{shape[0]}: {path}")
    # white-on-black masks, or an alpha mask
    return np.where(m[..., 3].min() < 1.0, m[..., 3], m[..., :3].mean(-1)).astype(np.float32)


def segment_plain_background(rgb: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
    """Foreground of an object photographed on a plain background (no alpha).

    The background colour is the median of the border pixels; pixels farther than ``threshold`` from it
    (default: adaptive, from the border's own spread) are foreground; the largest connected component is
    kept and its holes filled. Soft edges come from the colour distance.
    """
    from scipy import ndimage

    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], 0)
    bg = np.median(border, 0)
    spread = np.percentile(np.linalg.norm(border - bg, axis=-1), 95)
    thr = threshold if threshold is not None else max(0.08, 2.5 * spread)
    dist = np.linalg.norm(rgb - bg, axis=-1)
    hard = dist > thr
    labels, n = ndimage.label(hard)
    if n == 0:
        return np.zeros(rgb.shape[:2], np.float32)
    sizes = ndimage.sum(hard, labels, range(1, n + 1))
    keep = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    soft = np.clip((dist - 0.5 * thr) / (0.5 * thr), 0, 1)
    return np.where(keep, np.maximum(soft, ndimage.binary_erosion(keep, iterations=1)), 0).astype(np.float32)


def _rembg_mask(rgb: np.ndarray) -> Optional[np.ndarray]:  # pragma: no cover - optional dependency
    """Use rembg when it is installed *and* its model is already on disk (U2NET_HOME); never downloads."""
    try:
        import rembg  # noqa: F401
    except Exception:
        return None
    home = Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net"))
    if not (home / "u2net.onnx").is_file():
        return None
    from PIL import Image

    out = rembg.remove(Image.fromarray((rgb * 255).astype(np.uint8)))
    return np.asarray(out, dtype=np.float32)[..., 3] / 255.0


def foreground(rgba: np.ndarray, mask: Optional[np.ndarray] = None, segmentation: str = "auto"):
    """Alpha in [0, 1] of the object and where it came from."""
    if mask is not None:
        return mask, "mask"
    alpha = rgba[..., 3]
    if alpha.max() <= 0.0:
        raise InputError("image is fully transparent: there is no foreground")
    if alpha.min() < 0.999:
        return alpha, "alpha"
    if segmentation in ("auto", "rembg"):
        m = _rembg_mask(rgba[..., :3])
        if m is not None:
            return m, "rembg"
        if segmentation == "rembg":
            raise InputError("rembg is not installed or its model is not in U2NET_HOME (never downloaded)")
    return segment_plain_background(rgba[..., :3]), "segmentation"


def crop_and_composite(rgba: np.ndarray, alpha: np.ndarray, size: int, foreground_ratio: float = 0.85,
                       background=(1.0, 1.0, 1.0)) -> Preprocessed:
    """Crop to the foreground, pad square so its longer side fills ``foreground_ratio``, resize, composite."""
    from PIL import Image

    ys, xs = np.nonzero(alpha > 0.5)
    if len(ys) < 4:
        raise InputError("could not find a foreground object in the image (empty mask)")
    fg_frac = len(ys) / alpha.size
    if fg_frac > 0.98:
        raise InputError("the foreground covers the whole image: give an image with alpha, a plain background or --mask")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.concatenate([rgba[..., :3], alpha[..., None]], -1)[y0:y1, x0:x1]
    h, w = rgba.shape[:2]
    side = int(np.ceil(max(h, w) / foreground_ratio))
    canvas = np.zeros((side, side, 4), np.float32)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy:oy + h, ox:ox + w] = rgba
    # resize premultiplied colour and alpha so edges don't bleed background
    premul = np.concatenate([canvas[..., :3] * canvas[..., 3:], canvas[..., 3:]], -1)
    chans = [np.asarray(Image.fromarray(premul[..., c]).resize((size, size), Image.BILINEAR if side < size else Image.BOX))
             for c in range(4)]
    premul = np.clip(np.stack(chans, -1), 0, 1)
    a = premul[..., 3:]
    rgb = np.where(a > 1e-6, premul[..., :3] / np.maximum(a, 1e-6), 0.0)
    bg = np.asarray(background, np.float32)
    image = premul[..., :3] + (1 - a) * bg
    return Preprocessed(image=image.astype(np.float32), rgba=np.concatenate([rgb, a], -1).astype(np.float32),
                        mask_source="", window=(int(x0 - ox), int(y0 - oy), side), source_hw=alpha.shape[:2])


def preprocess(image, size: int = 256, mask=None, foreground_ratio: float = 0.85, background=(1.0, 1.0, 1.0),
               segmentation: str = "auto") -> Preprocessed:
    """Path or RGBA/RGB array -> :class:`Preprocessed`."""
    if isinstance(image, (str, os.PathLike)):
        rgba = load_image(image)
    else:
        arr = np.asarray(image)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        if arr.ndim == 2:
            arr = np.dstack([arr] * 3)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InputError(f"image array must be HxWx3 or HxWx4, got shape {arr.shape}")
        rgba = arr if arr.shape[2] == 4 else np.dstack([arr, np.ones(arr.shape[:2], arr.dtype)])
        rgba = rgba.astype(np.float32)
    m = None
    if mask is not None:
        m = load_mask(mask, rgba.shape) if isinstance(mask, (str, os.PathLike)) else np.asarray(mask, np.float32)
    alpha, source = foreground(rgba, m, segmentation)
    out = crop_and_composite(rgba, alpha, size, foreground_ratio, background)
    out.mask_source = source
    return out
