"""Data pipeline tests: renderer geometry, shard round trip, loader, corrupt/broken inputs, split, resume,
eval set, Objaverse selection, layout converter. Small procedural objects at low resolution keep it fast."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

pytest.importorskip("moderngl")
pytest.importorskip("webdataset")

from lrm.cameras import camera_vector, intrinsics_from_fov, invert_rigid, orbit_camera, project_points, unproject_points  # noqa: E402
from lrm.data.mesh import MeshError, normalize_parts  # noqa: E402


from _gl import gl_ok as _gl_ok  # noqa: E402

pytestmark = pytest.mark.skipif(not _gl_ok(), reason="no headless EGL/OpenGL context (make install-system)")

RES = 64
VIEWS = 6


def _build(out, sources="procedural", num=6, extra=()):
    from lrm.data.build import build, parse_args

    args = parse_args(["--sources", sources, "--num", str(num), "--out", str(out), "--views", str(VIEWS),
                       "--resolution", str(RES), "--workers", "1", "--quiet", "--shard-size", "3",
                       "--procedural-num", str(num), *extra])
    return build(args)


@pytest.fixture(scope="module")
def shardset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    # val_fraction 0.3 so both splits (and the val orbit views) appear with few objects
    man = _build(out, num=8, extra=("--val-fraction", "0.3"))
    return out, man


def _proc_parts(uid):
    from lrm.data.sources import procedural

    seed, idx = (int(x) for x in uid.split("-")[1:])
    return normalize_parts(procedural.make_object(seed, idx))[0]


# --------------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------------
def check_geometry(mesh, rgba, depth, c2w, K, min_fg=0.99):
    """The convention check: the mesh's vertices projected with lrm.cameras land on foreground pixels
    (>= min_fg; a vertex exactly on the silhouette may miss the MSAA samples of its own pixel, so the mask is
    dilated by one pixel: sub-pixel offsets are checked separately with a centroid), never in front of the
    stored depth, and fully covered pixels unprojected with the stored
    depth lie on the mesh surface. ``rgba`` [V,H,W,4] (any scale), ``depth`` [V,H,W] camera z."""
    V, H, W = depth.shape
    c2w, K = torch.as_tensor(c2w, dtype=torch.float32), torch.as_tensor(K, dtype=torch.float32)
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    alpha = np.asarray(rgba[..., 3], np.float64) / (255.0 if rgba.dtype == np.uint8 else 1.0)
    pix = 2 * 2.0 * float(np.tan(np.radians(25))) / H  # generous pixel footprint at distance 2
    for i in range(V):
        uv, z = project_points(verts, c2w[i], K[i], H, W)
        ij = uv.floor().long()
        inside = (ij[:, 0] >= 0) & (ij[:, 0] < W) & (ij[:, 1] >= 0) & (ij[:, 1] < H)
        from scipy.ndimage import maximum_filter

        a = torch.from_numpy(maximum_filter(alpha[i], size=3))[ij[inside, 1], ij[inside, 0]]
        assert (a > 0).float().mean() >= min_fg, f"view {i}: vertices off the foreground"
        # depth at interior pixels (3x3 fully covered: no silhouette mixing) is never behind a vertex
        from scipy.ndimage import minimum_filter

        interior = torch.from_numpy(minimum_filter(alpha[i], size=3) > 0.999)[ij[inside, 1], ij[inside, 0]]
        # (3x3 minimum: the nearest surface around the vertex's pixel, robust to creases inside a pixel)
        dmin = torch.from_numpy(minimum_filter(depth[i], size=3))
        d = dmin[ij[inside, 1], ij[inside, 0]][interior]
        assert len(d) > 0 and (d <= z[inside][interior] + pix).float().mean() >= 0.99, f"view {i}: depth behind a vertex"
        full = np.argwhere(alpha[i] > 0.999)
        uvp = torch.tensor(full[:, ::-1] + 0.5, dtype=torch.float32)
        world = unproject_points(uvp, torch.from_numpy(depth[i][full[:, 0], full[:, 1]]), c2w[i], K[i], H, W).numpy()
        _, dist, _ = trimesh.proximity.closest_point(mesh, world)
        assert np.median(dist) < pix and np.quantile(dist, 0.95) < 3 * pix, f"view {i}: depth off the surface"


def test_render_projection_and_depth_match_cameras():
    """Rendered masks/depth agree with lrm.cameras' projection (non-square, off-centre principal point)."""
    from lrm.data.render_gl import render_mesh

    mesh = trimesh.creation.box(extents=(0.5, 0.3, 0.8))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(0.4, [1, 1, 0]))
    mesh = mesh.subdivide().subdivide()  # vertices inside faces too, not only on the silhouette
    c2w = orbit_camera(torch.tensor([10.0, 100.0, 220.0]), torch.tensor([-10.0, 25.0, 60.0]), 2.0)
    K = intrinsics_from_fov(torch.tensor([40.0, 30.0, 50.0]))
    K[1, 2] = 0.45  # off-centre principal point
    out = render_mesh(mesh, c2w, K, (RES, RES + 16))
    assert out["rgba"].shape == (3, RES, RES + 16, 4)
    check_geometry(mesh, out["rgba"], out["depth"], c2w, K)
    # an asymmetric object: its centre projects where its pixels are (catches mirrored images)
    m = trimesh.creation.icosphere(2, 0.1)
    m.apply_translation([0.3, 0.4, 0.5])
    cam, Kc = orbit_camera(30.0, 15.0, 2.0)[None], intrinsics_from_fov(40.0)[None]
    Kc[0, 2] = 0.47  # off-centre
    r = render_mesh(m, cam, Kc, RES)
    a = r["rgba"][0, ..., 3]
    ys, xs = np.mgrid[0:RES, 0:RES] + 0.5
    cu, cv = (a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()  # coverage-weighted centroid, sub-pixel
    uv, z = project_points(torch.tensor([[0.3, 0.4, 0.5]]), cam[0], Kc[0], RES, RES)
    assert 8 < uv[0, 0] < RES - 8 and 8 < uv[0, 1] < RES - 8  # fully in view
    # a sphere's image centroid is ~the projected centre (perspective shifts it by < 0.15 px here)
    assert abs(cu - uv[0, 0]) < 0.25 and abs(cv - uv[0, 1]) < 0.25
    assert abs(r["depth"][0][r["rgba"][0, ..., 3] > 0.5].min() - (z[0] - 0.1)) < 0.02
    # normals are unit length and face the camera
    n = out["normals"][0][out["rgba"][0, ..., 3] > 0.999]
    assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=2e-2)


def test_textures_and_vertex_colours_render():
    from lrm.data.render_gl import render_mesh

    m = trimesh.creation.icosphere(2, 0.4)
    m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=np.tile([255, 0, 0, 255], (len(m.vertices), 1)))
    r = render_mesh(m, orbit_camera(0.0, 0.0, 2.0)[None], intrinsics_from_fov(40.0)[None], 32, ambient=1.0)
    c = r["rgba"][0][r["rgba"][0, ..., 3] > 0.99][:, :3].mean(0)
    assert c[0] > 0.95 and c[1] < 0.05 and c[2] < 0.05
    from lrm.data.sources.textures import box_project_uv
    from PIL import Image

    tm, uv = box_project_uv(trimesh.creation.box((0.5, 0.5, 0.5)), 1.0)
    img = Image.new("RGB", (8, 8), (0, 0, 255))
    tm.visual = trimesh.visual.TextureVisuals(uv=uv, material=trimesh.visual.material.SimpleMaterial(image=img))
    r = render_mesh(tm, orbit_camera(30.0, 20.0, 2.0)[None], intrinsics_from_fov(40.0)[None], 32, ambient=1.0)
    c = r["rgba"][0][r["rgba"][0, ..., 3] > 0.99][:, :3].mean(0)
    assert c[2] > 0.9 and c[0] < 0.1


# --------------------------------------------------------------------------------------------------
# Shards: round trip and geometric consistency of what was stored
# --------------------------------------------------------------------------------------------------
def test_roundtrip_and_geometric_consistency(shardset):
    from lrm.data import read_samples

    out, man = shardset
    samples = list(read_samples(out))
    assert len(samples) == man["counts"]["objects"] == 8
    for s in samples:
        rec = s["record"]
        V = rec["num_views"]
        assert s["rgba"].shape == (V, RES, RES, 4) and s["rgba"].dtype == np.uint8
        assert V == VIEWS + (16 if rec["split"] == "val" else 0)
        # cameras are exactly the recorded orbit
        ref = orbit_camera(torch.tensor(rec["azimuth"]), torch.tensor(rec["elevation"]), rec["distance"])
        assert torch.allclose(torch.from_numpy(s["c2w"]), ref, atol=1e-5)
        # geometry: the normalised source mesh projects onto stored foreground, stored depth matches
        parts = _proc_parts(s["uid"])
        mesh = trimesh.util.concatenate([trimesh.Trimesh(p.vertices, p.faces, process=False) for p in parts])
        assert np.isclose(np.ptp(mesh.vertices, 0).max(), 1.0, atol=1e-5)
        check_geometry(mesh, s["rgba"], s["depth"], s["c2w"], s["intrinsics"])


def test_render_is_deterministic_and_matches_shard(shardset):
    from lrm.data import read_samples
    from lrm.data.render_gl import render_mesh

    out, _ = shardset
    s = next(iter(read_samples(out)))
    rec = s["record"]
    r = render_mesh(_proc_parts(s["uid"]), s["c2w"], s["intrinsics"], RES, light_dir=rec["light_dir"],
                    ambient=rec["ambient"], normals=False)
    again = (np.clip(r["rgba"], 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.abs(again.astype(int) - s["rgba"].astype(int)).max() <= 1
    assert np.allclose(r["depth"], s["depth"], atol=2e-4)


def test_split_is_stable_hash():
    from lrm.data.shards import split_of

    uids = [f"obj-{i}" for i in range(5000)]
    a = [split_of(u, 0.1) for u in uids]
    b = [split_of(u, 0.1) for u in reversed(uids)][::-1]
    assert a == b
    frac = a.count("val") / len(a)
    assert 0.08 < frac < 0.12
    assert split_of("proc-0-000001", 0.1) == split_of("proc-0-000001", 0.1)


def test_manifest_splits_match_hash(shardset):
    from lrm.data import read_samples
    from lrm.data.shards import split_of

    out, man = shardset
    for split in ("train", "val"):
        for s in read_samples(out, split=split, views=[0]):
            assert s["record"]["split"] == split == split_of(s["uid"], 0.3)
    assert man["counts"]["train"] + man["counts"]["val"] == 8


def test_resume_does_not_duplicate(tmp_path):
    from lrm.data import read_samples

    out = tmp_path / "ds"
    m1 = _build(out, num=4)
    assert m1["counts"]["objects"] == 4
    m2 = _build(out, num=7)  # 3 new objects, the 4 finished ones skipped
    uids = [s["uid"] for s in read_samples(out, views=[0])]
    assert len(uids) == len(set(uids)) == 7 == m2["counts"]["objects"]
    assert m2["runs"][-1]["args"]["num"] == 7 and len(m2["runs"]) == 2
    _build(out, num=7)  # idempotent: nothing new
    assert len([s["uid"] for s in read_samples(out, views=[0])]) == 7
    # an interrupted shard (.tmp) is discarded and its objects redone
    (out / "train-r009-00000.tar.tmp").write_bytes(b"partial")
    _build(out, num=7)
    assert not list(out.glob("*.tmp"))


def test_orphan_shard_from_a_crash_is_set_aside(tmp_path):
    """A crash between a shard's rename and its progress records (older versions) left a shard no record names;
    a glob over the folder would read its objects twice once they are redone."""
    import shutil

    from lrm.data import read_samples

    out = tmp_path / "ds"
    _build(out, num=4)
    shard = sorted(out.glob("train-*.tar"))[0]
    orphan = out / "train-r007-00000.tar"
    shutil.copy(shard, orphan)  # its objects recorded nowhere under this name
    lines = (out / "progress.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln).get("shard") != shard.name]
    (out / "progress.jsonl").write_text("".join(ln + "\n" for ln in kept))  # ...and the original is unrecorded too
    man = _build(out, num=4)
    uids = [s["uid"] for s in read_samples(str(out / "*.tar"), views=[0])]  # a plain glob, no manifest
    assert len(uids) == len(set(uids)) == 4 == man["counts"]["objects"]
    assert (out / (orphan.name + ".orphan")).is_file() and (out / (shard.name + ".orphan")).is_file()
    assert not any(p.name.startswith("train-r007") for p in out.glob("*.tar"))  # a new run number


def test_progress_records_precede_the_shard_rename(tmp_path, monkeypatch):
    """Crash right after the progress records, before the rename: those records name a missing shard, are
    ignored on restart (objects redone), and their run number is never reused."""
    import lrm.data.build as b
    from lrm.data import read_samples

    real = os.replace
    crashed = []

    def crash_on_first_shard(src, dst):
        if str(src).endswith(".tar.tmp") and not crashed:
            crashed.append(Path(dst).name)
            raise KeyboardInterrupt
        return real(src, dst)

    out = tmp_path / "ds"
    monkeypatch.setattr(b.os, "replace", crash_on_first_shard)
    with pytest.raises(KeyboardInterrupt):
        _build(out, num=4)
    monkeypatch.setattr(b.os, "replace", real)
    assert crashed[0] in b.recorded_shards(out) and not (out / crashed[0]).exists()
    man = _build(out, num=4)
    uids = [s["uid"] for s in read_samples(str(out / "*.tar"), views=[0])]
    assert len(uids) == len(set(uids)) == 4 == man["counts"]["objects"]
    assert not (out / crashed[0]).exists()  # its run number was not reused for a different shard


def test_broken_meshes_skipped_and_recorded(tmp_path):
    src = tmp_path / "meshes"
    src.mkdir()
    trimesh.creation.icosphere(2).export(src / "good.ply")
    (src / "garbage.obj").write_text("this is not a mesh\nf 1 2 3\n")
    (src / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nelement face 0\nend_header\n")
    line = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], faces=[[0, 1, 2], [1, 2, 3]], process=False)
    line.export(src / "line.stl")
    (src / "truncated.glb").write_bytes(b"glTF\x02\x00\x00\x00")
    out = tmp_path / "ds"
    man = _build(out, sources="folder", num=10, extra=("--folder", str(src)))
    assert man["counts"]["objects"] == 1
    reasons = {r["uid"]: r["reason"] for r in man["skipped"]}
    assert set(reasons) == {"meshes-garbage", "meshes-empty", "meshes-line", "meshes-truncated"}
    assert all(reasons.values())
    assert "degenerate" in reasons["meshes-line"]


def test_mesh_validation_reasons():
    with pytest.raises(MeshError, match="zero-size|degenerate"):
        normalize_parts([trimesh.Trimesh(vertices=np.zeros((4, 3)), faces=[[0, 1, 2], [1, 2, 3], [0, 2, 3], [0, 1, 3]], process=False)])
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [np.nan, 0, 0]])
    with pytest.raises(MeshError, match="non-finite"):
        normalize_parts([trimesh.Trimesh(vertices=v, faces=[[0, 1, 2], [1, 2, 3], [0, 2, 3], [0, 1, 3]], process=False)])
    parts, T = normalize_parts([trimesh.creation.box((2.0, 1.0, 0.5))])
    lo, hi = parts[0].bounds
    assert np.allclose((lo + hi) / 2, 0, atol=1e-9) and np.isclose((hi - lo).max(), 1.0)
    assert np.allclose(T[:3, :3], np.eye(3) * 0.5)


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------
def test_loader_batch_contract(shardset):
    from lrm.data import make_loader, read_samples

    out, _ = shardset
    B, K, S = 3, 4, 32
    it = iter(make_loader(out, num_views_target=K, image_size=S, batch_size=B, background="random", seed=1))
    b = next(it)
    assert b["input_images"].shape == (B, 1, 3, S, S)
    assert b["input_cameras"].shape == (B, 1, 16)
    assert b["target_rgb"].shape == (B, K, S, S, 3)
    assert b["target_mask"].shape == (B, K, S, S)
    assert b["target_c2w"].shape == (B, K, 4, 4)
    assert b["target_intrinsics"].shape == (B, K, 4)
    assert b["background"].shape == (B, 3) and len(b["uid"]) == B
    for t in ("input_images", "target_rgb", "target_mask"):
        assert b[t].dtype == torch.float32 and b[t].min() >= 0 and b[t].max() <= 1
    # the input camera is the canonical orbit camera (az 0, el 0) at the rendered distance
    canon = camera_vector(orbit_camera(0.0, 0.0, 2.0), intrinsics_from_fov(40.0))
    assert torch.allclose(b["input_cameras"], canon.expand(B, 1, -1), atol=1e-5)
    # targets are the stored cameras moved by one rigid transform: find the input view that explains them
    stored = {s["uid"]: s for s in read_samples(out, depth=False)}
    for j, uid in enumerate(b["uid"]):
        cams = torch.from_numpy(stored[uid]["c2w"])
        found = False
        for v in range(len(cams)):
            M = orbit_camera(0.0, 0.0, 2.0) @ invert_rigid(cams[v])
            moved = M @ cams
            if all(((moved - b["target_c2w"][j, k]).abs().amax((-1, -2)) < 1e-4).any() for k in range(K)):
                found = True
                break
        assert found, uid
        # background shows where the mask is empty
        empty = b["target_mask"][j] < 1e-3
        assert torch.allclose(b["target_rgb"][j][empty], b["background"][j].expand(int(empty.sum()), 3), atol=1e-5)
    # white background and the input-in-targets flag
    b = next(iter(make_loader(out, num_views_target=2, image_size=S, batch_size=2, background="white", input_in_targets=True)))
    assert torch.allclose(b["background"], torch.ones(2, 3))
    assert torch.allclose(b["target_rgb"][:, 0].permute(0, 3, 1, 2), b["input_images"][:, 0], atol=1e-6)
    assert torch.allclose(b["target_c2w"][:, 0], orbit_camera(0.0, 0.0, 2.0).expand(2, 4, 4), atol=1e-5)
    # input on its own fixed colour, supervision on the random one: same pixels wherever the object is opaque
    b = next(iter(make_loader(out, num_views_target=2, image_size=S, batch_size=2, background="random",
                              input_in_targets=True, input_background="white", seed=3)))
    inp, tgt, alpha = b["input_images"][:, 0].permute(0, 2, 3, 1), b["target_rgb"][:, 0], b["target_mask"][:, 0]
    assert torch.allclose(inp, tgt + (1 - alpha[..., None]) * (1 - b["background"][:, None, None]), atol=1e-5)
    assert (alpha < 1e-3).any() and not torch.allclose(b["background"], torch.ones(2, 3))


def test_loader_several_input_views(shardset):
    from lrm.cameras import camera_from_vector
    from lrm.data import make_loader
    from lrm.data.batch import check_batch

    out, _ = shardset
    B, V, K, S = 2, 3, 2, 16
    b = next(iter(make_loader(out, num_views_target=K, image_size=S, batch_size=B, seed=2, num_input_views=V,
                              background="white")))
    assert check_batch(b) is None
    assert b["input_images"].shape == (B, V, 3, S, S) and b["input_cameras"].shape == (B, V, 16)
    canon = camera_vector(orbit_camera(0.0, 0.0, 2.0), intrinsics_from_fov(40.0))
    assert torch.allclose(b["input_cameras"][:, 0], canon.expand(B, -1), atol=1e-5)  # view 0 defines the frame
    # V + K different views of the object: the other input views are neither repeated nor supervised on
    c2w = torch.cat([camera_from_vector(b["input_cameras"])[0], b["target_c2w"]], 1)
    apart = (c2w[:, :, None] - c2w[:, None]).abs().amax((-1, -2))
    assert (apart[:, ~torch.eye(V + K, dtype=torch.bool)] > 1e-3).all()


def test_loader_ranks_and_workers_are_disjoint(shardset):
    from lrm.data import make_loader

    out, _ = shardset
    seen = []
    for rank in range(2):
        dl = make_loader(out, num_views_target=1, image_size=16, batch_size=2, num_workers=2, rank=rank, world_size=2,
                         repeat=False, split="train")
        seen.append([u for b in dl for u in b["uid"]])
    assert not set(seen[0]) & set(seen[1])
    n_train = len(list(__import__("lrm.data", fromlist=["x"]).read_samples(out, split="train", views=[0])))
    assert len(seen[0]) + len(seen[1]) == n_train
    # repeat=True keeps going past one epoch
    dl = iter(make_loader(out, num_views_target=1, image_size=16, batch_size=4, split="train"))
    assert len([next(dl) for _ in range(2 * n_train)]) == 2 * n_train


def test_corrupt_and_truncated_shards_are_skipped(shardset, tmp_path, caplog):
    from lrm.data import make_loader, read_samples
    from lrm.data.shards import list_shards

    out, _ = shardset
    good = list_shards(out, "train")[0]
    n_good = len(list(read_samples([good], views=[0])))
    # truncated copy: cut in the middle of the second member set
    data = Path(good).read_bytes()
    trunc = tmp_path / "trunc.tar"
    trunc.write_bytes(data[: len(data) * 2 // 3])
    # corrupt copy: one sample with a broken PNG and camera array
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m).read()
            if m.name.endswith(".cameras.npy") or m.name.endswith(".000.png"):
                f = b"garbage" + f[:10]
            m.size = len(f)
            import io

            dst.addfile(m, io.BytesIO(f))
    caplog.set_level(logging.WARNING, logger="lrm.data")
    dl = make_loader([str(trunc), str(bad), good], num_views_target=1, image_size=16, batch_size=1, repeat=False,
                     shuffle=False, split=None)
    uids = [u for b in dl for u in b["uid"]]
    assert len(uids) >= n_good and len(uids) < 3 * n_good  # good shard complete; broken samples dropped
    assert any("skipping corrupt sample" in r.message for r in caplog.records)
    named = [r.message for r in caplog.records if "bad.tar" in r.message]
    assert named and all("key " in m for m in named), caplog.text  # the broken sample's shard and key
    assert any(str(trunc) in r.message for r in caplog.records)  # a broken tar names its shard
    # a repeating loader over nothing readable fails loudly instead of hanging
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file at all" * 100)
    with pytest.raises(RuntimeError, match="no readable samples"):
        next(iter(make_loader([str(junk)], num_views_target=1, image_size=16, batch_size=1, split=None)))


# --------------------------------------------------------------------------------------------------
# Dev eval set, Objaverse selection, layout converter
# --------------------------------------------------------------------------------------------------
def test_eval_set_tiny(tmp_path):
    from lrm.evaluate.evalset import build_dev_eval_set

    man = build_dev_eval_set(tmp_path / "ev", num=2, sources="procedural", resolution=48)
    assert len(man["objects"]) == 2 and man["protocol"]["elevations_deg"] == [0.0, 30.0]
    for uid in man["objects"]:
        d = tmp_path / "ev" / uid
        z = np.load(d / "views.npz")
        assert z["rgba"].shape == (17, 48, 48, 4) and z["rgba"].dtype == np.uint8
        assert list(z["input_indices"]) == [0] and list(z["novel_indices"]) == list(range(1, 17))
        c2w = torch.from_numpy(z["c2w"])
        assert torch.allclose(c2w[0], orbit_camera(0.0, 0.0, 2.0), atol=1e-5)  # canonical input camera
        gt = trimesh.load(d / "gt_mesh.ply", process=False)
        assert np.isclose(np.ptp(gt.vertices, 0).max(), 1.0, atol=0.3)  # rotated unit object
        rec = json.loads((d / "record.json").read_text())
        M = np.array(rec["canonicalization"])
        assert np.allclose(M[:3, :3] @ M[:3, :3].T, np.eye(3), atol=1e-5)
        # GT vertices (canonical frame) project onto the input view's foreground
        uv, _ = project_points(torch.tensor(gt.vertices, dtype=torch.float32), c2w[0], torch.from_numpy(z["intrinsics"][0]), 48, 48)
        ij = uv.floor().long()
        ok = (ij >= 0).all(-1) & (ij < 48).all(-1)
        from scipy.ndimage import maximum_filter

        fg = torch.from_numpy(maximum_filter(z["rgba"][0, ..., 3], size=3))  # 1-px dilation, see check_geometry
        assert (fg[ij[ok, 1], ij[ok, 0]] > 0).float().mean() >= 0.99
        # and the canonical frame is consistent across views: same for a novel view
        uv, _ = project_points(torch.tensor(gt.vertices, dtype=torch.float32), c2w[5], torch.from_numpy(z["intrinsics"][5]), 48, 48)
        ij = uv.floor().long()
        ok = (ij >= 0).all(-1) & (ij < 48).all(-1)
        fg = torch.from_numpy(maximum_filter(z["rgba"][5, ..., 3], size=3))
        assert (fg[ij[ok, 1], ij[ok, 0]] > 0).float().mean() >= 0.99


def test_objaverse_selection_offline(tmp_path):
    from lrm.data.sources import objaverse_catalog as ov

    ann = {f"{i:032x}": {"license": lic, "name": f"o{i}"} for i, lic in enumerate(["by", "by-nc", "cc0", "by-sa", "by"] * 4)}
    lvis = {"mug": [f"{i:032x}" for i in (0, 1, 2)], "chair": [f"{i:032x}" for i in (3, 4, 99)]}
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(ann))
    ann2 = ov.load_annotations(str(p))
    assert ann2 == ann
    assert ov.select_uids(ann, uids=[f"{2:032x}.glb", "missing", f"{0:032x}"]) == [f"{2:032x}", f"{0:032x}"]
    assert ov.select_uids(ann, lvis=lvis, categories=["chair"]) == [f"{3:032x}", f"{4:032x}"]
    a = ov.select_uids(ann, count=5, seed=3)
    assert a == ov.select_uids(dict(reversed(list(ann.items()))), count=5, seed=3) and len(a) == 5
    perm = ov.select_uids(ann, licences=ov.PERMISSIVE)
    assert all(ann[u]["license"] in ov.PERMISSIVE for u in perm) and len(perm) == 16
    assert ov.licence_name(ann[f"{1:032x}"]) == "CC-BY-NC-4.0"
    with pytest.raises(KeyError):
        ov.select_uids(ann, lvis=lvis, categories=["zebra"])


def test_objaverse_download_fails_clearly_offline(monkeypatch):
    from lrm.data.sources import objaverse_catalog as ov

    class Fake:
        @staticmethod
        def load_objects(uids, download_processes=1):
            import urllib.error

            raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(ov, "_objaverse", lambda: Fake)
    with pytest.raises(ov.ObjaverseUnavailable, match="cannot reach huggingface.co"):
        ov.download(["0" * 32], processes=2)


def test_layout_converter_roundtrip(shardset, tmp_path):
    from lrm.data import read_samples
    from lrm.data.layout import c2w_to_pose, folders_to_shards, pose_to_c2w, shards_to_folders

    out, _ = shardset
    c = orbit_camera(30.0, 20.0, 2.0).numpy()
    for conv in ("c2w_opengl", "c2w_opencv", "w2c_opencv"):
        assert np.allclose(pose_to_c2w(c2w_to_pose(c, conv), conv), c, atol=1e-6)
    # OpenGL camera looks down its -z: the camera-to-origin direction is -z of the GL pose
    gl = c2w_to_pose(c, "c2w_opengl")
    assert np.allclose(-gl[:3, 2], -c[:3, 3] / np.linalg.norm(c[:3, 3]), atol=1e-6)
    n = shards_to_folders(out, tmp_path / "dump", "c2w_opengl", split="train")
    man = folders_to_shards(tmp_path / "dump", tmp_path / "back", "c2w_opengl")
    assert man["counts"]["objects"] == n and not man["skipped"]
    a = {s["uid"]: s for s in read_samples(out, split="train", depth=False)}
    for s in read_samples(tmp_path / "back", depth=False):
        assert np.array_equal(s["rgba"], a[s["uid"]]["rgba"])
        assert np.allclose(s["c2w"], a[s["uid"]]["c2w"], atol=1e-6)
        assert np.allclose(s["intrinsics"], a[s["uid"]]["intrinsics"])


def test_sources_offline_interfaces():
    from lrm.data.sources import SOURCE_MODULES, get_source

    for name in SOURCE_MODULES:
        mod = get_source(name)
        ok, why = mod.available()
        assert isinstance(ok, bool) and isinstance(why, str)
    objs = list(get_source("procedural").objects(num=3, seed=5))
    assert [o.uid for o in objs] == ["proc-5-000000", "proc-5-000001", "proc-5-000002"]
    a, b = objs[1].load(), objs[1].load()
    assert np.allclose(np.concatenate([p.vertices for p in a]), np.concatenate([p.vertices for p in b]))
    pb = get_source("pybullet")
    if pb.available()[0]:
        duck = next(pb.objects(only=("duck",), random_shapes=False))
        parts, _ = normalize_parts(duck.load())
        assert sum(len(p.faces) for p in parts) > 1000


def test_validation_pass_covers_the_split_and_scores_an_empty_model_analytically(shardset):
    """lrm.training.validation: every val object once, the same views on every call, and for a model that
    renders nothing (white background) exactly the PSNR of white vs the targets and mask IoU 0."""
    from lrm.config import load_config
    from lrm.data import make_loader
    from lrm.models import build_model
    from lrm.image_metrics import psnr
    from lrm.training.validation import evaluate_split

    out, man = shardset
    torch.manual_seed(0)
    model = build_model(load_config("tiny", ["model.decoder.density_bias=-60"])).eval()
    a = evaluate_split(model, str(out), views=2, resolution=RES, image_size=RES, progress=False)
    torch.manual_seed(99)  # the global RNG state must not change which views are drawn
    b = evaluate_split(model, str(out), views=2, resolution=RES, image_size=RES, progress=False)
    assert a["objects"] == man["counts"]["val"] > 0
    assert sorted(r["uid"] for r in a["per_object"]) == sorted(set(r["uid"] for r in a["per_object"]))
    assert a["psnr"] == b["psnr"]
    torch.manual_seed(1234)  # the views the validation pass draws (loader seed and torch.initial_seed())
    loader = make_loader(str(out), num_views_target=2, image_size=RES, batch_size=1, shuffle=False, seed=1234,
                         split="val", background="white", repeat=False)
    expected = [float(psnr(torch.ones_like(x["target_rgb"][:, :2]), x["target_rgb"][:, :2])) for x in loader]
    assert a["psnr"] == pytest.approx(sum(expected) / len(expected), abs=1e-3)
    assert a["mask_iou"] == 0.0


def test_validation_scores_the_input_depth_channel_without_changing_the_views(shardset):
    """``evaluate_split(..., input_depth=True)``: the same views and scores, plus channel 3's L1 against the input view's
    depth, equal to the training term computed on the loader's own batch."""
    from lrm.config import load_config
    from lrm.data import make_loader
    from lrm.models import build_model
    from lrm.training.losses import input_depth_l1, input_depth_offsets
    from lrm.training.validation import evaluate_split

    out, _ = shardset
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = build_model(cfg).eval()
    kw = dict(views=2, resolution=RES, image_size=RES, progress=False, limit=1)
    base = evaluate_split(model, str(out), **kw)
    with_depth = evaluate_split(model, str(out), input_depth=True, **kw)
    assert with_depth["psnr"] == base["psnr"] and with_depth["mask_iou"] == base["mask_iou"]
    torch.manual_seed(1234)
    b = next(iter(make_loader(str(out), num_views_target=2, image_size=RES, batch_size=1, shuffle=False, seed=1234,
                              split="val", background="white", repeat=False, extras={"input_depth": True})))
    with torch.no_grad():
        tri = model(b["input_images"], b["input_cameras"])
    off, w = input_depth_offsets(b["input_depth"], b["input_cameras"][:, 0, 12:16], tri.shape[-1],
                                 cfg.model.pixel_plane.distance, cfg.model.render.radius, cfg.model.pixel_plane.fov_deg)
    assert (w > 0.5).any()
    assert with_depth["input_depth_l1"] == pytest.approx(float(input_depth_l1(tri[:, 3, 3], off, w)), rel=1e-5)


def test_validation_of_refined_scenes(shardset):
    """``evaluate_split(..., refine=cfg)`` scores the scene refined on the input view: zero refinement steps give
    the unrefined numbers exactly, some steps change them."""
    from lrm.config import load_config
    from lrm.models import build_model
    from lrm.refine import RefineConfig
    from lrm.training.validation import evaluate_split

    out, _ = shardset
    torch.manual_seed(0)
    model = build_model(load_config("tiny", ["model.pixel_plane.enabled=false", "model.upsampler.kernel=2"])).eval()
    kw = dict(views=2, resolution=RES, image_size=RES, progress=False, limit=1)
    base = evaluate_split(model, str(out), **kw)
    fast = dict(mode="ref", save_every=0, level="checkpoint", resolutions=(16,), resolution_milestones=(),
                n_samples=16, n_importance=8)
    same = evaluate_split(model, str(out), refine=RefineConfig(steps=0, **fast), **kw)
    moved = evaluate_split(model, str(out), refine=RefineConfig(steps=3, lr=0.1, **fast), **kw)
    assert same["psnr"] == base["psnr"] and same["mask_iou"] == base["mask_iou"]
    assert moved["psnr"] != base["psnr"]


def test_to_vertex_colored_keeps_vertex_and_face_colours():
    """GT meshes of evaluation sets keep their colours (a vertex-coloured part was once written grey)."""
    import trimesh

    from lrm.data.mesh import to_vertex_colored

    box = trimesh.creation.box((1, 1, 1))
    box.visual.vertex_colors = np.tile([200, 50, 40, 255], (len(box.vertices), 1))
    other = trimesh.creation.box((1, 1, 1))
    other.visual.face_colors = np.tile([10, 220, 30, 255], (len(other.faces), 1))
    out = to_vertex_colored([box, other])
    n = len(box.vertices)
    assert (out.visual.vertex_colors[:n] == [200, 50, 40, 255]).all()
    assert (out.visual.vertex_colors[n:] == [10, 220, 30, 255]).all()
    plain = trimesh.Trimesh(box.vertices, box.faces, process=False)
    assert (to_vertex_colored([plain]).visual.vertex_colors[:, :3] >= 100).all()  # untextured: a neutral grey


def test_shuffle_buffer_is_a_seeded_bounded_permutation():
    """The training stream's shuffle: every sample once, the same order for the same (seed, rank), another order for
    another seed, and never more than ``size`` samples held."""
    from lrm.data.loader import _ShuffleBuffer

    held = []

    def stream(n):
        for i in range(n):
            held.append(i)
            yield i

    def run(seed, rank=0, n=200, size=16):
        held.clear()
        out = []
        for x in _ShuffleBuffer(size, size // 4, seed, rank)(stream(n)):
            out.append(x)
            assert len(held) - len(out) <= size  # consumed but not yet given out
        return out

    a = run(5)
    assert sorted(a) == list(range(200)) and a != list(range(200))
    assert run(5) == a and run(6) != a and run(5, rank=1) != a
