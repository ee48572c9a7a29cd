"""Rasteriser for dataset and evaluation renders: moderngl on a headless EGL context (Mesa llvmpipe on CPU).

One pass gives straight-alpha RGBA, camera z-depth and world-space normals for every view::

    from lrm.data.render_gl import render_mesh
    out = render_mesh(parts_or_mesh, c2w, intrinsics, 256)   # OpenCV c2w [V,4,4], normalised intrinsics [V,4]
    out["rgba"]    # [V,H,W,4] float32, straight alpha, sRGB values in [0, 1]
    out["depth"]   # [V,H,W]   float32, camera z (OpenCV, along the optical axis), 0 on background
    out["normals"] # [V,H,W,3] float32, unit world-space normals facing the camera, 0 on background

Cameras follow ``lrm.cameras`` (OpenCV c2w, intrinsics ``[fx/W, fy/H, cx/W, cy/H]``, pixel centres at
+0.5, row 0 on top). Anti-aliasing uses MSAA; edge pixels get fractional alpha, and depth/normals there are
the average over the covered samples.

Shading (colours must agree across views, so the light is fixed in the world per object): albedo from
texture x material colour x vertex/face colour, times ``ambient + (1 - ambient) * (0.5 + 0.5 n.l)``
("half-Lambert": no pitch-black sides). Surfaces are two-sided (normals flipped to face the camera).
Texels with alpha < 0.5 are cut out. System libraries: ``libegl1 libgl1-mesa-dri libegl-mesa0``
(``make install-system``).
"""
from __future__ import annotations

import threading
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import trimesh

_VERT = """
#version 330
uniform mat4 mvp;
uniform mat4 view;
in vec3 in_pos;
in vec3 in_nrm;
in vec4 in_col;
in vec2 in_uv;
out vec3 v_pos;
out vec3 v_nrm;
out vec4 v_col;
out vec2 v_uv;
out float v_z;
void main() {
    gl_Position = mvp * vec4(in_pos, 1.0);
    v_pos = in_pos;
    v_nrm = in_nrm;
    v_col = in_col;
    v_uv = in_uv;
    v_z = -(view * vec4(in_pos, 1.0)).z;   // OpenCV camera z = -OpenGL camera z
}
"""

_FRAG = """
#version 330
uniform sampler2D tex;
uniform bool use_tex;
uniform vec3 cam_pos;
uniform vec3 light_dir;
uniform float ambient;
in vec3 v_pos;
in vec3 v_nrm;
in vec4 v_col;
in vec2 v_uv;
in float v_z;
layout(location = 0) out vec4 f_rgba;
layout(location = 1) out vec4 f_nrm;
layout(location = 2) out vec4 f_depth;
void main() {
    vec4 albedo = v_col;
    if (use_tex) {
        vec4 t = texture(tex, v_uv);
        if (t.a < 0.5) discard;
        albedo.rgb *= t.rgb;
    }
    vec3 n = normalize(v_nrm);
    vec3 to_cam = cam_pos - v_pos;
    if (dot(n, to_cam) < 0.0) n = -n;
    float shade = ambient + (1.0 - ambient) * (0.5 + 0.5 * dot(n, light_dir));
    f_rgba = vec4(clamp(albedo.rgb * shade, 0.0, 1.0), 1.0);
    f_nrm = vec4(0.5 * n + 0.5, 1.0);
    f_depth = vec4(v_z, 0.0, 0.0, 1.0);
}
"""

_local = threading.local()

DEFAULT_LIGHT = (0.35, -0.25, 0.9)
DEFAULT_AMBIENT = 0.45


def get_context():
    """The process's standalone EGL context (created once per process and thread)."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        import moderngl

        try:
            ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                "could not create a headless EGL OpenGL context; install the system libraries with "
                "`make install-system` (apt: libegl1 libgl1 libgl1-mesa-dri libegl-mesa0 libgles2)"
            ) from e
        _local.ctx = ctx
        _local.prog = ctx.program(vertex_shader=_VERT, fragment_shader=_FRAG)
        _local.fbos = {}
    return ctx


def _fbos(ctx, h: int, w: int, samples: int):
    key = (h, w, samples)
    if key not in _local.fbos:
        def attachments(s):
            # colour: half float (premultiplied by coverage after resolve), normals: 8-bit encoded n/2+1/2,
            # depth: one float32 channel. Small formats keep the MSAA resolve cheap on llvmpipe.
            cols = [ctx.renderbuffer((w, h), 4, dtype="f2", samples=s), ctx.renderbuffer((w, h), 4, dtype="f1", samples=s),
                    ctx.renderbuffer((w, h), 1, dtype="f4", samples=s)]
            return cols, ctx.depth_renderbuffer((w, h), samples=s)

        cols, dep = attachments(samples)
        ms = ctx.framebuffer(color_attachments=cols, depth_attachment=dep)
        if samples > 0:
            cols2, dep2 = attachments(0)
            resolved = ctx.framebuffer(color_attachments=cols2, depth_attachment=dep2)
        else:
            resolved = ms
        _local.fbos[key] = (ms, resolved)
    return _local.fbos[key]


# --------------------------------------------------------------------------------------------------
# Mesh -> vertex arrays
# --------------------------------------------------------------------------------------------------
def _corner_normals(mesh: trimesh.Trimesh, crease_deg: float = 35.0) -> np.ndarray:
    """Per-corner normals: smooth vertex normals, except face normals across creases."""
    fn = np.asarray(mesh.face_normals, dtype=np.float32)
    f = np.asarray(mesh.faces)
    try:
        vn = np.asarray(mesh.vertex_normals, dtype=np.float32)[f]  # [F,3,3]
        cos = (vn * fn[:, None, :]).sum(-1, keepdims=True)
        out = np.where(cos > np.cos(np.radians(crease_deg)), vn, fn[:, None, :])
    except Exception:  # noqa: BLE001
        out = np.repeat(fn[:, None, :], 3, axis=1)
    return out.reshape(-1, 3)


def _material_color(material) -> np.ndarray:
    for attr in ("baseColorFactor", "diffuse", "main_color"):
        c = getattr(material, attr, None)
        if c is not None:
            c = np.asarray(c, dtype=np.float32).reshape(-1)
            if c.size >= 3:
                if c.max() > 1.0:
                    c = c / 255.0
                return np.concatenate([c[:3], [1.0]]).astype(np.float32)
    return np.array([0.7, 0.7, 0.7, 1.0], np.float32)


def _material_image(material):
    for attr in ("baseColorTexture", "image"):
        img = getattr(material, attr, None)
        if img is not None:
            return img
    return None


def mesh_arrays(mesh: trimesh.Trimesh) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Interleaved non-indexed vertex data [F*3, 12] (pos, normal, rgba, uv) and an RGBA texture or None."""
    f = np.asarray(mesh.faces)
    pos = np.asarray(mesh.vertices, dtype=np.float32)[f].reshape(-1, 3)
    nrm = _corner_normals(mesh)
    n = len(pos)
    col = np.ones((n, 4), np.float32)
    uv = np.zeros((n, 2), np.float32)
    image = None
    vis = mesh.visual
    kind = getattr(vis, "kind", None)
    if isinstance(vis, trimesh.visual.texture.TextureVisuals):
        mat = getattr(vis, "material", None)
        if mat is not None:
            col[:] = _material_color(mat)
            img = _material_image(mat)
            if img is not None and vis.uv is not None and len(vis.uv) == len(mesh.vertices):
                image = img
                # glTF: baseColorFactor multiplies the texture (spec). OBJ/MTL: Kd next to map_Kd is often a
                # placeholder (trimesh's default 0.4 grey), so textured OBJ materials use the texture alone.
                if not hasattr(mat, "baseColorFactor"):
                    col[:] = 1.0
                uv = np.asarray(vis.uv, dtype=np.float32)[f].reshape(-1, 2)
            elif img is not None:  # a texture without UVs: use its mean colour
                try:
                    col[:, :3] *= np.asarray(img.convert("RGB"), np.float32).reshape(-1, 3).mean(0) / 255.0
                except Exception:  # noqa: BLE001
                    pass
    elif kind == "vertex":
        vc = np.asarray(vis.vertex_colors, dtype=np.float32) / 255.0
        col = vc[f].reshape(-1, vc.shape[-1])
        if col.shape[1] == 3:
            col = np.concatenate([col, np.ones((n, 1), np.float32)], 1)
    elif kind == "face":
        fc = np.asarray(vis.face_colors, dtype=np.float32) / 255.0
        col = np.repeat(fc, 3, axis=0)
        if col.shape[1] == 3:
            col = np.concatenate([col, np.ones((n, 1), np.float32)], 1)
    else:
        col[:, :3] = 0.7
    col[:, 3] = 1.0
    data = np.concatenate([pos, nrm, col, uv], 1).astype(np.float32)
    if image is not None:
        try:
            image = np.asarray(image.convert("RGBA"), dtype=np.uint8)
        except Exception:  # noqa: BLE001
            image = None
    return np.ascontiguousarray(data), image


# --------------------------------------------------------------------------------------------------
# Camera matrices
# --------------------------------------------------------------------------------------------------
def gl_matrices(c2w: np.ndarray, intrinsics: np.ndarray, near: float, far: float) -> Tuple[np.ndarray, np.ndarray]:
    """OpenGL view and projection matrices for one OpenCV camera with normalised intrinsics."""
    c2w_gl = c2w.astype(np.float64) @ np.diag([1.0, -1.0, -1.0, 1.0])
    view = np.linalg.inv(c2w_gl)
    fx, fy, cx, cy = (float(x) for x in intrinsics)
    proj = np.zeros((4, 4))
    proj[0, 0] = 2 * fx
    proj[0, 2] = 1 - 2 * cx
    proj[1, 1] = 2 * fy
    proj[1, 2] = 2 * cy - 1
    proj[2, 2] = -(far + near) / (far - near)
    proj[2, 3] = -2 * far * near / (far - near)
    proj[3, 2] = -1.0
    return view, proj


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def render_inputs(mesh, c2w, intrinsics, resolution):
    """Normalise a renderer's arguments (shared with the Blender path): mesh/scene/parts -> list of parts,
    cameras -> [V, 4, 4] and [V, 4] arrays (one intrinsics row broadcast to all views), resolution -> (H, W)."""
    if isinstance(mesh, trimesh.Scene):
        parts = mesh.dump(concatenate=False)
    elif isinstance(mesh, trimesh.Trimesh):
        parts = [mesh]
    else:
        parts = list(mesh)
    c2w = _np(c2w).reshape(-1, 4, 4)
    intrinsics = _np(intrinsics).reshape(-1, 4)
    if len(intrinsics) == 1 and len(c2w) > 1:
        intrinsics = np.repeat(intrinsics, len(c2w), 0)
    hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    return parts, c2w, intrinsics, hw


def render_mesh(
    mesh: Union[trimesh.Trimesh, trimesh.Scene, Sequence[trimesh.Trimesh]],
    c2w,
    intrinsics,
    resolution: Union[int, Tuple[int, int]] = 256,
    light_dir: Optional[Sequence[float]] = None,
    ambient: float = DEFAULT_AMBIENT,
    samples: int = 4,
    near: Optional[float] = None,
    far: Optional[float] = None,
    normals: bool = True,
    depth: bool = True,
) -> Dict[str, np.ndarray]:
    """Render a mesh (or list of parts, or scene) from OpenCV cameras; see the module docstring.

    ``resolution`` is an int (square) or (H, W). ``light_dir`` is a world direction *toward* the light
    (default from above-front). ``samples`` is the MSAA sample count (0 = aliased, exact binary alpha).
    """
    parts, c2w, intrinsics, (h, w) = render_inputs(mesh, c2w, intrinsics, resolution)
    ctx = get_context()
    prog = _local.prog
    samples = min(int(samples), ctx.max_samples)
    ms, resolved = _fbos(ctx, h, w, samples)

    verts = np.concatenate([np.asarray(p.vertices, np.float64) for p in parts])
    radius = float(np.linalg.norm(verts, axis=1).max()) if len(verts) else 1.0
    dists = np.linalg.norm(c2w[:, :3, 3], axis=1)
    if near is None:
        near = max(1e-3, 0.5 * float((dists - radius).min()))
        near = min(near, 0.05) if (dists - radius).min() <= 0 else near
    if far is None:
        far = float((dists + radius).max()) * 1.5 + 1e-3

    light = np.asarray(DEFAULT_LIGHT if light_dir is None else light_dir, dtype=np.float64)
    light = light / max(np.linalg.norm(light), 1e-12)
    prog["light_dir"].value = tuple(light.tolist())
    prog["ambient"].value = float(ambient)

    objs = []
    try:
        for p in parts:
            data, image = mesh_arrays(p)
            vbo = ctx.buffer(data.tobytes())
            vao = ctx.vertex_array(prog, [(vbo, "3f 3f 4f 2f", "in_pos", "in_nrm", "in_col", "in_uv")])
            tex = None
            if image is not None:
                tex = ctx.texture((image.shape[1], image.shape[0]), 4, np.flipud(image).tobytes())
                tex.build_mipmaps()
                tex.repeat_x = tex.repeat_y = True
            objs.append((vbo, vao, tex))

        V = len(c2w)
        rgba = np.zeros((V, h, w, 4), np.float32)
        dep = np.zeros((V, h, w), np.float32) if depth else None
        nrm = np.zeros((V, h, w, 3), np.float32) if normals else None
        ctx.enable(ctx.DEPTH_TEST)
        ctx.disable(ctx.CULL_FACE)
        for i in range(V):
            view, proj = gl_matrices(c2w[i], intrinsics[i], near, far)
            prog["mvp"].write((proj @ view).astype("f4").T.tobytes())
            prog["view"].write(view.astype("f4").T.tobytes())
            prog["cam_pos"].value = tuple(c2w[i, :3, 3].tolist())
            ms.use()
            ms.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            for _, vao, tex in objs:
                if tex is not None:
                    tex.use(0)
                    prog["tex"].value = 0
                prog["use_tex"].value = tex is not None
                vao.render()
            if resolved is not ms:
                ctx.copy_framebuffer(resolved, ms)
            col = np.frombuffer(resolved.read(components=4, attachment=0, dtype="f2"), np.float16).reshape(h, w, 4)
            col = col.astype(np.float32)
            a = col[..., 3:4]
            inv = np.where(a > 1e-6, 1.0 / np.maximum(a, 1e-6), 0.0)
            rgba[i, ..., :3] = np.clip(col[..., :3] * inv, 0, 1)[::-1]
            rgba[i, ..., 3] = np.clip(a[..., 0], 0, 1)[::-1]
            if depth:
                d = np.frombuffer(resolved.read(components=1, attachment=2, dtype="f4"), np.float32).reshape(h, w)
                dep[i] = (d * inv[..., 0])[::-1]
            if normals:
                nn = np.frombuffer(resolved.read(components=4, attachment=1, dtype="f1"), np.uint8).reshape(h, w, 4)
                nn = nn[..., :3].astype(np.float32) / 255.0 * 2.0 - a  # decode the coverage-weighted average
                norm = np.linalg.norm(nn, axis=-1, keepdims=True)
                nrm[i] = np.where(norm > 1e-6, nn / np.maximum(norm, 1e-6), 0.0)[::-1]
    finally:
        for vbo, vao, tex in objs:
            vao.release()
            vbo.release()
            if tex is not None:
                tex.release()
    return {k: v for k, v in (("rgba", rgba), ("depth", dep), ("normals", nrm)) if v is not None}
