"""Input preprocessing: alpha, plain-background segmentation, crop/pad ratio, and every bad-input case."""
import numpy as np
import pytest
from PIL import Image

from _images import huge_png

from lrm.preprocess import InputError, load_image, preprocess, segment_plain_background


def disc_rgba(h=120, w=200, cx=130, cy=50, r=30):
    yy, xx = np.mgrid[0:h, 0:w]
    a = ((xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2).astype(np.float32)
    rgb = np.zeros((h, w, 3), np.float32)
    rgb[..., 0] = 0.8
    rgb[..., 2] = 0.2
    return np.dstack([rgb, a])


def test_alpha_crop_pad_ratio_and_composite():
    out = preprocess(disc_rgba(), size=128, foreground_ratio=0.85)
    assert out.mask_source == "alpha"
    assert out.image.shape == (128, 128, 3) and out.image.dtype == np.float32
    fg = out.rgba[..., 3] > 0.5
    ys, xs = np.nonzero(fg)
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    assert side / 128 == pytest.approx(0.85, abs=0.03)
    assert abs((ys.min() + ys.max()) / 2 - 63.5) < 2 and abs((xs.min() + xs.max()) / 2 - 63.5) < 2
    # white background outside, object colour inside
    assert np.allclose(out.image[0, 0], 1.0) and np.allclose(out.image[64, 64], [0.8, 0.0, 0.2], atol=0.02)


def test_plain_background_segmentation_matches_truth():
    rgba = disc_rgba()
    truth = rgba[..., 3] > 0.5
    rgb = np.where(truth[..., None], rgba[..., :3], np.array([0.93, 0.94, 0.95], np.float32))
    rgb = rgb + np.random.default_rng(0).normal(0, 0.01, rgb.shape).astype(np.float32)
    m = segment_plain_background(np.clip(rgb, 0, 1)) > 0.5
    iou = (m & truth).sum() / (m | truth).sum()
    assert iou > 0.95
    assert preprocess(np.clip(rgb, 0, 1), size=64).mask_source == "segmentation"


def _save(tmp_path, name, arr, mode=None):
    p = tmp_path / name
    Image.fromarray(arr, mode=mode).save(p) if mode else Image.fromarray(arr).save(p)
    return p


@pytest.mark.parametrize("kind", ["gray", "palette", "sixteen", "rgb"])
def test_image_modes_load(tmp_path, kind):
    base = (disc_rgba()[..., 3] * 200 + 20).astype(np.uint8)
    if kind == "gray":
        p = _save(tmp_path, "g.png", base)
    elif kind == "palette":
        p = tmp_path / "p.png"
        Image.fromarray(base).convert("P").save(p)
    elif kind == "sixteen":
        p = tmp_path / "s.png"
        Image.fromarray(base.astype(np.uint16) * 257).save(p)
    else:
        p = _save(tmp_path, "c.jpg", np.dstack([base] * 3))
    img = load_image(p)
    assert img.shape == (120, 200, 4) and 0 <= img.min() and img.max() <= 1
    assert abs(img[50, 130, 0] - 220 / 255) < 0.03  # object pixel survives the mode conversion
    assert preprocess(p, size=64).image.shape == (64, 64, 3)


def test_bad_inputs_raise_one_clear_error(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nope.png"
    (tmp_path / "empty.png").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.png"
    (tmp_path / "text.png").write_text("not an image at all")
    cases["non-image"] = tmp_path / "text.png"
    full = tmp_path / "full.png"
    Image.fromarray((disc_rgba() * 255).astype(np.uint8)).save(full)
    (tmp_path / "trunc.png").write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    cases["truncated"] = tmp_path / "trunc.png"
    cases["tiny"] = _save(tmp_path, "tiny.png", np.zeros((1, 1, 3), np.uint8))
    cases["transparent"] = _save(tmp_path, "clear.png", np.zeros((64, 64, 4), np.uint8))
    for name, path in cases.items():
        with pytest.raises(InputError) as e:
            preprocess(path, size=64)
        assert "\n" not in str(e.value) and len(str(e.value)) < 300, name


def test_huge_image_is_refused_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    huge_png(p)
    with pytest.raises(InputError, match="too large"):
        load_image(p)


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored landscape with EXIF orientation 6 (rotate 90° clockwise to display) loads upright."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)  # left half red, right half blue as stored
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    img = load_image(tmp_path / "phone.jpg")
    expected = np.rot90(stored, k=-1) / 255.0  # clockwise: the stored left half becomes the top
    assert img.shape[:2] == expected.shape[:2] == (64, 32)
    assert np.abs(img[..., :3] - expected).mean() < 0.05
    assert img[8, 16, 0] > 0.9 and img[56, 16, 2] > 0.9  # red on top, blue at the bottom


def test_large_image_is_shrunk_before_float_conversion(tmp_path):
    """An 8000x6000 image of allowed size is reduced right after decoding: float arrays stay small."""
    import tracemalloc

    from lrm.preprocess import WORK_SIDE

    big = Image.new("RGB", (8000, 6000), (255, 255, 255))
    big.paste((200, 30, 30), (2000, 1500, 6000, 4500))
    big.save(tmp_path / "big.png", compress_level=1)
    del big
    tracemalloc.start()
    try:
        img = load_image(tmp_path / "big.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert max(img.shape[:2]) <= WORK_SIDE and img.shape[:2] == (1500, 2000)  # factor 4
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB of arrays (full-size float RGBA would be 768 MB)"
    assert np.allclose(img[750, 1000, :3], np.array([200, 30, 30]) / 255.0, atol=1e-6)
