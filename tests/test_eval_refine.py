"""The refinement evaluation methods (lrm+ref, lrm+sds, sds): they run the refinement loop on the eval object's
input view and are scored like lrm. Checked against the feed-forward lrm on the same object: the reference-view
render moves towards the input image, and the methods record the refinement's cost."""
import numpy as np
import pytest
import torch

from _toy_priors import ToyPrior

PROTO = {"n_views": 4, "resolution": 48, "input_resolution": 48, "elevations_deg": [0.0], "azimuth_step_deg": 90.0,
         "distance": 2.0, "fov_deg": 40.0, "background": [1.0, 1.0, 1.0], "n_surface_samples": 2000,
         "fscore_taus": [0.02, 0.05, 0.1], "iou_resolution": 24, "radius": 0.87, "sample_seed": 0,
         "shading_ambient": 0.5}
SMALL = {"mc_resolution": 24, "render_resolution": 24}


@pytest.fixture(scope="module")
def evalset(tmp_path_factory):
    import trimesh

    from lrm.evaluate.evalset import build_eval_set

    box = trimesh.creation.box((0.7, 0.4, 0.5))
    box.visual.vertex_colors = np.tile([200, 50, 40, 255], (len(box.vertices), 1))
    return build_eval_set(tmp_path_factory.mktemp("evalset"), {"box": box}, seed=0, protocol=PROTO)


def _input_error(pred, obj):
    """Mean |render − input| at the input camera (on white), at the render's size."""
    from lrm.evaluate.methods import _input_rgb_on_white

    rgba = pred.render(obj.input_c2w[None], obj.input_intrinsics[None], 24)[0]
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    ref = torch.nn.functional.interpolate(torch.from_numpy(_input_rgb_on_white(obj)).permute(2, 0, 1)[None],
                                          size=(24, 24), mode="area")[0].permute(1, 2, 0).numpy()
    return float(np.abs(rgb - ref).mean())


def test_lrm_ref_moves_the_input_view_towards_the_image(evalset):
    from lrm.evaluate.methods import RunContext, make_method

    obj, ctx = evalset.load("box"), RunContext(protocol=evalset.protocol)
    base = make_method("lrm", **SMALL)
    base.setup(ctx)
    ref = make_method("lrm+ref", steps=12, lr=0.05, **SMALL)
    ref.setup(ctx)
    p0, p1 = base.predict(obj, ctx), ref.predict(obj, ctx)
    assert p1.info["refine_steps"] == 12 and p1.info["t_refine"] > 0 and p1.info["mode"] == "ref"
    e0, e1 = _input_error(p0, obj), _input_error(p1, obj)
    print("input-view error", e0, e1)
    assert e1 < 0.8 * e0, (e0, e1)
    from lrm.refine.loop import RefineConfig

    matched = make_method("lrm+ref", steps=2, level="silhouette", **SMALL)
    matched.setup(ctx)
    assert matched.predict(obj, ctx).info["mc_level"] in RefineConfig().levels  # cut at the silhouette-matched level
    fixed = make_method("lrm+ref", steps=0, threshold=7.5, **SMALL)  # an explicit threshold is the refined level
    assert fixed.refine_config().level == 7.5


def test_lrm_can_match_its_level_to_the_input_silhouette(evalset):
    from lrm.evaluate.methods import MethodError, RunContext, make_method

    obj, ctx = evalset.load("box"), RunContext(protocol=evalset.protocol)
    m = make_method("lrm", config="tiny", level="silhouette", **SMALL)
    m.setup(ctx)
    pred = m.predict(obj, ctx)
    assert pred.info["mc_level"] in (2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 14.0, 20.0, 28.0, 40.0)
    assert 0.0 <= pred.info["level_iou"] <= 1.0
    with pytest.raises(MethodError, match="level must be checkpoint or silhouette"):
        make_method("lrm", config="tiny", level="auto", **SMALL).setup(ctx)


def test_sds_methods_load_the_prior_and_call_it(evalset, monkeypatch):
    import lrm.refine.io as rio
    from lrm.evaluate.methods import MethodError, RunContext, make_method

    prior = ToyPrior(resolution=16, dtype=torch.float32)
    monkeypatch.setattr(rio, "load_prior", lambda path=None, device="cpu": prior)
    obj, ctx = evalset.load("box"), RunContext(protocol=evalset.protocol)
    for name, mode in (("lrm+sds", "sds"), ("sds", "scratch")):
        prior.calls.clear()
        m = make_method(name, steps=3, guidance=2.0, **SMALL)
        m.setup(ctx)
        p = m.predict(obj, ctx)
        assert p.info["mode"] == mode and p.info["refine_prior_calls"] == 6  # CFG: 2 calls per step
        assert prior.calls.count(True) == 3 and prior.calls.count(False) == 3

    def missing(path=None, device="cpu"):
        raise FileNotFoundError("diffusion prior not found: nowhere")

    monkeypatch.setattr(rio, "load_prior", missing)
    with pytest.raises(MethodError, match="lrm\\+sds: diffusion prior not found"):
        make_method("lrm+sds").setup(ctx)
    with pytest.raises(MethodError, match="preprocess must be none"):
        make_method("lrm+ref", preprocess="pipeline").setup(ctx)
