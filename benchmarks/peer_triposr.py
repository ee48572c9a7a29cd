"""One 256² view at TripoSR's size: TripoSR's own renderer beside ours, interleaved in one process (same load).

    git --git-dir=/work/.mirror/VAST-AI-Research+TripoSR/repo archive d26e331 tsr | tar -x -C /tmp/triposr_src
    python benchmarks/peer_triposr.py --triposr /tmp/triposr_src [--threads 2] [--rounds 3] [--res 256]

TripoSR's `TriplaneNeRFRenderer` and `NeRFMLP` are imported from the checkout at run time (nothing of them is copied
here), built as its published config builds them (radius 0.87, 128 midpoint samples, concat of 3 × 40-channel planes,
a 10-layer SiLU MLP of width 64, exp(raw - 1) density) with the chunk of 8,192 points that its `run.py` uses. Ours is
`configs/triposr.yaml`'s decoder and renderer as `infer.py` runs them (`render.threads`, the folded decoder, the
occupancy grid built in the call, which falls back to the dense path on this foggy random field). Both get the same
random 3 × 40 × 64² planes and the same MLP weights (ours copied into theirs), and rays of one camera at
`--res`²: the same work, timed as wall and process CPU seconds, medians over ``--rounds``. The images are not
compared: the two codes order the planes' axes differently (lrm/convert/triposr.py maps checkpoints, not scenes).
TripoSR's `tsr.utils` imports `rembg` at module level, which its renderer never uses; a stub module stands in when
the package is absent. shared/reference-figures.md: TripoSR's view took 7.1 s there; the target is <= 0.3x.
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_render import interleaved  # noqa: E402  (benchmarks/ is this script's folder)


def import_triposr(src: Path):
    if not (src / "tsr" / "models" / "nerf_renderer.py").is_file():
        raise SystemExit(f"--triposr {src}: not a TripoSR checkout (no tsr/models/nerf_renderer.py)")
    try:
        import rembg  # noqa: F401
    except ImportError:
        sys.modules["rembg"] = types.ModuleType("rembg")  # imported by tsr.utils, unused by the renderer
    sys.path.insert(0, str(src))
    from tsr.models.nerf_renderer import TriplaneNeRFRenderer
    from tsr.models.network_utils import NeRFMLP

    return TriplaneNeRFRenderer, NeRFMLP


def ours_and_theirs(src: Path, cfg, scene):
    """(our model of ``cfg`` (TripoSR's size), their renderer, their MLP with our decoder's weights, planes);
    ``scene(our decoder's Linear layers)`` returns the planes (and may set those weights first)."""
    from lrm.models import build_model

    Renderer, MLP = import_triposr(src)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    d, r = cfg.model.decoder, cfg.model.render
    renderer = Renderer({"radius": float(r.radius), "feature_reduction": "concat", "density_activation": "exp",
                         "density_bias": float(d.density_bias), "color_activation": "sigmoid",
                         "num_samples_per_ray": int(r.n_samples)}).eval()
    renderer.set_chunk_size(8192)
    mlp = MLP({"in_channels": 3 * int(cfg.model.upsampler.channels), "n_neurons": int(d.hidden),
               "n_hidden_layers": int(d.hidden_layers), "activation": "silu"}).eval()
    ours = [m for m in model.decoder.layers if isinstance(m, torch.nn.Linear)]
    theirs = [m for m in mlp.layers if isinstance(m, torch.nn.Linear)]
    if [tuple(m.weight.shape) for m in ours] != [tuple(m.weight.shape) for m in theirs]:
        raise SystemExit("the two decoders' layer shapes differ")
    planes = scene(ours)
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    return model, renderer, mlp, planes


def ball_scene(linears, channels: int, res: int, radius: float, ball: float = 0.5, carry: float = 8.0):
    """A scene with an object in empty space, held by TripoSR's network shape: planes whose channel 0 is
    ``-a (u² + v²) + c / 3`` (so the three planes sum to ``c - 2 a |x|²``) and an MLP whose first layer adds those
    up, every hidden layer passes its 4 live units on (SiLU is ~identity at ``carry`` above zero) and the last one
    removes the carry: raw density ``c - 2 a |x|²`` (+4 at the centre, 0 on a sphere of radius ``ball``, ~-8 at the
    cube's corners: empty there), colour from constant channels 1-3. The ball looks the same whichever way the two
    codes order the planes' axes, so the two images can be compared. Weights are written into ``linears``
    (ours, then copied into theirs) -> planes [1, 3, C, res, res]."""
    a = 2.0 / ball ** 2
    c = 4.0
    lin = ((torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1) * radius  # texel centres, world units
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    planes = torch.zeros(1, 3, channels, res, res)
    planes[0, :, 0] = -a * (u ** 2 + v ** 2) + c / 3
    planes[0, 0, 1:4] = torch.tensor([0.8, -0.4, 1.2])[:, None, None]  # colour logits
    with torch.no_grad():
        for m in linears:
            m.weight.zero_()
            m.bias.zero_()
        first, last = linears[0], linears[-1]
        for p in range(3):
            first.weight[0, p * channels] = 1.0  # density: channel 0 of all three planes
        for k in range(1, 4):
            first.weight[k, k] = 1.0  # colour: channels 1-3 of plane 0
        first.bias[:4] = carry
        for m in linears[1:-1]:
            m.weight[:4, :4] = torch.eye(4)
        last.weight[:, :4] = torch.eye(4)
        last.bias[:] = -carry
    return planes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triposr", required=True, type=Path, help="a TripoSR checkout (source tree)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--scene", choices=["random", "ball"], default="random",
                    help="random planes (fog everywhere: nothing to skip) or a ball in empty space")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from lrm import cameras as C
    from lrm.config import load_config

    cfg = load_config("triposr")
    ch = int(cfg.model.upsampler.channels)
    if a.scene == "ball":
        def scene(ours_linears):
            return ball_scene(ours_linears, ch, 64, float(cfg.model.render.radius))
    else:
        def scene(ours_linears):
            return torch.randn(1, 3, ch, 64, 64, generator=torch.Generator().manual_seed(0))
    model, renderer, mlp, tri = ours_and_theirs(a.triposr, cfg, scene)
    c2w = C.orbit_camera(30.0, 20.0, cfg.camera.distance)
    intr = C.intrinsics_from_fov(cfg.camera.fov_deg)
    rays_o, rays_d = C.get_rays(c2w, intr, a.res, a.res)

    def theirs():
        with torch.no_grad():
            return renderer(mlp, tri[0], rays_o.view(a.res, a.res, 3), rays_d.view(a.res, a.res, 3))

    def ours():
        with torch.no_grad():
            return model.render(tri, c2w[None, None], intr[None, None], a.res)["rgb"]

    t0, o0 = theirs(), ours()  # warm-up
    if a.scene == "ball":  # symmetric scene: the images are comparable
        from lrm.image_metrics import psnr

        t_img, o_img = t0.reshape(1, a.res, a.res, 3), o0.reshape(1, a.res, a.res, 3)
        centre = [round(float(x), 3) for x in t_img[0, a.res // 2, a.res // 2]]
        print(f"ball scene: PSNR ours vs TripoSR's {psnr(t_img, o_img):.1f} dB; centre pixel {centre} (white = "
              f"empty); occupancy grid {model.occupancy_grid(tri).fraction():.3f} of cells")
    (_, *theirs_s), (_, *ours_s) = interleaved([theirs, ours], a.rounds)  # medians of (wall, CPU) seconds
    med = {"theirs": theirs_s, "ours": ours_s}
    print(f"torch {torch.__version__}, {a.threads} threads, {a.rounds} rounds, one {a.res}² view at TripoSR size "
          f"({cfg.model.render.n_samples} samples per ray), scene {a.scene}")
    print("| renderer | wall s (median) | CPU s (median) | ours / TripoSR (wall) | target |")
    print("|---|---|---|---|---|")
    print(f"| TripoSR's own (chunk 8,192) | {med['theirs'][0]:.2f} | {med['theirs'][1]:.2f} | 1 | |")
    print(f"| ours (`configs/triposr.yaml`) | {med['ours'][0]:.2f} | {med['ours'][1]:.2f} | "
          f"{med['ours'][0] / med['theirs'][0]:.2f}x | <= 0.3x |")


if __name__ == "__main__":
    main()
