"""The project's own view-conditioned diffusion prior (lrm/diffusion/): model, prior interface, sampling, task, CLI."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from lrm.cameras import orbit_camera  # noqa: E402
from lrm.checkpoint import CheckpointError  # noqa: E402
from lrm.diffusion.model import ViewConditionedUNet, ViewUNetConfig  # noqa: E402
from lrm.diffusion.pixel_prior import PixelPrior, load_prior  # noqa: E402
from lrm.diffusion.prior import Condition, ViewPrior, cfg_combine, relative_camera  # noqa: E402
from lrm.diffusion.prior import guided_noise  # noqa: E402
from lrm.diffusion.sample import sample_views  # noqa: E402

TINY = dict(resolution=16, block_out_channels=[16, 32], attention=[False, True], layers_per_block=1,
            attention_head_dim=8, norm_num_groups=8, encoder_channels=[16, 32], image_embed_dim=16)


def tiny_model(seed=0, randomise_condition=True, **kw) -> ViewConditionedUNet:
    """A 16² model; the zero-initialised condition layers get random values so conditional != unconditional."""
    torch.manual_seed(seed)
    m = ViewConditionedUNet(ViewUNetConfig(**{**TINY, **kw})).eval()
    if randomise_condition:
        with torch.no_grad():
            m.cond_mlp[-1].weight.normal_(0, 0.5)
            m.null_condition.normal_(0, 1.0)
    return m


def task_cfg(tmp_path=None, **over):
    from lrm.diffusion.task import load_task_config

    o = ["data.source=synthetic", "data.image_size=16", "train.batch_size=2", "train.val_batch_size=2",
         "train.val_timesteps=[100,900]", "train.sample_steps=2"]
    o += [f"model.{k}={v}".replace("'", "").replace("False", "false").replace("True", "true")
          for k, v in TINY.items()]
    o += [f"{k}={v}" for k, v in over.items()]
    return load_task_config("zero123-tiny", o)


# ------------------------------------------------------------------------------------------------ cameras
def test_relative_camera_analytic():
    same = orbit_camera(30.0, 20.0, 2.0)
    assert torch.allclose(relative_camera(same, same), torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-6)
    step = relative_camera(orbit_camera(0.0, 0.0, 2.0), orbit_camera(90.0, 0.0, 2.0))
    assert torch.allclose(step, torch.tensor([0.0, 1.0, 0.0, 0.0]), atol=1e-6)
    up = relative_camera(orbit_camera(10.0, 5.0, 2.0), orbit_camera(10.0, 35.0, 2.5))  # elevation + distance
    assert torch.allclose(up, torch.tensor([math.radians(30.0), 0.0, 1.0, 0.5]), atol=1e-5)


def test_view_pairs_from_a_training_batch():
    """The pair batch of a hand-made training batch: images in [-1, 1], the 90° step gives [0, 1, 0, 0]."""
    from lrm.cameras import camera_vector, intrinsics_from_fov
    from lrm.diffusion.task import view_pairs

    c2w = orbit_camera(torch.tensor([0.0, 90.0]), torch.zeros(2), torch.full((2,), 2.0))
    K = intrinsics_from_fov(40.0).expand(2, 4)
    inp = torch.ones(1, 1, 3, 8, 8)
    tgt = torch.zeros(1, 1, 8, 8, 3)
    batch = {"input_images": inp, "input_cameras": camera_vector(c2w[:1], K[:1])[None], "target_rgb": tgt,
             "target_c2w": c2w[1:][None], "uid": ["a"]}
    p = view_pairs(batch, 8)
    assert torch.allclose(p["cond_image"], torch.ones(1, 3, 8, 8)) and torch.allclose(p["target"], -torch.ones(1, 3, 8, 8))
    assert torch.allclose(p["rel_camera"], torch.tensor([[0.0, 1.0, 0.0, 0.0]]), atol=1e-6)


# ------------------------------------------------------------------------------------------------ model
def test_shapes_and_prior_protocol():
    m = tiny_model()
    x = torch.randn(3, 3, 16, 16)
    eps = m(x, torch.tensor([0, 500, 999]), torch.rand(3, 3, 16, 16) * 2 - 1, torch.randn(3, 4))
    assert eps.shape == (3, 3, 16, 16) and torch.isfinite(eps).all()
    prior = PixelPrior(m)
    assert isinstance(prior, ViewPrior)
    assert prior.alphas_cumprod.shape == (1000,) and prior.alphas_cumprod.dtype == torch.float32
    assert torch.all(prior.alphas_cumprod[1:] < prior.alphas_cumprod[:-1])  # ᾱ decreasing
    img = torch.rand(1, 3, 40, 40)
    x0 = prior.encode(img)
    assert x0.shape == (1, 3, 16, 16) and x0.min() >= -1 and x0.max() <= 1
    same = torch.rand(2, 3, 16, 16)
    assert torch.allclose(prior.decode(prior.encode(same)), same, atol=1e-6)  # inverse at the model's size
    cond = prior.condition(img)
    assert isinstance(cond, Condition)
    out = prior.predict_noise(torch.randn(4, 3, 16, 16), torch.tensor(10), cond, torch.randn(4, 4))
    assert out.shape == (4, 3, 16, 16)


def test_condition_dropout_uses_the_null_condition():
    m = tiny_model()
    emb, cam = torch.randn(4, 16), torch.randn(4, 4)
    drop = torch.tensor([True, False, True, False])
    c = m.condition_vector(emb, cam, drop)
    assert torch.equal(c[0], m.null_condition.detach()) and torch.equal(c[2], m.null_condition.detach())
    assert not torch.allclose(c[1], m.null_condition) and torch.allclose(c[1], m.condition_vector(emb, cam)[1])
    # a dropped condition ignores the input view and the camera entirely (image concat, embedding, camera)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([300, 300])
    all_drop = torch.ones(2, dtype=torch.bool)
    a = m(x, t, torch.rand(2, 3, 16, 16), torch.randn(2, 4), drop=all_drop)
    b = m(x, t, torch.rand(2, 3, 16, 16), torch.randn(2, 4), drop=all_drop)
    assert torch.allclose(a, b, atol=1e-6)
    kept = m(x, t, torch.rand(2, 3, 16, 16), torch.randn(2, 4))
    assert not torch.allclose(a, kept, atol=1e-4)
    # PixelPrior's unconditional branch is the dropped condition
    prior = PixelPrior(m)
    assert torch.allclose(prior.predict_noise(x, t, None, torch.randn(2, 4)), a, atol=1e-6)


def test_cfg_scale_one_is_the_conditional_prediction():
    prior = PixelPrior(tiny_model())
    cond = prior.condition(torch.rand(1, 3, 16, 16))
    x, t, cam = torch.randn(2, 3, 16, 16), torch.tensor([200, 700]), torch.randn(2, 4)
    with torch.no_grad():
        e_c = prior.predict_noise(x, t, cond, cam)
        e_u = prior.predict_noise(x, t, None, cam)
        assert not torch.allclose(e_c, e_u, atol=1e-4)
        assert torch.equal(guided_noise(prior, x, t, cond, cam, 1.0)[0], e_c)
        g3, calls = guided_noise(prior, x, t, cond, cam, 3.0)  # both branches in one batched pass
    assert calls == 1
    assert torch.allclose(g3, e_u + 3.0 * (e_c - e_u), atol=1e-5)
    assert torch.allclose(cfg_combine(e_u, e_c, 0.0), e_u)


class OraclePrior:
    """A ViewPrior that knows the clean sample: ε̂ = (x_t − sqrt(ᾱ_t) x0) / sqrt(1 − ᾱ_t), exact for any t."""

    def __init__(self, x0, alphas_cumprod):
        self.x0, self.alphas_cumprod = x0, alphas_cumprod
        self.resolution, self.num_train_timesteps = x0.shape[-1], len(alphas_cumprod)

    def condition(self, image):
        return Condition(image=image, extras={})

    def encode(self, rgb):
        return rgb * 2 - 1

    def decode(self, x0):
        return (x0 + 1) / 2

    def predict_noise(self, x_t, t, cond, rel_camera):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).double()
        return ((x_t.double() - a.sqrt() * self.x0) / (1 - a).sqrt()).float()


@pytest.mark.parametrize("steps", [1, 5, 50])
def test_ddim_recovers_the_clean_sample_with_an_exact_noise_prediction(steps):
    """DDIM (deterministic) on the prior's own schedule lands on x0 when ε̂ is exact: the scheduler built from
    ``alphas_cumprod`` alone matches the forward process the prior was trained with."""
    from lrm.diffusion.model import train_scheduler

    ac = train_scheduler(ViewUNetConfig()).alphas_cumprod.float()
    x0 = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    out = sample_views(OraclePrior(x0, ac), torch.rand(1, 3, 8, 8), torch.randn(2, 4), steps=steps, guidance=2.0,
                       generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, (x0 + 1) / 2, atol=2e-3)


def test_seeded_sampling_is_deterministic():
    prior = PixelPrior(tiny_model())
    img, cam = torch.rand(1, 3, 16, 16), torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.2, 0.0, -1.0, 0.0]])
    a = sample_views(prior, img, cam, steps=3, guidance=3.0, generator=torch.Generator().manual_seed(7))
    b = sample_views(prior, img, cam, steps=3, guidance=3.0, generator=torch.Generator().manual_seed(7))
    c = sample_views(prior, img, cam, steps=3, guidance=3.0, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)


# ------------------------------------------------------------------------------------------------ export / load
def test_export_load_prior_round_trip(tmp_path):
    from lrm.diffusion.task import DiffusionTask
    from lrm.outdir import OWNER_MARKER

    task = DiffusionTask(task_cfg())
    m = tiny_model(prediction_type=task.model_cfg.prediction_type)  # the exported config's objective
    task.export(m.state_dict(), tmp_path / "prior")
    assert (tmp_path / "prior" / OWNER_MARKER).is_file()
    loaded = load_prior(tmp_path / "prior")
    assert isinstance(loaded, PixelPrior) and loaded.resolution == 16
    assert loaded.foreground_ratio == pytest.approx(0.7)  # the config's infer section travels with the model
    ref = PixelPrior(m)
    img, x, t, cam = torch.rand(1, 3, 16, 16), torch.randn(3, 3, 16, 16), torch.tensor([1, 400, 999]), torch.randn(3, 4)
    with torch.no_grad():
        for cond_r, cond_l in ((ref.condition(img), loaded.condition(img)), (None, None)):
            assert torch.equal(ref.predict_noise(x, t, cond_r, cam), loaded.predict_noise(x, t, cond_l, cam))
    task.export(m.state_dict(), tmp_path / "prior")  # its own folder may be replaced


def test_load_prior_refuses_bad_folders(tmp_path):
    from lrm.diffusion.task import DiffusionTask

    with pytest.raises(CheckpointError, match="not found"):
        load_prior(tmp_path / "nope")
    task = DiffusionTask(task_cfg())
    task.export(tiny_model().state_dict(), tmp_path / "p")
    (tmp_path / "p" / "config.yaml").write_text((tmp_path / "p" / "config.yaml").read_text()
                                                .replace("task: zero123", "task: lrm"))
    with pytest.raises(CheckpointError, match="not a zero123 prior"):
        load_prior(tmp_path / "p")
    task.export(tiny_model(block_out_channels=[8, 16], norm_num_groups=8).state_dict(), tmp_path / "q")
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_prior(tmp_path / "q")
    task.export(tiny_model().state_dict(), tmp_path / "r")
    w = tmp_path / "r" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="damaged|not a valid"):
        load_prior(tmp_path / "r")


def test_load_prior_and_the_sampler_take_a_zero123_diffusers_folder(tmp_path, capsys):
    """A diffusers folder (model_index.json) goes to lrm.diffusion.zero123; the sampling CLI runs on it through the
    ViewPrior interface alone; a broken one is refused with one CheckpointError."""
    import shutil

    from _zero123_tiny import write_tiny_zero123
    from lrm.diffusion import load_prior as package_load_prior
    from lrm.diffusion.zero123 import Zero123Prior

    folder = write_tiny_zero123(tmp_path / "z123")
    assert isinstance(package_load_prior(folder, "cpu"), Zero123Prior)
    rc, cap = _cli([_png(tmp_path / "obj.png"), "--azimuth", "30", "--checkpoint", folder, "--steps", "2",
                    "--out", tmp_path / "views"], capsys)
    assert rc == 0, cap.err
    assert (tmp_path / "views" / "view_az+30_el+0.png").is_file()
    shutil.rmtree(folder / "unet")
    with pytest.raises(CheckpointError, match="unet"):
        load_prior(folder)


# ------------------------------------------------------------------------------------------------ task
def test_task_steps_on_synthetic_pairs():
    from lrm.diffusion.task import DiffusionTask

    task = DiffusionTask(task_cfg())
    model = task.build_model()
    src = task.build_source("train", 0, 1)
    batch = src.get(0)
    assert task.check_batch(batch) is None
    assert batch["cond_image"].shape == (2, 3, 16, 16) and batch["rel_camera"].shape == (2, 4)
    assert torch.equal(src.get(0)["target"], batch["target"])  # deterministic in the position (exact resume)
    # white background: the image border is white (1 in [-1, 1]) in both views
    assert torch.allclose(batch["cond_image"][..., 0, :], torch.ones(2, 3, 16)) and \
        torch.allclose(batch["target"][..., 0, :], torch.ones(2, 3, 16))
    # |sin|² + |cos|² = 1: a proper relative rotation
    assert torch.allclose(batch["rel_camera"][:, 1] ** 2 + batch["rel_camera"][:, 2] ** 2, torch.ones(2), atol=1e-5)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = task.step_losses(model, batch, torch.Generator().manual_seed(0))
    assert set(losses) >= {"total", "mse"} and torch.isfinite(losses["total"])
    losses["total"].backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    vb = task.validation_batch(torch.device("cpu"))
    metrics = task.validate(model, vb)
    assert {"mse", "mse_uncond", "cond_gain", "mse_t100", "mse_t900"} <= set(metrics)
    assert metrics["cond_gain"] == pytest.approx(metrics["mse_uncond"] - metrics["mse"])
    img = task.validation_image(model, vb)
    assert img.shape == (3, 2 * 16, 3 * 16) and model.training  # training mode restored


def test_task_config_rejects_bad_values():
    from lrm.config import ConfigError

    with pytest.raises(ConfigError):
        task_cfg(**{"model.attention": "[true]"})  # one flag per level
    with pytest.raises(ConfigError):
        task_cfg(**{"train.sample_stepz": 3})
    with pytest.raises(ConfigError):
        task_cfg(**{"model.cond_dropout": 1.5})


def test_tiny_overfit_one_pair():
    """The model learns one fixed (input, camera, target) pair: the denoising loss at fixed timesteps and noise
    falls well below its start within 100 fast steps at 16² (measured with ε-prediction: 1.23 -> 0.09, ~3.5 s CPU)."""
    from lrm.diffusion.task import DiffusionTask

    torch.manual_seed(0)
    task = DiffusionTask(task_cfg(**{"model.cond_dropout": 0.0}))
    model = task.build_model().train()
    pair = task.build_source("train", 0, 1, batch_size=1).get(0)
    batch = {k: pair[k].expand(4, *pair[k].shape[1:]) for k in ("cond_image", "target", "rel_camera")}
    g = torch.Generator().manual_seed(1)
    t_eval = torch.tensor([100, 300, 500, 700])
    noise = torch.randn(4, 3, 16, 16, generator=g)

    from lrm.diffusion.model import noise_from_output

    def fixed_loss():  # ε error, whatever the network outputs (the config's prediction_type)
        with torch.no_grad():
            x0 = batch["target"][:4]
            x_t = task.noisy(x0, noise, t_eval)
            out = model(x_t, t_eval, batch["cond_image"][:4], batch["rel_camera"][:4])
            eps = noise_from_output(out, x_t, task.scheduler.alphas_cumprod[t_eval], task.model_cfg.prediction_type)
            return float((eps - noise).pow(2).mean())

    start = fixed_loss()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(100):
        loss = task.step_losses(model, batch, g)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = fixed_loss()
    assert end < 0.25 * start, (start, end)


# ------------------------------------------------------------------------------------------------ CLI
def _png(path, size=48):
    from PIL import Image

    a = np.zeros((size, size, 4), np.uint8)
    a[12:36, 16:32] = (200, 60, 40, 255)
    Image.fromarray(a).save(path)
    return path


def _cli(args, capsys):
    from lrm.diffusion.sample import main

    rc = main([str(a) for a in args])
    return rc, capsys.readouterr()


def test_sample_cli_bad_inputs(tmp_path, capsys):
    img = _png(tmp_path / "obj.png")
    rc, cap = _cli([tmp_path / "missing.png", "--checkpoint", tmp_path, "--out", tmp_path / "o1"], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and cap.err.startswith("error: input image not found")
    rc, cap = _cli([img, "--checkpoint", tmp_path / "no-prior", "--out", tmp_path / "o2"], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "prior checkpoint not found" in cap.err
    rc, cap = _cli([img, "--azimuth", "90,abc", "--checkpoint", tmp_path, "--out", tmp_path / "o3"], capsys)
    assert rc == 2 and cap.err.startswith("error: --azimuth")
    rc, cap = _cli([img, "--azimuth", "90,180", "--elevation", "0,10,20", "--out", tmp_path / "o4"], capsys)
    assert rc == 2 and "--elevation needs one value or one per azimuth" in cap.err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_sample_cli_writes_views(tmp_path, capsys):
    from PIL import Image

    from lrm.diffusion.task import DiffusionTask

    DiffusionTask(task_cfg()).export(tiny_model().state_dict(), tmp_path / "prior")
    img = _png(tmp_path / "obj.png")
    out = tmp_path / "views"
    args = [img, "--azimuth", "90,-45", "--elevation", "10", "--checkpoint", tmp_path / "prior", "--steps", "2",
            "--out", out]
    rc, cap = _cli(args, capsys)
    assert rc == 0, cap.err
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["input.png", "view_az+90_el+10.png", "view_az-45_el+10.png"]
    assert Image.open(out / "view_az+90_el+10.png").size == (16, 16)
    rc, cap = _cli(args, capsys)  # its own folder: replaced
    assert rc == 0
    (out / "mine.txt").write_text("user file")
    rc, cap = _cli(args, capsys)  # a folder holding a user's file: refused, untouched
    assert rc == 2 and "did not write" in cap.err and (out / "mine.txt").read_text() == "user file"


def test_train_py_runs_the_zero123_task_and_resumes_exactly(tmp_path):
    """train.py's main() picks DiffusionTask from ``task: zero123``: it trains, validates (metrics + image grid),
    checkpoints, resumes bit for bit (synthetic pairs are indexed by position) and exports a folder load_prior
    reads."""
    from omegaconf import OmegaConf

    from _train_utils import load_weights
    from lrm.training.trainer import main

    over = ["data.source=auto", "data.path=" + str(tmp_path / "no-shards"), "data.image_size=16",
            "data.num_workers=0", "train.batch_size=2", "train.val_batch_size=2", "train.val_timesteps=[100,900]",
            "train.sample_steps=2", "train.val_every=2", "train.image_every=2", "train.log_every=1",
            "train.ckpt_every=2", "train.warmup_steps=1", "train.progress=false"]
    over += [f"model.{k}={v}".replace("'", "").replace("False", "false").replace("True", "true")
             for k, v in TINY.items()]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["--config", "zero123-tiny", "--output-dir", str(a), "--max-steps", "4", *over]) == 0
    saved = OmegaConf.load(a / "model" / "config.yaml")
    assert saved.task == "zero123" and saved.data.source == "synthetic"  # "auto" resolved and recorded
    prior = load_prior(a / "model")
    assert isinstance(prior, PixelPrior) and prior.resolution == 16
    assert main(["--config", "zero123-tiny", "--output-dir", str(b), "--max-steps", "4", *over,
                 "--resume", str(a / "checkpoints" / "step_2")]) == 0
    wa, wb = load_weights(a / "model"), load_weights(b / "model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------------ v-prediction
def test_v_prediction_target_and_noise_are_inverse():
    """v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x0, and reading the exact v back as ε recovers ε from x_t alone."""
    from lrm.diffusion.model import noise_from_output, train_scheduler, training_target

    ac = train_scheduler(ViewUNetConfig()).alphas_cumprod.float()
    t = torch.tensor([0, 10, 500, 900, 999])
    x0, eps = torch.rand(5, 3, 8, 8) * 2 - 1, torch.randn(5, 3, 8, 8)
    a = ac[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = training_target(x0, eps, ac[t], "v_prediction")
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert torch.allclose(noise_from_output(v, x_t, ac[t], "v_prediction"), eps, atol=1e-5)
    assert training_target(x0, eps, ac[t], "epsilon") is eps


class _VelocityOracle(torch.nn.Module):
    """Stands in for the UNet of a v-prediction model: outputs the exact v of a known x0 and ε."""

    def __init__(self, x0, eps, ac):
        super().__init__()
        self.x0, self.eps, self.ac = x0, eps, ac

    def forward(self, x_t, t, *args, **kw):
        a = self.ac[t].view(-1, 1, 1, 1)
        return a.sqrt() * self.eps - (1 - a).sqrt() * self.x0


def test_pixel_prior_reads_a_v_prediction_model_as_noise():
    from lrm.diffusion.model import train_scheduler

    model = tiny_model(prediction_type="v_prediction")
    prior = PixelPrior(model)
    ac = prior.alphas_cumprod
    x0, eps = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16)
    t = torch.tensor([300])
    a = ac[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    oracle = _VelocityOracle(x0, eps, ac)
    prior.model = type("M", (), {"cfg": model.cfg, "__call__": lambda self, *a, **k: oracle(*a, **k)})()
    cond = Condition(image=None, extras={"cond_image": torch.zeros(1, 3, 16, 16), "embedding": torch.zeros(1, 16)})
    assert torch.allclose(prior.predict_noise(x_t, t, cond, torch.zeros(1, 4)), eps, atol=1e-5)
    assert torch.allclose(train_scheduler(model.cfg).alphas_cumprod.float(), ac)


def test_task_trains_a_v_prediction_model_on_its_target():
    """One step's loss is the MSE to v (not to ε): checked against the formula with the task's own noise draw."""
    from lrm.diffusion.task import DiffusionTask

    cfg = task_cfg(**{"model.prediction_type": "v_prediction"})
    task = DiffusionTask(cfg)
    model = task.build_model()
    batch = task.build_source("train", 0, 1).get(0)
    g = torch.Generator().manual_seed(3)
    loss = task.step_losses(model, batch, g)["mse"]
    g = torch.Generator().manual_seed(3)  # the same draws, replayed
    x0 = batch["target"]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
    drop = torch.rand(x0.shape[0], generator=g) < float(cfg.model.cond_dropout)
    a = task.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).float()
    with torch.no_grad():
        out = model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, batch["cond_image"], batch["rel_camera"], drop=drop)
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    assert abs(float(loss) - float(((out - v) ** 2).mean())) < 1e-5
    assert abs(float(loss) - float(((out - noise) ** 2).mean())) > 1e-3


@pytest.mark.skipif(not (Path(__file__).resolve().parent.parent / "checkpoints" / "zero123-tiny" / "model.safetensors")
                    .is_file(), reason="no shipped prior")
def test_shipped_prior_samples_at_zero_offset_resemble_their_own_input():
    """The trained tiny prior asked for the input's own view (Δ = 0) draws, for each of the four example objects, a
    view closer to that object's input than to any other example's (DDIM 20 steps, seeded)."""
    from lrm.diffusion.pixel_prior import DEFAULT_PRIOR
    from lrm.diffusion.prior import relative_camera_from_angles
    from lrm.preprocess import preprocess

    torch.manual_seed(0)
    prior = load_prior(DEFAULT_PRIOR)
    root = Path(__file__).resolve().parent.parent / "examples"
    inputs = []
    for name in ("duck", "cow", "milk_truck", "soccer_ball"):
        pre = preprocess(str(root / f"{name}.png"), 256, foreground_ratio=float(prior.foreground_ratio or 0.85))
        x = torch.from_numpy(pre.image).permute(2, 0, 1)[None].float()
        inputs.append(torch.nn.functional.interpolate(x, size=prior.resolution, mode="area"))
    inputs = torch.cat(inputs)
    out = sample_views(prior, inputs, relative_camera_from_angles(0.0, 0.0).expand(4, 4), steps=20, guidance=3.0,
                       generator=torch.Generator().manual_seed(0))
    dist = ((out[:, None] - inputs[None]) ** 2).mean((2, 3, 4))  # [sample, input]
    assert dist.argmin(1).tolist() == [0, 1, 2, 3], dist
