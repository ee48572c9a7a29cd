"""The `products` mesh source (lrm/data/sources/products.py): household products with photo labels.
Deterministic, valid for the renderer, labels visible in renders, open bowls, and a tiny build."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

pytest.importorskip("moderngl")
pytest.importorskip("webdataset")

from lrm.data.sources import get_source  # noqa: E402
from lrm.data.mesh import normalize_parts, validate  # noqa: E402

P = get_source("products")


from _gl import gl_ok  # noqa: E402

needs_gl = pytest.mark.skipif(not gl_ok(), reason="no headless EGL/OpenGL context (make install-system)")


def _render(parts, res=64, azimuths=(0.0, 90.0, 180.0, 270.0), elevation=10.0):
    import torch

    from lrm.cameras import intrinsics_from_fov, orbit_camera
    from lrm.data.render_gl import render_mesh

    parts, _ = normalize_parts(parts)
    az = torch.tensor(azimuths)
    c2w = orbit_camera(az, torch.full_like(az, elevation), 2.0).numpy()
    K = intrinsics_from_fov(40.0).expand(len(az), 4).numpy()
    return render_mesh(parts, c2w, K, res, samples=0, depth=False, normals=False)["rgba"]


def _tex_bytes(p):
    img = getattr(getattr(p.visual, "material", None), "image", None)
    return None if img is None else np.asarray(img).tobytes()


def winding_number(parts, q):
    """Generalised winding number of the union of the parts' triangles at point q (van Oosterom-Strackee)."""
    w = 0.0
    for p in parts:
        t = np.asarray(p.vertices)[np.asarray(p.faces)] - np.asarray(q)[None, None]
        a, b, c = t[:, 0], t[:, 1], t[:, 2]
        la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
        num = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = la * lb * lc + np.einsum("ij,ij->i", a, b) * lc + np.einsum("ij,ij->i", b, c) * la \
            + np.einsum("ij,ij->i", c, a) * lb
        w += float((2 * np.arctan2(num, den)).sum() / (4 * np.pi))
    return w


def test_pool_and_interface():
    ok, why = P.available()
    assert ok, why
    pool = P.texture_pool()
    assert len(pool) >= 10 and {"skimage", "matplotlib"} <= {e[0] for e in pool}
    assert not any("libero" in e[2].lower() for e in pool)
    for pkg in sorted({e[0] for e in pool}):  # the first image of every package loads offline
        path = next(e[2] for e in pool if e[0] == pkg)
        assert min(P.load_image(path).size) >= 64
    objs = list(P.objects(num=3, seed=4))
    assert [o.uid for o in objs] == ["prod-4-000000", "prod-4-000001", "prod-4-000002"]
    assert all(o.source == "products" and o.licence.startswith("geometry CC0-1.0") for o in objs)


def test_deterministic():
    for i in range(6):
        a, b = P.make_object(3, i), P.make_object(3, i)
        assert len(a) == len(b)
        for p, q in zip(a, b):
            assert np.array_equal(p.vertices, q.vertices) and np.array_equal(p.faces, q.faces)
            assert _tex_bytes(p) == _tex_bytes(q)
            if p.visual.kind == "face":
                assert np.array_equal(p.visual.face_colors, q.visual.face_colors)
    x, y = P.make_object(3, 0), P.make_object(3, 1)
    assert not (len(x) == len(y) and all(p.vertices.shape == q.vertices.shape and np.allclose(p.vertices, q.vertices)
                                         for p, q in zip(x, y)))


@pytest.mark.parametrize("kind", P.KINDS)
def test_every_kind_valid_for_the_renderer(kind):
    from lrm.data.render_gl import mesh_arrays

    textured = 0
    for i in range(4):
        parts = P.make_object(0, i, kind=kind)
        validate(parts)
        norm, T = normalize_parts(parts)
        assert np.isfinite(T).all() and np.abs(np.concatenate([p.vertices for p in norm])).max() <= 0.5 + 1e-6
        for p in parts:
            if isinstance(p.visual, trimesh.visual.TextureVisuals):
                assert p.visual.uv is not None and len(p.visual.uv) == len(p.vertices)
                assert np.isfinite(p.visual.uv).all()
                data, image = mesh_arrays(p)
                assert image is not None and image.shape[2] == 4 and (image[..., 3] == 255).all()  # no cut-outs
                textured += 1
            else:
                assert p.visual.kind == "face"
    if kind not in ("bowl", "mug"):  # these are plain ceramic most of the time
        assert textured > 0


def test_bowls_and_mugs_are_open_cans_are_closed():
    for i in range(3):
        rng = np.random.default_rng(i)
        for make in (P.bowl, P.mug):
            parts = make(rng, [None])
            lo, hi = np.concatenate([p.vertices for p in parts[:3]]).min(0), np.concatenate([p.vertices for p in parts[:3]]).max(0)
            cavity = [0.0, 0.0, lo[2] + 0.6 * (hi[2] - lo[2])]
            assert abs(winding_number(parts, cavity)) < 0.5, make.__name__
            wall = [0.0, 0.0, lo[2] + 0.02 * (hi[2] - lo[2])]  # inside the base: solid
            assert winding_number(parts[:3], wall) > 0.5
        can = P.can(rng, [None])
        hi = np.concatenate([p.vertices for p in can]).max(0)
        assert winding_number(can, [0.0, 0.0, hi[2] / 2]) > 0.5


@needs_gl
def test_labelled_can_shows_its_label():
    def two_colour(w, h):
        a = np.zeros((h, w, 3), np.uint8)
        a[:, : w // 2] = (230, 20, 20)
        a[:, w // 2:] = (20, 20, 230)
        return Image.fromarray(a)

    rgba = _render(P.can(np.random.default_rng(0), [two_colour]))
    fg = rgba[rgba[..., 3] > 0.99][:, :3]
    red = (fg[:, 0] > 2 * fg[:, 1]) & (fg[:, 0] > 2 * fg[:, 2])
    blue = (fg[:, 2] > 2 * fg[:, 0]) & (fg[:, 2] > 2 * fg[:, 1])
    assert red.mean() > 0.1 and blue.mean() > 0.1
    grey = np.abs(fg - fg.mean(1, keepdims=True)).max(1) < 0.04  # the metallic lids
    assert grey.mean() > 0.02
    # a photo label: the foreground's colours differ from the same can with a plain label
    photo = _render(P.can(np.random.default_rng(1), [lambda w, h: P.design(np.random.default_rng(2), P.texture_pool()[0][2], (w, h))]))
    flat = _render(P.can(np.random.default_rng(1), [None]))
    hist = lambda x: np.histogramdd(x[x[..., 3] > 0.99][:, :3], bins=4, range=[(0, 1)] * 3)[0].ravel()  # noqa: E731
    hp, hf = hist(photo), hist(flat)
    assert (hp > 0).sum() > (hf > 0).sum()
    assert np.abs(hp / hp.sum() - hf / hf.sum()).sum() > 0.5


@needs_gl
def test_build_four_products(tmp_path):
    from lrm.data.build import build, parse_args

    out = tmp_path / "shards"
    man = build(parse_args(["--sources", "products", "--num", "4", "--resolution", "64", "--views", "4",
                            "--workers", "1", "--out", str(out), "--quiet"]))
    assert man["counts"]["objects"] == 4 and man["by_source"] == {"products": {"ok": 4, "skipped": 0}}
    assert "products" in man["licences"]
    assert sorted(p.name for p in out.glob("*.tar"))
