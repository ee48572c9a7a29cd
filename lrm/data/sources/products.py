"""Procedural household products wrapped with crops of real photographs that installed packages ship.

Shapes (``KINDS``): cereal box, milk carton (gable top and fin), book, bottle (lathe profile with shoulder,
neck and cap), can (metallic lids with a rim), jar (lid), bowl and mug (open, with wall thickness; the mug
may have a handle). Proportions are random. Labels wrap around bottles, cans, jars and mugs (cylindrical
UVs, ``u`` around the axis, ``v`` up); box-like shapes get one texture atlas with one cell per face (planar
UVs); caps, lids, glass, cardboard, pages and ceramic get plain realistic colours.

Label images are designs made of crops (random position, size and rotation, optional hue shift, grey
photos tinted) of the images in :func:`texture_pool`: ``skimage.data``'s bundled images, matplotlib's
sample images, pybullet_data's textures and FlightGear's model textures (Debian ``flightgear-data-models``;
skipped when absent). ``imageio``'s standard images are downloaded at run time, so none are used.

Seeded and unlimited: object ``i`` of seed ``s`` (uid ``prod-s-i``) is always the same mesh and texture on
a machine with the same packages installed (the pool's content decides which photographs are picked).
The object's licence names the licences of the photographs it uses (FlightGear textures are GPL-2+).
"""
from __future__ import annotations

import colorsys
import functools
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import trimesh
from PIL import Image

from . import SourceObject

NAME = "products"
LICENCE = ("geometry CC0-1.0 (generated); label textures: scikit-image sample images (CC0 / public domain; "
           "logo and colour wheel BSD-3-Clause), matplotlib sample images (public domain photo; matplotlib "
           "licence), pybullet_data textures (zlib), FlightGear model textures (GPL-2+); per object in its record")
KINDS = ("cereal_box", "milk_carton", "book", "bottle", "can", "jar", "bowl", "mug")
KIND_P = (0.14, 0.1, 0.1, 0.16, 0.16, 0.12, 0.1, 0.12)
#: per kind, the probability that each texture slot carries a photo design (else a plain colour)
SLOTS = {
    "cereal_box": (1.0, 0.6, 0.4),   # front, back, sides
    "milk_carton": (0.9, 0.5),       # front/back walls, left/right walls
    "book": (1.0, 0.3),              # front cover, back cover
    "bottle": (0.9,),                # label
    "can": (1.0,),                   # label
    "jar": (0.85,),                  # label
    "bowl": (0.25,),                 # printed outside
    "mug": (0.5,),                   # printed outside
}
FLIGHTGEAR_MODELS = Path("/usr/share/games/flightgear/Models")

# plain colours, RGB in [0, 1]
WHITE = (0.93, 0.93, 0.91)
CREAM = (0.93, 0.89, 0.78)
CARDBOARD = (0.66, 0.52, 0.36)
METAL = (0.72, 0.73, 0.75)
ALUMINIUM = (0.82, 0.83, 0.85)
GOLD = (0.78, 0.64, 0.32)
GLASS = {"green": (0.18, 0.38, 0.2), "brown": (0.36, 0.2, 0.08), "clear": (0.78, 0.84, 0.82),
         "blue": (0.2, 0.32, 0.55)}
CERAMIC = (WHITE, CREAM, (0.85, 0.88, 0.92), (0.6, 0.32, 0.22), (0.25, 0.35, 0.55), (0.55, 0.62, 0.5),
           (0.2, 0.2, 0.22))
CONTENTS = ((0.55, 0.08, 0.1), (0.8, 0.5, 0.1), (0.35, 0.45, 0.15), (0.9, 0.88, 0.8), (0.4, 0.22, 0.1))


def available():
    return (True, "") if texture_pool() else (False, "no texture images found")


# --------------------------------------------------------------------------------------------------
# Texture pool
# --------------------------------------------------------------------------------------------------
_SKIMAGE = (  # (file in skimage/data, licence); all bundled in the wheel, no download
    ("astronaut.png", "public domain (NASA)"), ("chelsea.png", "CC0"), ("coffee.png", "CC0"),
    ("rocket.jpg", "public domain (SpaceX)"), ("hubble_deep_field.jpg", "public domain (NASA)"),
    ("ihc.png", "public domain"), ("camera.png", "CC0"), ("text.png", "public domain"),
    ("page.png", "BSD-3-Clause (scikit-image)"), ("brick.png", "CC0"), ("grass.png", "CC0"),
    ("gravel.png", "CC0"), ("coins.png", "public domain"), ("clock_motion.png", "public domain"),
    ("moon.png", "BSD-3-Clause (scikit-image)"), ("logo.png", "BSD-3-Clause (scikit-image)"),
    ("color.png", "BSD-3-Clause (scikit-image)"),
)
_MATPLOTLIB = (("grace_hopper.jpg", "public domain (US Navy)"),
               ("Minduka_Present_Blue_Pack.png", "matplotlib sample data (public domain clip art)"),
               ("logo2.png", "matplotlib licence (PSF-style)"))
_PYBULLET = ("table.png", "tray/tray.jpg", "domino/domino.jpg", "jenga/jenga.png", "laikago/laikago_tex.jpg",
             "racecar/meshes/wheel.jpg", "roboschool/models_outdoor/stadium/stadium_grass.jpg", "duckCM.png",
             "quadruped/t-motor.jpg", "tex256.png")
#: how often each package's images are picked (renormalised over the packages present)
PACKAGE_P = {"skimage": 0.35, "matplotlib": 0.1, "pybullet_data": 0.15, "flightgear": 0.4}


def _pkg_dir(mod: str, sub: str = "") -> Optional[Path]:
    try:
        import importlib.util

        spec = importlib.util.find_spec(mod)
    except Exception:  # noqa: BLE001
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _size_ok(path: Path, min_side: int = 128) -> bool:
    try:
        with Image.open(path) as im:
            return min(im.size) >= min_side
    except Exception:  # noqa: BLE001
        return False


@functools.lru_cache(maxsize=None)
def texture_pool() -> Tuple[Tuple[str, str, str, str], ...]:
    """Every usable photograph as ``(package, name, path, licence)``, in a fixed order (cached per process)."""
    pool: List[Tuple[str, str, str, str]] = []
    d = _pkg_dir("skimage", "data")
    if d is not None:
        pool += [("skimage", n, str(d / n), lic) for n, lic in _SKIMAGE if (d / n).is_file()]
    try:
        import matplotlib

        d = Path(matplotlib.get_data_path()) / "sample_data"
        pool += [("matplotlib", n, str(d / n), lic) for n, lic in _MATPLOTLIB if (d / n).is_file()]
    except Exception:  # noqa: BLE001
        pass
    d = _pkg_dir("pybullet_data")
    if d is not None:
        pool += [("pybullet_data", n, str(d / n), "zlib") for n in _PYBULLET if (d / n).is_file() and _size_ok(d / n)]
    if FLIGHTGEAR_MODELS.is_dir():
        files = sorted(p for p in FLIGHTGEAR_MODELS.rglob("*") if p.suffix.lower() in (".png", ".rgb") and p.is_file())
        pool += [("flightgear", str(p.relative_to(FLIGHTGEAR_MODELS)), str(p), "GPL-2+") for p in files if _size_ok(p)]
    return tuple(e for e in pool if "libero" not in e[2].lower())


def _pick(rng: np.random.Generator) -> int:
    pool = texture_pool()
    pkgs = sorted({e[0] for e in pool})
    p = np.array([PACKAGE_P.get(k, 0.1) for k in pkgs])
    pkg = pkgs[int(rng.choice(len(pkgs), p=p / p.sum()))]
    idx = [i for i, e in enumerate(pool) if e[0] == pkg]
    return idx[int(rng.integers(len(idx)))]


@functools.lru_cache(maxsize=24)
def load_image(path: str, max_side: int = 768) -> Image.Image:
    """A pool photo as RGB (alpha composited on white), at most ``max_side`` pixels (cached per process)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
    if max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
    return im


# --------------------------------------------------------------------------------------------------
# Label designs
# --------------------------------------------------------------------------------------------------
def _rgb255(c) -> Tuple[int, int, int]:
    return tuple(int(round(255 * float(x))) for x in np.clip(c, 0, 1)[:3])


def _vivid(rng) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.35, 0.95)))


def crop(rng: np.random.Generator, path: str, size: Tuple[int, int], hue: bool = True) -> Image.Image:
    """A random rotated crop of a pool photo resampled to ``size`` (w, h), maybe hue-shifted; grey photos are
    tinted with two random colours. A crop with almost no contrast is retried (3 times)."""
    src = load_image(path)
    W, H = src.size
    w, h = size
    a = w / h
    grey = _is_grey(path)
    for _ in range(4):
        ang = float(rng.choice([0.0, 90.0, 180.0, 270.0], p=[0.7, 0.1, 0.1, 0.1]) + rng.normal(0.0, 6.0))
        t = np.radians(ang)
        c, s = abs(np.cos(t)), abs(np.sin(t))
        cw_max = min(W / (c + s / a), H / (s + c / a))
        cw = cw_max * rng.uniform(0.3, 1.0)
        ch = cw / a
        bw, bh = cw * c + ch * s, cw * s + ch * c
        cx, cy = rng.uniform(bw / 2, W - bw / 2), rng.uniform(bh / 2, H - bh / 2)
        R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        corners = np.array([[-cw / 2, -ch / 2], [-cw / 2, ch / 2], [cw / 2, ch / 2], [cw / 2, -ch / 2]]) @ R.T + [cx, cy]
        out = src.transform((w, h), Image.QUAD, tuple(corners.reshape(-1).tolist()), Image.BILINEAR)
        arr = np.asarray(out.resize((16, 16), Image.BILINEAR), np.float32)
        if arr.std() > 10.0:
            break
    if grey:
        g = np.asarray(out.convert("L"), np.float32)[..., None] / 255.0
        c0, c1 = _vivid(rng) * rng.uniform(0.1, 0.6), 1.0 - (1.0 - _vivid(rng)) * rng.uniform(0.1, 0.5)
        out = Image.fromarray((np.clip(c0 * (1 - g) + c1 * g, 0, 1) * 255).astype(np.uint8))
    elif hue and rng.random() < 0.35:
        hsv = np.asarray(out.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(20, 236))) % 256
        out = Image.fromarray(hsv, "HSV").convert("RGB")
    return out


@functools.lru_cache(maxsize=64)
def _is_grey(path: str) -> bool:
    a = np.asarray(load_image(path).resize((32, 32)), np.float32)
    return float(np.abs(a - a.mean(-1, keepdims=True)).max()) < 6.0


def design(rng: np.random.Generator, path: str, size: Tuple[int, int]) -> Image.Image:
    """A label/print: the photo full bleed, or a photo panel on a coloured ground with colour bands."""
    w, h = size
    style = rng.choice(["full", "panel", "bands"], p=[0.55, 0.35, 0.1])
    if style == "full":
        return crop(rng, path, (w, h))
    bg = _vivid(rng) if rng.random() < 0.7 else np.array(WHITE)
    img = Image.new("RGB", (w, h), _rgb255(bg))
    if style == "panel":
        pw, ph = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.5, 0.85))
        x0, y0 = int(rng.uniform(0, w - pw)), int(rng.uniform(0.05, 0.95) * (h - ph))
        img.paste(crop(rng, path, (max(pw, 8), max(ph, 8))), (x0, y0))
        band = _vivid(rng)
        bh = int(h * rng.uniform(0.05, 0.15))
        img.paste(Image.new("RGB", (w, bh), _rgb255(band)), (0, 0 if y0 > bh else h - bh))
    else:
        n = int(rng.integers(2, 5))
        ys = np.sort(rng.uniform(0, h, n)).astype(int)
        for y in ys:
            img.paste(Image.new("RGB", (w, max(2, int(h * rng.uniform(0.03, 0.12)))), _rgb255(_vivid(rng))), (0, int(y)))
        pw = int(min(w, h) * rng.uniform(0.4, 0.8))
        img.paste(crop(rng, path, (max(pw, 8), max(pw, 8))), (int(rng.uniform(0, w - pw)), int(rng.uniform(0, h - pw))))
    return img


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------
def _material(image: Image.Image):
    return trimesh.visual.material.SimpleMaterial(image=image, diffuse=[255, 255, 255, 255])


def plain(mesh: trimesh.Trimesh, color) -> trimesh.Trimesh:
    c = np.append(np.asarray(color, np.float64)[:3], 1.0)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=np.tile((c * 255).round().astype(np.uint8), (len(mesh.faces), 1)))
    return mesh


def lathe(profile: Sequence[Tuple[float, float]], sections: int = 48, image: Optional[Image.Image] = None,
          color=None, u_repeat: int = 1) -> trimesh.Trimesh:
    """Revolve a (r, z) polyline around +Z. Vertices form a (sections + 1) x K grid (the seam is duplicated)
    with ``u = u_repeat * j / sections`` around the axis (the image repeats ``u_repeat`` times) and ``v`` = height fraction of the polyline (0 at its lowest
    point, OpenGL convention: the image bottom). Faces point outward of the solid when the profile runs
    bottom-centre -> outside -> top (a bowl's inner wall coming back down points into the cavity)."""
    P = np.asarray(profile, np.float64)
    K = len(P)
    th = np.linspace(0.0, 2 * np.pi, sections + 1)
    r, z = P[:, 0], P[:, 1]
    V = np.stack([np.cos(th)[:, None] * r[None], np.sin(th)[:, None] * r[None], np.broadcast_to(z, (sections + 1, K))], -1)
    zr = max(z.max() - z.min(), 1e-9)
    UV = np.stack([np.broadcast_to((u_repeat * th / (2 * np.pi))[:, None], (sections + 1, K)),
                   np.broadcast_to(((z - z.min()) / zr)[None], (sections + 1, K))], -1)
    idx = np.arange((sections + 1) * K).reshape(sections + 1, K)
    faces = []
    for k in range(K - 1):
        a, b, c, d = idx[:-1, k], idx[1:, k], idx[1:, k + 1], idx[:-1, k + 1]
        if r[k] > 1e-12:
            faces.append(np.stack([a, b, c], 1))
        if r[k + 1] > 1e-12:
            faces.append(np.stack([a, c, d], 1))
    m = trimesh.Trimesh(V.reshape(-1, 3), np.concatenate(faces), process=False)
    if image is not None:
        m.visual = trimesh.visual.TextureVisuals(uv=UV.reshape(-1, 2), material=_material(image))
        return m
    return plain(m, color if color is not None else WHITE)


def lathe_parts(profile, cuts: Sequence[int], looks: Sequence, sections: int = 48,
                u_repeat: int = 1) -> List[trimesh.Trimesh]:
    """Split a profile at point indices ``cuts`` into len(cuts) + 1 lathes; ``looks`` is one colour or PIL
    image per piece."""
    bounds = [0, *cuts, len(profile) - 1]
    out = []
    for (i0, i1), look in zip(zip(bounds[:-1], bounds[1:]), looks):
        seg = profile[i0:i1 + 1]
        out.append(lathe(seg, sections, image=look if isinstance(look, Image.Image) else None,
                         color=None if isinstance(look, Image.Image) else look, u_repeat=u_repeat))
    return out


class Atlas:
    """Planar faces (quads, triangles) that each map onto one cell of a texture atlas (photo design or plain
    colour); vertices are never shared between faces."""

    def __init__(self, cell: int = 192, cols: int = 3):
        self.cell, self.cols = cell, cols
        self.cells: List = []  # PIL image (already cell-sized) or colour
        self.V, self.UV, self.F = [], [], []

    def add_cell(self, look) -> int:
        self.cells.append(look)
        return len(self.cells) - 1

    def _rect(self, i):
        rows = (len(self.cells) + self.cols - 1) // self.cols
        W, H = self.cols * self.cell, rows * self.cell
        cx, cy = i % self.cols, i // self.cols
        inset = 2.0
        u0, u1 = (cx * self.cell + inset) / W, ((cx + 1) * self.cell - inset) / W
        # v = 0 at the image bottom: row 0 (top of the image) has the largest v
        v1, v0 = 1 - (cy * self.cell + inset) / H, 1 - ((cy + 1) * self.cell - inset) / H
        return u0, v0, u1, v1

    def quad(self, origin, right, up, cell: int):
        """Corners origin, +right, +right+up, +up (seen from outside: bottom-left, counter-clockwise)."""
        o, r, u = (np.asarray(x, np.float64) for x in (origin, right, up))
        n = len(self.V)
        self.V += [o, o + r, o + r + u, o + u]
        self.UV += [(cell, 0, 0), (cell, 1, 0), (cell, 1, 1), (cell, 0, 1)]
        self.F += [(n, n + 1, n + 2), (n, n + 2, n + 3)]

    def tri(self, a, b, apex, cell: int):
        n = len(self.V)
        self.V += [np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(apex, np.float64)]
        self.UV += [(cell, 0, 0), (cell, 1, 0), (cell, 0.5, 1)]
        self.F += [(n, n + 1, n + 2)]

    def box(self, lo, hi, cells: Dict[str, int]):
        """An axis-aligned box; ``cells`` maps front(-y)/back(+y)/left(-x)/right(+x)/top/bottom to cells."""
        (x0, y0, z0), (x1, y1, z1) = lo, hi
        W, D, H = x1 - x0, y1 - y0, z1 - z0
        self.quad((x0, y0, z0), (W, 0, 0), (0, 0, H), cells["front"])
        self.quad((x1, y1, z0), (-W, 0, 0), (0, 0, H), cells["back"])
        self.quad((x1, y0, z0), (0, D, 0), (0, 0, H), cells["right"])
        self.quad((x0, y1, z0), (0, -D, 0), (0, 0, H), cells["left"])
        self.quad((x0, y0, z1), (W, 0, 0), (0, D, 0), cells["top"])
        self.quad((x0, y1, z0), (W, 0, 0), (0, -D, 0), cells["bottom"])

    def mesh(self) -> trimesh.Trimesh:
        rows = (len(self.cells) + self.cols - 1) // self.cols
        img = Image.new("RGB", (self.cols * self.cell, rows * self.cell), (255, 255, 255))
        for i, look in enumerate(self.cells):
            x, y = (i % self.cols) * self.cell, (i // self.cols) * self.cell
            tile = look.resize((self.cell, self.cell), Image.BILINEAR) if isinstance(look, Image.Image) \
                else Image.new("RGB", (self.cell, self.cell), _rgb255(look))
            img.paste(tile, (x, y))
        uv = np.zeros((len(self.UV), 2))
        for k, (cell, s, t) in enumerate(self.UV):
            u0, v0, u1, v1 = self._rect(cell)
            uv[k] = (u0 + s * (u1 - u0), v0 + t * (v1 - v0))
        m = trimesh.Trimesh(np.array(self.V), np.array(self.F), process=False)
        m.visual = trimesh.visual.TextureVisuals(uv=uv, material=_material(img))
        return m


def _px(aspect: float, long_side: int = 384) -> Tuple[int, int]:
    """Pixel size (w, h) for a face of width/height ``aspect``."""
    aspect = float(np.clip(aspect, 0.2, 5.0))
    return (long_side, max(16, int(long_side / aspect))) if aspect >= 1 else (max(16, int(long_side * aspect)), long_side)


# --------------------------------------------------------------------------------------------------
# Shapes. ``tex`` is a list of label makers, one per slot: callable(w_px, h_px) -> PIL image, or None (plain).
# --------------------------------------------------------------------------------------------------
Maker = Optional[Callable[[int, int], Image.Image]]


def _look(maker: Maker, aspect: float, fallback):
    return maker(*_px(aspect)) if maker is not None else fallback


def _wrap(maker: Maker, R: float, height: float, fallback, max_aspect: float = 2.5):
    """A label for a wall of radius R: the image repeats ``rep`` times around, each copy undistorted."""
    a = 2 * np.pi * R / max(height, 1e-6)
    rep = max(1, int(round(a / max_aspect)))
    return _look(maker, a / rep, fallback), rep


def cereal_box(rng, tex: Sequence[Maker]):
    W, D, H = rng.uniform(0.5, 0.9), rng.uniform(0.15, 0.35), rng.uniform(0.8, 1.3)
    if rng.random() < 0.3:  # squat box (tea, crackers)
        H *= 0.5
    base = _vivid(rng)
    a = Atlas()
    front = a.add_cell(_look(tex[0], W / H, base))
    back = a.add_cell(_look(tex[1], W / H, base)) if rng.random() < 0.7 or tex[1] is not None else front
    side = a.add_cell(_look(tex[2], D / H, base))
    top = a.add_cell(base if rng.random() < 0.6 else CARDBOARD)
    a.box((-W / 2, -D / 2, 0), (W / 2, D / 2, H),
          dict(front=front, back=back, left=side, right=side, top=top, bottom=top))
    return [a.mesh()]


def milk_carton(rng, tex: Sequence[Maker]):
    W, H = rng.uniform(0.3, 0.5), rng.uniform(0.7, 1.2)
    D = W * rng.uniform(0.85, 1.0)
    g = W / 2 * rng.uniform(0.5, 0.8)  # gable height
    base = WHITE if rng.random() < 0.6 else _vivid(rng)
    a = Atlas()
    fb = a.add_cell(_look(tex[0], W / H, base))
    lr = a.add_cell(_look(tex[1], D / H, base))
    roof = a.add_cell(base)
    x0, x1, y0, y1 = -W / 2, W / 2, -D / 2, D / 2
    a.quad((x0, y0, 0), (W, 0, 0), (0, 0, H), fb)
    a.quad((x1, y1, 0), (-W, 0, 0), (0, 0, H), fb)
    a.quad((x1, y0, 0), (0, D, 0), (0, 0, H), lr)
    a.quad((x0, y1, 0), (0, -D, 0), (0, 0, H), lr)
    a.quad((x0, y1, 0), (W, 0, 0), (0, -D, 0), roof)  # bottom
    # gable roof: ridge along x at y = 0, triangles at both ends
    a.quad((x0, y0, H), (W, 0, 0), (0, D / 2, g), roof)
    a.quad((x1, y1, H), (-W, 0, 0), (0, -D / 2, g), roof)
    a.tri((x1, y0, H), (x1, y1, H), (x1, 0, H + g), roof)
    a.tri((x0, y1, H), (x0, y0, H), (x0, 0, H + g), roof)
    body = a.mesh()
    fin = plain(trimesh.creation.box(extents=[W, 0.02 * W + 0.005, 0.12 * W]), base)
    fin.apply_translation([0, 0, H + g + 0.05 * W])
    parts = [body, fin]
    if rng.random() < 0.5:  # screw cap on one roof slope
        cap = lathe([(0, 0), (0.09 * W, 0), (0.09 * W, 0.06 * W), (0, 0.06 * W)], 24, color=_vivid(rng))
        tilt = np.arctan2(g, D / 2)
        cap.apply_transform(trimesh.transformations.rotation_matrix(-tilt, [1, 0, 0]))
        cap.apply_translation([0.2 * W * rng.choice([-1, 1]), -D / 4, H + g / 2])
        parts.append(cap)
    return parts


def book(rng, tex: Sequence[Maker]):
    W, T, H = rng.uniform(0.5, 0.8), rng.uniform(0.06, 0.25), rng.uniform(0.7, 1.1)
    cover = _vivid(rng) if rng.random() < 0.8 else np.array(CREAM)
    a = Atlas()
    front = a.add_cell(_look(tex[0], W / H, cover))
    back = a.add_cell(_look(tex[1], W / H, cover))
    spine = a.add_cell(cover)
    pages = a.add_cell(CREAM if rng.random() < 0.5 else WHITE)
    a.box((-W / 2, -T / 2, 0), (W / 2, T / 2, H),
          dict(front=front, back=back, left=spine, right=pages, top=pages, bottom=pages))
    parts = [a.mesh()]
    if rng.random() < 0.5:  # lying flat
        parts[0].apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    return parts


def bottle(rng, tex: Sequence[Maker]):
    R, h = rng.uniform(0.12, 0.25), rng.uniform(0.8, 1.3)
    zs = h * rng.uniform(0.45, 0.7)  # shoulder start
    rn = R * rng.uniform(0.25, 0.45)  # neck radius
    zn = zs + h * rng.uniform(0.08, 0.2)
    zt = min(h, zn + h * rng.uniform(0.05, 0.2))
    zl0, zl1 = zs * rng.uniform(0.1, 0.3), zs * rng.uniform(0.75, 0.95)
    t = np.linspace(0, 1, 8)[1:-1]
    shoulder = [(rn + (R - rn) * (0.5 + 0.5 * np.cos(np.pi * s)), zs + (zn - zs) * s) for s in t]
    prof = [(0.0, 0.02 * h), (0.85 * R, 0.0), (R, 0.03 * h), (R, zl0), (R, zl1), (R, zs), *shoulder,
            (rn, zn), (rn, zt), (0.0, zt)]
    plastic = rng.random() < 0.4
    body = _vivid(rng) if plastic else np.array(GLASS[str(rng.choice(list(GLASS)))])
    label, rep = _wrap(tex[0], R, zl1 - zl0, body)
    parts = lathe_parts(prof, [3, 4], [body, label, body], u_repeat=rep)
    cap_h = h * rng.uniform(0.04, 0.09)
    rc = rn * rng.uniform(1.1, 1.3)
    parts.append(lathe([(0, zt - 0.6 * cap_h), (rc, zt - 0.6 * cap_h), (rc, zt + 0.4 * cap_h), (0, zt + 0.4 * cap_h)],
                       32, color=_vivid(rng) if rng.random() < 0.6 else (GOLD if rng.random() < 0.5 else WHITE)))
    return parts


def can(rng, tex: Sequence[Maker]):
    R, h = rng.uniform(0.15, 0.35), rng.uniform(0.35, 0.9)
    if h < 2 * R * 0.6:  # keep tuna-can squat shapes plausible
        h = 2 * R * 0.6
    lid = METAL if rng.random() < 0.5 else ALUMINIUM
    z0, z1 = 0.04 * h, h - 0.05 * h
    bottom = [(0.0, 0.025 * h), (0.75 * R, 0.025 * h), (0.86 * R, 0.0), (0.95 * R, 0.0), (R, z0)]
    top = [(R, z1), (0.93 * R, h - 0.012 * h), (0.93 * R, h), (0.89 * R, h), (0.87 * R, h - 0.02 * h), (0.0, h - 0.02 * h)]
    prof = bottom + top
    label, rep = _wrap(tex[0], R, z1 - z0, _vivid(rng))
    return lathe_parts(prof, [4, 5], [lid, label, lid], u_repeat=rep)


def jar(rng, tex: Sequence[Maker]):
    R, h = rng.uniform(0.2, 0.35), rng.uniform(0.35, 0.8)
    zs = h * rng.uniform(0.75, 0.88)
    rn = R * rng.uniform(0.75, 0.9)
    zl0, zl1 = h * rng.uniform(0.1, 0.25), zs * rng.uniform(0.8, 0.95)
    prof = [(0.0, 0.0), (0.92 * R, 0.0), (R, 0.04 * h), (R, zl0), (R, zl1), (R, zs), (rn, zs + 0.05 * h), (rn, h), (0.0, h)]
    content = np.array(CONTENTS[int(rng.integers(len(CONTENTS)))])
    label, rep = _wrap(tex[0], R, zl1 - zl0, content)
    parts = lathe_parts(prof, [3, 4], [content, label, content], u_repeat=rep)
    lid_h = h * rng.uniform(0.08, 0.15)
    rl = rn * 1.06
    col = GOLD if rng.random() < 0.3 else (METAL if rng.random() < 0.3 else _vivid(rng))
    parts.append(lathe([(0, h - 0.7 * lid_h), (rl, h - 0.7 * lid_h), (rl, h + 0.3 * lid_h), (0, h + 0.3 * lid_h)], 40, color=col))
    return parts


def _vessel_profile(R: float, rb: float, h: float, wall: float, base: float, curve: float, n: int = 10):
    """Outer wall from the foot (rb, 0) up to the rim (R, h), rim top, inner wall back down to the centre.
    Returns the profile and the index of the first inner-wall point."""
    s = np.linspace(0, 1, n)
    outer_r = rb + (R - rb) * s ** curve
    outer = [(0.0, 0.0)] + [(float(r), float(z)) for r, z in zip(outer_r, s * h)]
    inner = [(float(max(r - wall, 0.0)), float(base + (h - base) * z)) for r, z in zip(outer_r[::-1], s[::-1])]
    inner = [(r, z) for r, z in inner if r > 0] + [(0.0, base)]
    return outer + inner, len(outer)


def bowl(rng, tex: Sequence[Maker]):
    R = rng.uniform(0.4, 0.6)
    h = R * rng.uniform(0.35, 0.7)
    prof, inner0 = _vessel_profile(R, R * rng.uniform(0.35, 0.55), h, R * rng.uniform(0.03, 0.07), h * 0.12,
                                   rng.uniform(0.4, 0.8))
    colour = CERAMIC[int(rng.integers(len(CERAMIC)))]
    outside, rep = _wrap(tex[0], R, h, colour)
    inside = colour if rng.random() < 0.7 else WHITE
    return lathe_parts(prof, [1, inner0], [colour, outside, inside], sections=48, u_repeat=rep)


def mug(rng, tex: Sequence[Maker]):
    R, h = rng.uniform(0.2, 0.32), rng.uniform(0.45, 0.8)
    prof, inner0 = _vessel_profile(R, R * rng.uniform(0.8, 0.98), h, R * rng.uniform(0.06, 0.1), h * 0.08,
                                   1.0, n=4)
    colour = CERAMIC[int(rng.integers(len(CERAMIC)))] if rng.random() < 0.7 else _vivid(rng)
    outside, rep = _wrap(tex[0], R, h, colour)
    parts = lathe_parts(prof, [1, inner0], [colour, outside, colour], sections=40, u_repeat=rep)
    if rng.random() < 0.85:  # handle: a torus half outside the wall
        Rh = h * rng.uniform(0.25, 0.35)
        handle = trimesh.creation.torus(major_radius=Rh, minor_radius=R * rng.uniform(0.08, 0.14),
                                        major_sections=24, minor_sections=10)
        handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
        handle.apply_translation([R * 0.97, 0, h * 0.5])
        parts.append(plain(handle, colour))
    return parts


SHAPES = dict(cereal_box=cereal_box, milk_carton=milk_carton, book=book, bottle=bottle, can=can, jar=jar,
              bowl=bowl, mug=mug)


# --------------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------------
def plan(seed: int, index: int, kind: Optional[str] = None) -> Tuple[str, List[int]]:
    """Kind and texture picks (pool index or -1 = plain) of an object; cheap (no image is read)."""
    rng = np.random.default_rng([int(seed), int(index), 7])
    k = str(rng.choice(KINDS, p=KIND_P))
    kind = kind or k
    picks = [(_pick(rng) if rng.random() < p else -1) for p in SLOTS[kind]]
    return kind, picks


def make_object(seed: int, index: int, kind: Optional[str] = None) -> List[trimesh.Trimesh]:
    """The parts of object ``index`` for ``seed`` (deterministic); ``kind`` forces a shape."""
    kind, picks = plan(seed, index, kind)
    rng = np.random.default_rng([int(seed), int(index)])
    pool = texture_pool()
    makers: List[Maker] = [None if p < 0 else functools.partial(lambda path, w, h: design(rng, path, (w, h)), pool[p][2])
                           for p in picks]
    parts = SHAPES[kind](rng, makers)
    spin = trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * np.pi), [0, 0, 1])
    for p in parts:
        p.apply_transform(spin)
    return parts


def licence_of(picks: Sequence[int]) -> str:
    pool = texture_pool()
    used = sorted({f"{pool[p][0]}:{pool[p][1]} ({pool[p][3]})" for p in picks if p >= 0})
    return "geometry CC0-1.0" + (("; textures: " + ", ".join(used)) if used else "")


def objects(num: Optional[int] = 1000, seed: int = 0, start: int = 0, **_) -> Iterator[SourceObject]:
    i = start
    while num is None or i < start + num:
        kind, picks = plan(seed, i)
        pool = texture_pool()
        yield SourceObject(
            uid=f"prod-{seed}-{i:06d}", source=NAME, licence=licence_of(picks),
            loader=functools.partial(make_object, seed, i),
            meta={"seed": seed, "index": i, "kind": kind, "textures": [f"{pool[p][0]}:{pool[p][1]}" for p in picks if p >= 0]},
        )
        i += 1
