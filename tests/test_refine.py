"""Refinement (lrm/refine/): the reference-view loss goes down on the shipped model, SDS mode uses the prior and
never changes the caller's model, scratch starts from noise, the CLI writes a new folder, bad inputs fail clearly."""
import json

import numpy as np
import pytest
import torch

from _duck import duck_triplane
from _toy_priors import NaNPrior, ToyPrior
from lrm.refine import (RefineConfig, RefineError, evaluate_reference, expected_triplane_shape, read_output_dir,
                        refine)

FAST = dict(resolutions=(16,), resolution_milestones=(), save_every=0, n_samples=16, n_importance=8)


@pytest.fixture(scope="module")
def duck():
    from lrm.preprocess import preprocess

    pipe, image, tri = duck_triplane()
    o = pipe.opts
    mask = preprocess(str(__import__("_duck").ROOT / "examples" / "duck.png"), o["input_size"], None,
                      o["foreground_ratio"], tuple(o["input_background"])).rgba[..., 3]
    return pipe, image, mask, tri


def test_ref_mode_lowers_the_reference_view_loss(duck):
    pipe, image, mask, tri = duck
    cfg = RefineConfig(mode="ref", steps=8, lr=0.05, level="silhouette", **FAST)
    before = evaluate_reference(pipe, tri, image, mask, cfg)
    res = refine(tri, pipe, image, None, cfg, mask=mask, progress=False)
    after = evaluate_reference(pipe, res.triplane, image, mask, cfg)
    assert after["rgb"] + after["mask"] < 0.9 * (before["rgb"] + before["mask"]), (before, after)
    assert res.stats["renders"] == 8 and res.stats["prior_calls"] == 0 and res.decoder is None
    # the mesh level is matched to the input mask: the chosen level's silhouette is the closest of the candidates
    from lrm import cameras as C
    from lrm.stages import ray_max_density, silhouette_level

    assert res.level in cfg.levels and res.stats["level"] == res.level
    cam = pipe.cfg.camera
    md = ray_max_density(pipe.model, res.triplane, C.orbit_camera(0.0, 0.0, cam.distance),
                         C.intrinsics_from_fov(cam.fov_deg), cfg.level_resolution, pipe.cfg.model.render.radius)
    _, ious = silhouette_level(md, mask, cfg.levels)
    assert res.stats["level_iou"] == pytest.approx(max(ious.values())) and res.stats["level_iou"] > 0.8
    fixed = refine(tri, pipe, image, None, RefineConfig(mode="ref", steps=0, level="checkpoint", **FAST), mask=mask,
                   progress=False)
    assert fixed.level == pipe.opts["refined_mc_threshold"]  # the checkpoint's level for refined scenes (None: none)
    assert fixed.stats.get("level") == fixed.level


def test_sds_mode_calls_the_prior_and_leaves_the_callers_model_alone(duck):
    pipe, image, mask, tri = duck
    decoder_before = {k: v.clone() for k, v in pipe.model.decoder.state_dict().items()}
    tri_before = tri.clone()
    prior = ToyPrior(resolution=16, T=1000, dtype=torch.float32)
    cfg = RefineConfig(mode="sds", steps=3, decoder_lr=1e-3, n_views=2, **FAST)
    res = refine(tri, pipe, image, prior, cfg, mask=mask, progress=False)
    assert res.stats["prior_calls"] == 3 * 2  # CFG scale 3: one unconditional + one conditional call per step
    assert sum(prior.calls) == 3  # ... half of them conditional
    assert res.stats["renders"] == 3 * (1 + 2)
    assert {"rgb", "mask", "sds", "entropy", "total"} <= set(res.history[-1])
    assert not torch.equal(res.triplane, tri) and torch.equal(tri, tri_before)
    changed = [k for k, v in res.decoder.state_dict().items() if not torch.equal(v, decoder_before[k])]
    assert changed  # the decoder copy was optimised ...
    assert all(torch.equal(v, decoder_before[k]) for k, v in pipe.model.decoder.state_dict().items())  # ... not ours


def test_scratch_starts_from_small_noise_of_the_models_shape(duck):
    pipe, image, mask, _ = duck
    cfg = RefineConfig(mode="scratch", steps=0, **FAST)
    res = refine(None, pipe, image, ToyPrior(resolution=16, dtype=torch.float32), cfg, mask=mask, progress=False)
    assert tuple(res.triplane.shape) == expected_triplane_shape(pipe.model)
    assert abs(float(res.triplane.std()) - cfg.scratch_std) < 0.01 and abs(float(res.triplane.mean())) < 0.01


def test_bad_inputs_give_one_clear_error(duck, tmp_path):
    pipe, image, mask, tri = duck
    with pytest.raises(RefineError, match="triplane.safetensors not found"):
        read_output_dir(tmp_path)
    with pytest.raises(RefineError, match=r"shape \(1, 3, 8, 16, 16\) but this checkpoint's decoder needs"):
        refine(torch.zeros(1, 3, 8, 16, 16), pipe, image, None, RefineConfig(mode="ref", **FAST), progress=False)
    with pytest.raises(RefineError, match="needs a diffusion prior"):
        refine(tri, pipe, image, None, RefineConfig(mode="sds", **FAST), progress=False)
    with pytest.raises(RefineError, match="mode must be one of"):
        RefineConfig(mode="dreamfusion")
    with pytest.raises(RefineError, match="level must be checkpoint, silhouette or a number"):
        RefineConfig(level="auto")
    assert RefineConfig(level="6").level == 6.0
    # a non-finite loss: steps are skipped (the triplane is not touched), then the run stops with one error
    bad = mask.copy()
    bad[0, 0] = np.nan
    with pytest.raises(RefineError, match="3 steps in a row had a non-finite loss"):
        refine(tri, pipe, image, None, RefineConfig(mode="ref", steps=5, max_skips=3, **FAST), mask=bad,
               progress=False)
    res = refine(tri, pipe, image, None, RefineConfig(mode="ref", steps=2, max_skips=3, **FAST), mask=bad,
                 progress=False)
    assert res.stats["skipped"] == 2 and torch.equal(res.triplane, tri)
    # a prior gone bad: the SDS term is skipped and counted, the reference terms still train
    res = refine(tri, pipe, image, NaNPrior(resolution=16, T=1000, dtype=torch.float32),
                 RefineConfig(mode="sds", steps=2, **FAST), mask=mask, progress=False)
    assert res.stats["sds_skipped"] == 2 and res.stats["skipped"] == 0 and not torch.equal(res.triplane, tri)


@pytest.mark.slow  # three checkpoint loads and two mesh extractions: ~20 s under load
def test_cli_refines_an_infer_folder_into_a_new_folder(duck, tmp_path, capsys):
    from lrm.outputs import write_result
    from lrm.pipeline import Result
    from lrm.refine.__main__ import main

    pipe, image, mask, tri = duck
    src = tmp_path / "duck"
    write_result(Result(mesh=__import__("trimesh").creation.box(), triplane=tri, input_image=image, input_mask=mask),
                 src)
    assert read_output_dir(src)["mask"].shape == mask.shape
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    args = [str(src), "--mode", "ref", "--steps", "2", "--mc-resolution", "33", "--save-every", "1"]
    assert main(args) == 0, capsys.readouterr().err
    out = tmp_path / "duck-refined-ref"
    names = {p.name for p in out.iterdir()}
    assert {"mesh.glb", "triplane.safetensors", "input.png", "refine.json", "history.json", "progress_0000.png",
            "progress_0001.png", ".lrm-output.json"} <= names
    info = json.loads((out / "refine.json").read_text())
    assert info["mode"] == "ref" and info["stats"]["steps"] == 2 and info["faces"] > 0
    o = pipe.opts
    assert info["mc_threshold"] == (o["mc_threshold"] if o["refined_mc_threshold"] is None else o["refined_mc_threshold"])
    assert main(args + ["--level", "silhouette", "--out", str(tmp_path / "sil")]) == 0
    info = json.loads((tmp_path / "sil" / "refine.json").read_text())
    assert info["mc_threshold"] == info["stats"]["level"]  # the mesh is cut at the silhouette-matched level
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the source folder is untouched
    assert main(args) == 0  # our own folder may be replaced
    (out / "notes.txt").write_text("mine")  # ... but not once the user put something in it
    assert main(args) == 2 and "not replacing it" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    # missing folder / no prior available: one error line, exit 2, nothing written
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert main([str(src), "--mode", "sds", "--prior", str(tmp_path / "no-prior"), "--out", str(tmp_path / "x")]) == 2
    assert "prior" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_anchor_term_is_the_step_opacity_difference():
    from lrm.refine.loop import anchor_loss, step_opacity

    d = torch.tensor([0.0, 10.0, 14.0, 1e4])
    # analytic: 1 - exp(-density * step); negative densities count as empty
    assert torch.allclose(step_opacity(d, 0.05), 1 - torch.exp(-d * 0.05))
    assert float(step_opacity(torch.tensor([-3.0]), 0.05)) == 0.0
    assert float(anchor_loss(d, d.clone(), 0.05)) == 0.0
    # one point moved from empty to opaque out of four: (1 - 0)^2 / 4
    assert float(anchor_loss(torch.tensor([1e4, 0, 0, 0.0]), torch.zeros(4), 0.05)) == pytest.approx(0.25)


def test_anchor_keeps_the_refined_field_near_the_lrms(duck):
    """Reference losses alone move the field; with a strong anchor the field's opacity stays closer to where it
    started (measured at points the anchor never drew), and the anchor term is logged."""
    from lrm.refine.loop import step_opacity

    pipe, image, mask, tri = duck
    pts = (torch.rand(1, 8192, 3, generator=torch.Generator().manual_seed(7)) * 2 - 1) * pipe.model.decoder.radius

    def drift(t):
        with torch.no_grad():
            a = step_opacity(pipe.model.decoder(t, pts)["density"], 0.05)
            b = step_opacity(pipe.model.decoder(tri, pts)["density"], 0.05)
        return float((a - b).square().mean())

    base = dict(mode="ref", steps=8, lr=0.05, level="checkpoint", **FAST)
    free = refine(tri, pipe, image, None, RefineConfig(w_anchor=0.0, **base), mask=mask, progress=False)
    held = refine(tri, pipe, image, None, RefineConfig(w_anchor=50.0, **base), mask=mask, progress=False)
    assert "anchor" in held.history[-1] and "anchor" not in free.history[-1]
    assert held.history[0]["anchor"] < 1e-9  # the field starts where the anchor holds it (folded planes: ~1e-15)
    assert drift(held.triplane) < 0.5 * drift(free.triplane), (drift(held.triplane), drift(free.triplane))
    with pytest.raises(RefineError, match="w_anchor"):
        RefineConfig(w_anchor=-1.0)
