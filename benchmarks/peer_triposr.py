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

``--stage triplane``: image (512²) -> triplane at TripoSR's size. TripoSR's own modules (its DINO ViT tokenizer on
transformers' ViTModel, `Triplane1DTokenizer`, `Transformer1D`, `TriplaneUpsampleNetwork`) are built from the full
config in shared/conformance/triposr/full_manifest.json and composed as `TSR.forward` composes them (its
`tsr.system` is not imported: it needs torchmcubes for meshes only); the ViT config its tokenizer downloads at
construction is written locally from the manifest. One random state dict (the manifest's keys and shapes) is loaded
into theirs and converted into ours with `lrm.convert.triposr`, so both compute the same function. Timed in turn
each round: theirs in fp32 (the reference: 18.0 s in shared/reference-figures.md; the target is ours <= 0.5x of it),
ours in fp32, ours with `precision=bf16` (autocast on encoder, transformer and upsampler, as `infer.py --precision
bf16`), and theirs under the same autocast for comparison. Accuracy: ours fp32 against theirs, ours bf16 against
theirs (relative L2 error of the triplane).

``--stage mesh``: our 256³ density grid at TripoSR's size (the ball scene, so there is a surface), dense against the
coarse-to-fine narrow band that mesh extraction uses, timed in turn; the target is the band <= 0.1x the dense grid.
TripoSR's own extraction (torchmcubes over a dense grid) is not run: it is not installable here.
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
    ap.add_argument("--stage", choices=["view", "triplane", "mesh"], default="view",
                    help="one rendered view (default), image -> triplane, or a 256³ mesh grid (ours: dense vs band)")
    ap.add_argument("--grid", type=int, default=256, help="--stage mesh: grid resolution")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/peer_triposr"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override our `configs/triposr.yaml` for the view (e.g. model.decoder.mlp_precision=bf16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.stage == "triplane":
        return bench_triplane(a)
    from lrm import cameras as C
    from lrm.config import load_config

    cfg = load_config("triposr", a.set)
    ch = int(cfg.model.upsampler.channels)
    if a.scene == "ball":
        def scene(ours_linears):
            return ball_scene(ours_linears, ch, 64, float(cfg.model.render.radius))
    else:
        def scene(ours_linears):
            return torch.randn(1, 3, ch, 64, 64, generator=torch.Generator().manual_seed(0))
    model, renderer, mlp, tri = ours_and_theirs(a.triposr, cfg, scene)
    if a.stage == "mesh":
        return bench_mesh(a, model, tri, float(cfg.model.render.radius))
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


def bench_mesh(a, model, tri, radius: float, threshold: float = 1.0):
    """Our density grid (dense, then the narrow band) at TripoSR's size on ``tri``; the two meshes compared."""
    import numpy as np

    from lrm.mesh import density_grid, marching_cubes
    from lrm.stages import density_fn

    def grid(factor):
        def go():
            with torch.no_grad():
                g, stats = density_grid(density_fn(model, tri), a.grid, radius, threshold, factor)
            v, f = marching_cubes(g, threshold, radius)
            return v, f, stats
        return go

    (dense, dw, dc), (band, bw, bc) = interleaved([grid(1), grid(4)], a.rounds)
    same = len(dense[1]) == len(band[1]) and np.allclose(dense[0], band[0], atol=1e-5)
    q = band[2]["queries"] / dense[2]["queries"]
    print(f"torch {torch.__version__}, {a.threads} threads, {a.rounds} rounds, {a.grid}³ density grid at TripoSR size "
          f"(ball scene, level {threshold})")
    print("| density grid | wall s (median) | CPU s (median) | queries (M) | / dense (wall) | / dense (CPU) | target |")
    print("|---|---|---|---|---|---|---|")
    print(f"| dense | {dw:.2f} | {dc:.2f} | {dense[2]['queries'] / 1e6:.2f} | 1 | 1 | |")
    print(f"| narrow band (coarse factor 4) | {bw:.2f} | {bc:.2f} | {band[2]['queries'] / 1e6:.2f} | {bw / dw:.3f}x | "
          f"{bc / dc:.3f}x | <= 0.1x |")
    print(f"queries {q:.3f}x of dense; same mesh: {same} ({len(band[1])} faces)")


def their_image_to_triplane(src: Path, manifest: dict, workdir: Path):
    """TripoSR's own image -> scene-code modules at the manifest's config, composed as `TSR.forward` composes them
    -> (container module holding them, fn(images [B, 3, H, W] in [0, 1]) -> scene codes [B, 3, C, R, R])."""
    import json

    import_triposr(src)  # puts the checkout on sys.path (and stubs rembg)
    import tsr.models.tokenizers.image as timg
    from tsr.utils import find_class

    cfg = manifest["tsr_config"]
    vit_json = workdir / "dino_vitb16_config.json"
    vit_json.write_text(json.dumps(manifest["vit_config"]))
    timg.hf_hub_download = lambda repo_id, filename, **kw: str(vit_json)  # no hub here: its config, written locally
    net = torch.nn.Module()
    for name in ("image_tokenizer", "tokenizer", "backbone", "post_processor"):
        setattr(net, name, find_class(cfg[name + "_cls"])(cfg[name]))

    def forward(images):
        b = images.shape[0]
        tokens_in = net.image_tokenizer(images[:, None])  # [B, 1, C, Nt]
        tokens_in = tokens_in.permute(0, 1, 3, 2).reshape(b, -1, tokens_in.shape[2])  # [B, Nt, C]
        x = net.backbone(net.tokenizer(b), encoder_hidden_states=tokens_in)
        return net.post_processor(net.tokenizer.detokenize(x))

    return net.eval(), forward


_VIT_V5_NAMES = [  # transformers >= 5 renamed ViTModel's submodules; TripoSR pins 4.35 (the manifest's names)
    (".encoder.layer.", ".layers."), (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."), (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."), (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2.")]


def for_installed_vit(sd: dict, net: torch.nn.Module) -> dict:
    """The manifest's (transformers 4.x) ViT key names, renamed if the installed ViTModel uses the 5.x ones."""
    if not any(".layers." in k for k in net.state_dict() if k.startswith("image_tokenizer.")):
        return sd
    out = {}
    for k, v in sd.items():
        if k.startswith("image_tokenizer."):
            for old, new in _VIT_V5_NAMES:
                k = k.replace(old, new)
        out[k] = v
    return out


def bench_triplane(a):
    import json

    from bench_triposr import MANIFEST, random_triposr_state_dict, write_triposr_files
    from lrm.checkpoint import load_checkpoint
    from lrm.convert import triposr as tsr_convert
    from lrm.precision import autocast_for, cpu_native_bf16

    a.workdir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(MANIFEST.read_text())
    sd = random_triposr_state_dict(manifest)
    net, theirs_fwd = their_image_to_triplane(a.triposr, manifest, a.workdir)
    missing, unexpected = net.load_state_dict(for_installed_vit(sd, net), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("decoder.")]
    if missing or unexpected:
        raise SystemExit(f"TripoSR's modules do not take the manifest's keys: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    folder = a.workdir / "ours"
    src, cfg_json = write_triposr_files(sd, manifest, a.workdir)
    tsr_convert.convert(src, cfg_json, folder)
    del sd
    src.unlink()
    model, cfg = load_checkpoint(folder)
    model.eval()
    s = int(cfg.model.encoder.image_size)
    img = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    dev = torch.device("cpu")

    def run(fn, precision):
        def go():
            with torch.no_grad(), autocast_for(precision, dev):
                return fn(img).float()
        return go

    fns = {"theirs fp32": run(theirs_fwd, "fp32"), "ours fp32": run(model, "fp32"),
           "ours bf16": run(model, "bf16"), "theirs bf16 (autocast)": run(theirs_fwd, "bf16")}
    for fn in fns.values():  # warm-up (first-call allocations, oneDNN kernel selection), untimed
        fn()
    results = interleaved(list(fns.values()), a.rounds)
    out = dict(zip(fns, results))
    ref = out["theirs fp32"][0]

    def rel(x):
        return float((x - ref).norm() / ref.norm())

    print(f"torch {torch.__version__}, {a.threads} threads, {a.rounds} rounds, image {s}² -> triplane "
          f"{tuple(ref.shape[1:])} at TripoSR size; native bf16: {cpu_native_bf16()}")
    print("| image -> triplane | wall s (median) | CPU s (median) | / TripoSR fp32 (wall) | rel. L2 error vs "
          "TripoSR fp32 | target |")
    print("|---|---|---|---|---|---|")
    base = out["theirs fp32"][1]
    for name, (res, wall, cpu) in out.items():
        target = "<= 0.5x" if name == "ours bf16" else ""
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / base:.2f}x | {rel(res):.2e} | {target} |")
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
