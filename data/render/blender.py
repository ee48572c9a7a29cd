"""Blender (Cycles) renderer through the ``bpy`` pip package: the path for Objaverse-grade PBR renders.

Same interface and outputs as :func:`lrm.data.render_gl.render_mesh`::

    out = render_mesh(parts_or_mesh, c2w, intrinsics, 256, samples=32)   # OpenCV c2w, normalised intrinsics
    out["rgba"] [V,H,W,4] float32 straight alpha; out["depth"] [V,H,W] camera z (0 on background)

The mesh (our +Z-up normalised world) is written to a temporary GLB and imported with Blender's glTF
importer (which maps glTF +Y-up to Blender +Z-up; we pre-rotate so Blender's world equals ours). Cameras:
``matrix_world = c2w @ diag(1, -1, -1, 1)`` (OpenCV -> Blender axes); the vertical FoV from ``fy``,
principal point through lens shift. Cycles on CPU, or GPU when available (``device="GPU"``); transparent
film gives alpha; the Z pass (planar depth) and the normal pass come through a compositor File Output as
EXR. Light: a sun along ``light_dir`` plus a uniform world light (``ambient``). Blender is slow on CPU
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


def _np(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


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
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "16"
    scene.view_settings.view_transform = "Standard"
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    vl = scene.view_layers[0]
    vl.use_pass_z = True
    vl.use_pass_normal = True


def _compositor(bpy, scene, out_dir):
    scene.use_nodes = True
    tree = scene.node_tree
    for n in list(tree.nodes):
        tree.nodes.remove(n)
    rl = tree.nodes.new("CompositorNodeRLayers")
    fo = tree.nodes.new("CompositorNodeOutputFile")
    fo.base_path = out_dir
    fo.format.file_format = "OPEN_EXR"
    fo.format.color_depth = "32"
    fo.file_slots.clear()
    fo.file_slots.new("depth")
    fo.file_slots.new("normal")
    tree.links.new(rl.outputs["Depth"], fo.inputs["depth"])
    tree.links.new(rl.outputs["Normal"], fo.inputs["normal"])
    return fo


def _read_image(bpy, path, channels):
    img = bpy.data.images.load(path, check_existing=False)
    w, h = img.size
    px = np.array(img.pixels[:], dtype=np.float32).reshape(h, w, img.channels)[::-1]
    bpy.data.images.remove(img)
    return px[..., :channels]


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

    if isinstance(mesh, trimesh.Scene):
        parts = mesh.dump(concatenate=False)
    elif isinstance(mesh, trimesh.Trimesh):
        parts = [mesh]
    else:
        parts = list(mesh)
    c2w = _np(c2w).reshape(-1, 4, 4)
    K = _np(intrinsics).reshape(-1, 4)
    if len(K) == 1 and len(c2w) > 1:
        K = np.repeat(K, len(c2w), 0)
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    from lrm.data.render_gl import DEFAULT_LIGHT

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
        fo = _compositor(bpy, scene, tmp)

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
            scene.render.filepath = os.path.join(tmp, f"rgba_{i:03d}.png")
            fo.file_slots["depth"].path = f"depth_{i:03d}_"
            fo.file_slots["normal"].path = f"normal_{i:03d}_"
            bpy.ops.render.render(write_still=True)
            rgba[i] = _read_image(bpy, scene.render.filepath, 4)
            a = rgba[i, ..., 3]
            if depth:
                d = _read_image(bpy, os.path.join(tmp, f"depth_{i:03d}_0001.exr"), 1)[..., 0]
                dep[i] = np.where(a > 0, np.where(d < 1e9, d, 0.0), 0.0)
            if normals:
                n = _read_image(bpy, os.path.join(tmp, f"normal_{i:03d}_0001.exr"), 3)
                nrm[i] = n * (a[..., None] > 0)
    out = {"rgba": rgba}
    if depth:
        out["depth"] = dep
    if normals:
        out["normals"] = nrm
    return out
