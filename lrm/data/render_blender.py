"""Blender (Cycles) renderer through the ``bpy`` pip package: the path for Objaverse-grade PBR renders.

Same interface and outputs as :func:`lrm.data.render_gl.render_mesh`::

    out = render_mesh(parts_or_mesh, c2w, intrinsics, 256, samples=32)   # OpenCV c2w, normalised intrinsics
    out["rgba"] [V,H,W,4] float32 straight alpha; out["depth"] [V,H,W] camera z (0 on background)

The mesh (our +Z-up normalised world) is written to a temporary GLB and imported with Blender's glTF
importer (which maps glTF +Y-up to Blender +Z-up; we pre-rotate so Blender's world equals ours). Cameras:
``matrix_world = c2w @ diag(1, -1, -1, 1)`` (OpenCV -> Blender axes); the vertical FoV from ``fy``,
principal point through lens shift. Cycles on CPU, or GPU when available (``device="GPU"``); transparent
film gives alpha; the Combined pass is written as a multilayer EXR per view and read with the ``OpenEXR``
package (install it next to ``bpy``). Depth (camera z) and normals come from casting the pixel-centre rays
into Blender's scene BVH (``scene.ray_cast``): with bpy 5.0 the Depth/Normal render passes were not written
to EXR in our tests (neither as render output nor through the compositor), so this is the reliable route. Light: a sun along ``light_dir`` plus a uniform world light (``ambient``). Blender is slow on CPU
(~1 s per 256^2 image at 16 spp); it is meant for GPU machines and Objaverse.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Dict, Optional, Sequence

import numpy as np
import trimesh

#: our +Z-up world -> glTF +Y-up (inverse of the importer's Y-up -> Z-up conversion)
_Z_TO_GLTF = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("bpy") is not None
    except Exception:  # noqa: BLE001
        return False


def _reset_scene(bpy):
    bpy.ops.wm.read_factory_settings(use_empty=True)


def _setup_render(bpy, scene, w, h, samples, device):
    scene.render.engine = "CYCLES"
    scene.cycles.samples = int(samples)
    scene.cycles.use_denoising = False
    scene.cycles.device = device
    if device == "GPU":
        prefs = bpy.context.preferences.addons["cycles"].preferences
        for kind in ("OPTIX", "CUDA", "HIP", "METAL", "ONEAPI"):
            try:
                prefs.compute_device_type = kind
                prefs.get_devices()
                if any(d.type == kind for d in prefs.devices):
                    for d in prefs.devices:
                        d.use = True
                    break
            except Exception:  # noqa: BLE001
                continue
    scene.render.resolution_x, scene.render.resolution_y = int(w), int(h)
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    # one multilayer EXR per view carries every pass (Combined RGBA, Depth, Normal); no compositor needed
    if hasattr(scene.render.image_settings, "media_type"):  # Blender >= 5.0: choose the media type first
        scene.render.image_settings.media_type = "MULTI_LAYER_IMAGE"
    scene.render.image_settings.file_format = "OPEN_EXR_MULTILAYER"
    scene.render.image_settings.color_depth = "32"
    scene.view_settings.view_transform = "Standard"
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    vl = scene.view_layers[0]
    vl.use_pass_z = True
    vl.use_pass_normal = True


def _read_exr(path):
    """{channel name: float32 [H,W]} of a (multilayer) EXR written by Blender."""
    import OpenEXR

    with OpenEXR.File(path, separate_channels=True) as f:
        return {name: np.asarray(ch.pixels, np.float32) for name, ch in f.channels().items()}


def _pick(chans, *suffixes):
    for suf in suffixes:
        for k, v in chans.items():
            if k.endswith(suf):
                return v
    raise KeyError(f"no EXR channel ending with {suffixes}; have {sorted(chans)}")


def _ray_cast(bpy, scene, c2w, K, h, w, mask):
    """Depth (camera z) and world normals at the pixel centres of ``mask`` by casting rays into Blender's
    scene BVH (``scene.ray_cast``). Used instead of render passes: in bpy 5.0 neither multilayer render
    output nor the compositor's File Output wrote the Depth/Normal passes in our tests."""
    from mathutils import Vector

    dg = bpy.context.evaluated_depsgraph_get()
    fx, fy, cx, cy = K
    rows, cols = np.nonzero(mask)
    x = ((cols + 0.5) / w - cx) / fx
    y = ((rows + 0.5) / h - cy) / fy
    dirs = np.stack([x, y, np.ones_like(x)], -1) @ c2w[:3, :3].T
    o = Vector(c2w[:3, 3].tolist())
    depth = np.zeros((h, w), np.float32)
    normal = np.zeros((h, w, 3), np.float32)
    fwd = c2w[:3, 2]
    for r, c, d in zip(rows, cols, dirs):
        dn = d / np.linalg.norm(d)
        hit, loc, nrm, *_ = scene.ray_cast(dg, o, Vector(dn.tolist()))
        if hit:
            p = np.array(loc) - c2w[:3, 3]
            depth[r, c] = float(p @ fwd)
            nn = np.array(nrm)
            normal[r, c] = -nn if nn @ dn > 0 else nn
    return depth, normal


def _linear_to_srgb(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def render_mesh(
    mesh,
    c2w,
    intrinsics,
    resolution=256,
    light_dir: Optional[Sequence[float]] = None,
    ambient: float = 0.45,
    samples: int = 32,
    device: str = "CPU",
    normals: bool = False,
    depth: bool = True,
) -> Dict[str, np.ndarray]:
    """Render with Blender Cycles; see the module docstring (same conventions as the GL renderer)."""
    import bpy

    from lrm.data.render_gl import DEFAULT_LIGHT, render_inputs

    parts, c2w, K, (h, w) = render_inputs(mesh, c2w, intrinsics, resolution)

    light = np.asarray(DEFAULT_LIGHT if light_dir is None else light_dir, np.float64)
    light /= max(np.linalg.norm(light), 1e-12)

    with tempfile.TemporaryDirectory(prefix="lrm_bpy_") as tmp:
        glb = os.path.join(tmp, "object.glb")
        scene_tm = trimesh.Scene()
        for i, p in enumerate(parts):
            q = p.copy()
            q.apply_transform(_Z_TO_GLTF)
            scene_tm.add_geometry(q, geom_name=f"part{i}")
        scene_tm.export(glb)

        _reset_scene(bpy)
        scene = bpy.context.scene if bpy.context.scene is not None else bpy.data.scenes.new("Scene")
        bpy.ops.import_scene.gltf(filepath=glb)
        _setup_render(bpy, scene, w, h, samples, device)
        world = bpy.data.worlds.new("World")
        scene.world = world
        world.use_nodes = True
        world.node_tree.nodes["Background"].inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        world.node_tree.nodes["Background"].inputs["Strength"].default_value = float(ambient)
        sun = bpy.data.lights.new("sun", type="SUN")
        sun.energy = 3.0 * (1.0 - ambient)
        sun_obj = bpy.data.objects.new("sun", sun)
        scene.collection.objects.link(sun_obj)
        # a sun shines along its local -Z: orient -Z toward -light_dir (from the light toward the object)
        from mathutils import Vector

        sun_obj.rotation_euler = Vector(light.tolist()).to_track_quat("Z", "Y").to_euler()
        cam_data = bpy.data.cameras.new("cam")
        cam = bpy.data.objects.new("cam", cam_data)
        scene.collection.objects.link(cam)
        scene.camera = cam
        cam_data.sensor_fit = "VERTICAL"
        cam_data.clip_start, cam_data.clip_end = 0.01, 100.0

        V = len(c2w)
        rgba = np.zeros((V, h, w, 4), np.float32)
        dep = np.zeros((V, h, w), np.float32) if depth else None
        nrm = np.zeros((V, h, w, 3), np.float32) if normals else None
        from mathutils import Matrix

        flip = np.diag([1.0, -1.0, -1.0, 1.0])
        for i in range(V):
            fx, fy, cx, cy = K[i]
            cam_data.angle_y = 2 * math.atan(0.5 / fy)
            m = max(w, h)
            cam_data.shift_x = (0.5 - cx) * w / m
            cam_data.shift_y = (cy - 0.5) * h / m
            cam.matrix_world = Matrix((c2w[i] @ flip).tolist())
            scene.frame_set(1)
            scene.render.filepath = os.path.join(tmp, f"view_{i:03d}.exr")
            bpy.ops.render.render(write_still=True)
            ch = _read_exr(scene.render.filepath)
            a = np.clip(_pick(ch, "Combined.A", ".A"), 0, 1)
            lin = np.stack([_pick(ch, f"Combined.{c}", f".{c}") for c in "RGB"], -1)
            # Combined is premultiplied scene-linear: un-premultiply, then sRGB-encode like the GL images
            straight = np.where(a[..., None] > 1e-6, lin / np.maximum(a[..., None], 1e-6), 0.0)
            rgba[i] = np.concatenate([_linear_to_srgb(straight), a[..., None]], -1)
            if depth or normals:
                d, n = _ray_cast(bpy, scene, c2w[i], K[i], h, w, a > 0)
                if depth:
                    dep[i] = d
                if normals:
                    nrm[i] = n
    return {k: v for k, v in (("rgba", rgba), ("depth", dep), ("normals", nrm)) if v is not None}
