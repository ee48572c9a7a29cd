"""Trainer tests (CPU, micro model): exact resume after SIGTERM, checkpoint atomicity, 2-process DDP,
fault handling, optimiser groups and schedule."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_utils import MICRO, PY, ROOT, load_weights, subprocess_env

from lrm.checkpoint import CheckpointError
from lrm.training import checkpoint as ckpt
from lrm.training.trainer import build_config, check_world_size, train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the CI box has 2 cores shared with other jobs (OpenMP oversubscription is slow)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _cfg(*extra, steps=4):
    return build_config("tiny", MICRO + list(extra), max_steps=steps)


def _train_cmd(out, steps, *extra):
    return [PY, str(ROOT / "train.py"), "--config", "tiny", "--output-dir", str(out), "--max-steps", str(steps),
            *MICRO, *extra]


def _assert_same_weights(a, b):
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


# ------------------------------------------------------------------------------------------ exact resume
def test_exact_resume_after_sigterm(tmp_path):
    """N steps straight == (killed by SIGTERM mid-run) + --resume latest, bit for bit."""
    n = 60
    env = subprocess_env()
    extra = ["train.ckpt_every=2", "train.keep_last=2"]
    straight = subprocess.Popen(_train_cmd(tmp_path / "straight", n, *extra), env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed_dir, n, *extra), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (killed_dir / "checkpoints" / "step_2").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err[-3000:]
    assert "received SIGTERM" in err
    latest = ckpt.latest_checkpoint(killed_dir / "checkpoints")
    stopped_at = json.loads((latest / "meta.json").read_text())["step"]
    assert 2 <= stopped_at < n, f"the kill came too late (step {stopped_at})"
    assert latest.name == f"step_{stopped_at}"
    assert not list((killed_dir / "checkpoints").glob(".tmp-*"))

    r = subprocess.run(_train_cmd(killed_dir, n, *extra, ) + ["--resume", "latest"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {stopped_at}" in r.stderr
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-3000:]
    _assert_same_weights(tmp_path / "straight" / "model", killed_dir / "model")
    _assert_same_weights(tmp_path / "straight" / "checkpoints" / f"step_{n}", killed_dir / "checkpoints" / f"step_{n}")


def test_resume_in_process_matches_and_restores_state(tmp_path):
    """Checkpoint at step 2 of 4, resume from that folder: same weights, counters and lr as straight."""
    a = train(_cfg("train.ckpt_every=2"), output_dir=str(tmp_path / "a"))
    b = train(_cfg("train.ckpt_every=2"), output_dir=str(tmp_path / "b"),
              resume=str(tmp_path / "a" / "checkpoints" / "step_2"))
    assert b["history"][0]["step"] == 3  # resumed, did not restart
    for (k, va), vb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(va, vb), k
    counters = lambda st: {k: v for k, v in st.items() if k != "cpu_s"}  # noqa: E731 - cpu_s is measured time
    assert counters(a["state"]) == counters(b["state"])
    assert a["history"][-1]["lr"] == b["history"][-1]["lr"]


# ------------------------------------------------------------------------------------------ checkpoints
def test_latest_ignores_half_written(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [("step_2", True), ("step_10", True), ("step_12", False), (".tmp-step_14", True)]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / ckpt.MARKER).write_text("ok")
    (root / "step_3").write_text("not a dir")
    assert ckpt.latest_checkpoint(root).name == "step_10"
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["step_2", "step_10"]


def test_run_outputs_keep_last_and_export(tmp_path):
    from lrm.checkpoint import load_checkpoint

    out = tmp_path / "run"
    res = train(_cfg("train.ckpt_every=1", "train.keep_last=2", steps=4), output_dir=str(out))
    assert [p.name for p in ckpt.complete_checkpoints(out / "checkpoints")] == ["step_3", "step_4"]
    assert (out / "config.yaml").is_file() and (out / "tb").is_dir()
    model, cfg = load_checkpoint(out / "model")
    assert cfg.model.transformer.token_dim == 48 and cfg.train.max_steps == 4
    for k, v in res["model"].state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    # a half-written newer checkpoint is skipped by --resume latest; the exported folder inits fine-tuning
    (out / "checkpoints" / "step_9").mkdir()
    res2 = train(_cfg(steps=5), output_dir=str(out), resume="latest")
    assert res2["history"][0]["step"] == 5
    model, _ = load_checkpoint(out / "model")  # re-exported at step 5
    res3 = train(_cfg("train.lr=0.0", steps=1),
                 output_dir=str(tmp_path / "ft"), resume=str(out / "model"))
    for k, v in model.state_dict().items():  # lr 0: weights stay those of the export
        assert torch.equal(v, res3["model"].state_dict()[k]), k


# ------------------------------------------------------------------------------------------ faults
def test_nonfinite_loss_skips_then_aborts(tmp_path):
    from lrm.models import build_model
    from accelerate.utils import set_seed

    cfg = _cfg("train.loss.rgb=.nan", "train.max_nonfinite=3", steps=10)
    with pytest.raises(FloatingPointError, match="3 training steps in a row had a non-finite loss"):
        train(cfg, output_dir=str(tmp_path / "nan"))
    # skipped steps never touch the weights: the checkpoint-free run left nothing, so re-run 2 steps
    cfg2 = _cfg("train.loss.rgb=.nan", "train.max_nonfinite=5", steps=2)
    res = train(cfg2, output_dir=str(tmp_path / "nan2"))
    assert all(h["skipped"] for h in res["history"]) and res["state"]["skipped_steps"] == 2
    set_seed(0)
    init = build_model(cfg2)
    for k, v in init.state_dict().items():
        assert torch.equal(v, res["model"].state_dict()[k]), k


def test_corrupt_samples_are_skipped(tmp_path):
    res = train(_cfg("data.synthetic.corrupt_every=3", steps=6), output_dir=str(tmp_path / "c"))
    assert res["step"] == 6
    assert res["state"]["bad_batches"] == 2  # positions 2 and 5 raised; 6 good ones end at position 7
    assert res["state"]["position"] == 8
    assert all(math.isfinite(h["loss"]) for h in res["history"])


def test_world_size_mismatch_is_an_error():
    check_world_size(2, {"WORLD_SIZE": "2"})
    check_world_size(1, {})
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 .* num_processes=1"):
        check_world_size(1, {"WORLD_SIZE": "2"})
    with pytest.raises(RuntimeError, match="asked for --num_processes 2 but started 1"):
        check_world_size(1, {}, requested=2)
    check_world_size(1, {}, requested=1)


def test_launcher_request_read_from_parent(tmp_path):
    """accelerate launch --num_processes 2 --cpu: one process runs; the trainer reads the request and stops."""
    from lrm.training.trainer import launcher_requested_processes

    assert launcher_requested_processes() is None  # pytest's parent is no accelerate launcher
    script = tmp_path / "accelerate"  # argv like the real launcher: python .../bin/accelerate launch ...
    script.write_text("import time\ntime.sleep(30)\n")
    fake = subprocess.Popen([PY, str(script), "launch", "--num_processes", "2", "--cpu", "train.py"])
    try:
        time.sleep(0.2)
        assert launcher_requested_processes(fake.pid) == 2
    finally:
        fake.kill()
        fake.wait()


def test_unknown_train_key_is_an_error():
    with pytest.raises(ValueError, match="train"):
        build_config("tiny", ["train.learning_rate=1"])


# ------------------------------------------------------------------------------------------ optimiser
def test_param_groups_and_schedule():
    from lrm.models import build_model
    from lrm.training.optim import lr_factor, param_groups

    model = build_model(_cfg())
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    dn = {names[id(p)] for p in decay["params"]}
    assert {"transformer.tokens", "encoder.pos_embed", "encoder.cls_token"} <= nd
    assert all(n.endswith(".bias") or "norm" in n or n.startswith(("transformer.tokens", "encoder.pos_embed",
                                                                    "encoder.cls_token")) for n in nd)
    params = dict(model.named_parameters())
    assert "decoder.layers.0.weight" in dn and all(params[n].ndim >= 2 and n.endswith("weight") for n in dn)
    assert "encoder.blocks.0.norm1.weight" in nd and "encoder.norm.weight" in nd
    assert len(nd) + len(dn) == len(list(model.parameters()))
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    f = [lr_factor(s, 10, 110, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.55) and f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_grad_accum_matches_bigger_batch_direction(tmp_path):
    """grad_accum=2 with batch 1 consumes two micro-batches per step and still trains."""
    res = train(_cfg("train.grad_accum=2", steps=3), output_dir=str(tmp_path / "ga"))
    assert res["state"]["position"] == 6 and res["state"]["samples"] == 6


# ------------------------------------------------------------------------------------------ two processes
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ranks_agree(tmp_path):
    env = subprocess_env()
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(ROOT / "tests" / "_train_dump_ranks.py"), str(tmp_path / "ddp"), *MICRO, "train.ckpt_every=2"]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    w0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    assert w0["num_processes"] == w1["num_processes"] == 2
    assert w0["samples"] == 2 * 3  # 3 steps x batch 1 x 2 processes
    for k in w0["weights"]:
        assert torch.equal(w0["weights"][k], w1["weights"][k]), k
    assert w0["uids"] != w1["uids"]  # the ranks saw different objects
    assert ckpt.latest_checkpoint(tmp_path / "ddp" / "checkpoints").name == "step_3"
    assert (tmp_path / "ddp" / "checkpoints" / "step_2" / "rng_state_1.json").is_file()


# ------------------------------------------------------------------------------------------ DeepSpeed config
def test_deepspeed_config_batch_arithmetic():
    from lrm.training.deepspeed_config import fill_auto, make_deepspeed_config

    cfg = _cfg("train.batch_size=4", "train.grad_accum=3", "train.grad_clip=0.5")
    ds = make_deepspeed_config(cfg, world_size=8, zero_stage=2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 3, 96)
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"]
    assert "optimizer" not in ds and "scheduler" not in ds  # the trainer's AdamW + cosine are passed as objects
    z3 = make_deepspeed_config(cfg, world_size=2, zero_stage=3, precision="no")
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] and not z3["bf16"]["enabled"]
    auto = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": {"stage": 2}}
    assert fill_auto(auto, cfg, 8)["train_batch_size"] == 96 and auto["gradient_clipping"] == 0.5
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        fill_auto({"gradient_accumulation_steps": 2}, cfg, 8)
    with pytest.raises(ValueError):
        make_deepspeed_config(cfg, world_size=8, zero_stage=4)


# ------------------------------------------------------------------------------------------ losses
def test_lpips_missing_weights_warns_and_disables(tmp_path, caplog):
    cfg = _cfg("train.loss.lpips=0.5", f"train.loss.lpips_path={tmp_path / 'nope.safetensors'}",
               "train.render.patch_size=16", steps=1)
    with caplog.at_level("WARNING"):
        res = train(cfg, output_dir=str(tmp_path / "l"))
    msgs = [r.getMessage() for r in caplog.records if "LPIPS disabled" in r.getMessage()]
    assert len(msgs) == 1 and "no download" in msgs[0]
    assert res["step"] == 1


def test_lpips_from_local_file_and_loss_terms(tmp_path):
    from safetensors.torch import save_file

    from lrm.training.losses import LPIPS, compute_losses, load_lpips, tv_loss
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    ref = LPIPS()
    for lin in ref.lins:
        torch.nn.init.uniform_(lin.weight, 0.0, 0.1)
    sd = {k: v.half() for k, v in ref.state_dict().items() if k.startswith("features.")}
    sd.update({f"lin{i}.model.1.weight": lin.weight.half() for i, lin in enumerate(ref.lins)})  # lpips naming
    save_file(sd, str(tmp_path / "lpips_vgg.safetensors"))
    m = load_lpips(str(tmp_path / "lpips_vgg.safetensors"))
    assert torch.equal(m.lins[2].weight, ref.lins[2].weight.half().float())
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.allclose(m(x, x), torch.zeros(2), atol=1e-6) and (m(x, y) > 0).all()
    # loss terms on patch-shaped ray batches: B=1, K=2 patches of 16² -> 512 rays
    out = {"rgb": torch.rand(1, 512, 3, requires_grad=True), "opacity": torch.rand(1, 512)}
    lcfg = OmegaConf.create({"rgb": 1.0, "mask": 0.5, "lpips": 0.2, "tv": 0.1})
    tri = torch.rand(1, 3, 4, 8, 8)
    t = compute_losses(out, torch.rand(1, 512, 3), torch.rand(1, 512), lcfg, triplanes=tri, lpips_model=m, patch=16)
    assert set(t) == {"rgb", "mask", "lpips", "tv", "total"}
    expect = t["rgb"] + 0.5 * t["mask"] + 0.2 * t["lpips"] + 0.1 * t["tv"]
    assert torch.allclose(t["total"], expect)
    t["total"].backward()
    assert out["rgb"].grad.abs().sum() > 0
    assert tv_loss(torch.ones(1, 3, 2, 5, 5)) == 0


@pytest.mark.parametrize("name,kind,stage", [("single_gpu", "NO", None), ("multi_gpu", "MULTI_GPU", None),
                                             ("deepspeed_zero2", "DEEPSPEED", 2), ("deepspeed_zero3", "DEEPSPEED", 3)])
def test_accelerate_config_files(name, kind, stage):
    from accelerate.commands.config.config_args import load_config_from_file

    from lrm.training.deepspeed_config import fill_auto

    c = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert c.distributed_type.value == kind
    if stage is None:
        return
    ds = json.loads((ROOT / c.deepspeed_config["deepspeed_config_file"]).read_text())
    assert ds["zero_optimization"]["stage"] == stage
    cfg = _cfg("train.batch_size=2", "train.grad_accum=4")
    fill_auto(ds, cfg, c.num_processes)
    assert ds["train_batch_size"] == 2 * 4 * 8 and ds["train_micro_batch_size_per_gpu"] == 2


def test_tensorboard_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_cfg("train.val_every=1", "train.image_every=2", "train.log_every=1", "train.loss.tv=0.01",
               "data.synthetic.num_val_objects=2", steps=2), output_dir=str(tmp_path / "tb"))
    ea = EventAccumulator(str(tmp_path / "tb" / "tb"))
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"loss/rgb", "loss/mask", "loss/tv", "loss/total", "train/lr", "train/grad_norm", "train/samples_per_s",
            "val/psnr", "val/mask_iou"} <= scalars
    assert [e.step for e in ea.Scalars("val/psnr")] == [1, 2]
    img = ea.Images("val/input_target_prediction")
    assert len(img) == 1 and img[0].step == 2
    assert (img[0].height, img[0].width) == (2 * 2 * 24, 3 * 24)  # 2 objects x (target row, prediction row)


def test_checkpointed_rendering_gives_same_gradients():
    """train.render.checkpoint_rays: recomputed chunks reproduce their random samples exactly."""
    from lrm.models import build_model
    from lrm.training.data import make_source
    from lrm.training.trainer import TrainStep, _step_generator, step_losses

    cfg = _cfg("train.render.checkpoint_rays=48")
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = make_source(cfg, "train", 0, 1).get(0)
    grads = []
    for use in (False, True):
        step = TrainStep(model, 48)
        step.use_checkpoint = use
        model.zero_grad()
        terms = step_losses(step, batch, cfg.train, _step_generator(0, 0, 0, 0, "cpu"))
        terms["total"].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads[1])


def test_curves_reads_resumed_runs_and_plots(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from lrm.training.curves import main as curves_main, read_scalars

    for start in (0, 5):  # a run resumed once writes two event files; the later one wins on repeated steps
        w = SummaryWriter(str(tmp_path / "run" / "tb"), filename_suffix=f".{start}")
        for s in range(start, start + 10):
            w.add_scalar("val/psnr", float(s + start), s)
        w.close()
    series = read_scalars(tmp_path / "run")
    steps = dict(series["val/psnr"])
    assert sorted(steps) == list(range(15)) and steps[7] == 12.0
    assert curves_main([str(tmp_path / "run"), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert curves_main([str(tmp_path / "nothing")]) == 2


def test_synthetic_input_background_is_fixed_and_targets_keep_random():
    from lrm.training.data import make_source

    cfg = _cfg("data.background=random", "data.input_background=white", "data.num_views_target=1")
    b = make_source(cfg, "train", batch_size=2).get(0)
    inp = b["input_images"][:, 0].permute(0, 2, 3, 1)
    corner_in, corner_tgt = inp[:, 0, 0], b["target_rgb"][:, 0, 0, 0]  # image corners are background
    assert torch.allclose(corner_in, torch.ones_like(corner_in))
    assert torch.allclose(corner_tgt, b["background"]) and not torch.allclose(b["background"], torch.ones(2, 3))


# ------------------------------------------------------------------------------------------ checkpoint safety
class _Payload:
    """Unpickling this creates ``path`` (a stand-in for arbitrary code run by a crafted checkpoint)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_never_unpickles_planted_payloads(tmp_path):
    """The trainer state is JSON; pickles planted where accelerate would put its state are never run."""
    import shutil

    a = train(_cfg("train.ckpt_every=2"), output_dir=str(tmp_path / "a"))
    step2 = tmp_path / "a" / "checkpoints" / "step_2"
    assert (step2 / ckpt.STATE_NAME).is_file() and not list(step2.glob("*.pkl"))
    ran = tmp_path / "PAYLOAD_RAN"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        torch.save(_Payload(ran), step2 / name)
    b = train(_cfg("train.ckpt_every=2"), output_dir=str(tmp_path / "b"), resume=str(step2))
    assert not ran.exists()
    counters = lambda st: {k: v for k, v in st.items() if k != "cpu_s"}  # noqa: E731 - cpu_s is measured time
    assert counters(b["state"]) == counters(a["state"])
    for (k, va), vb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(va, vb), k  # still an exact continuation
    # an older-format checkpoint whose trainer-state pickle holds code, or an optimiser file that does
    legacy = tmp_path / "legacy" / "checkpoints" / "step_2"
    shutil.copytree(step2, legacy)
    (legacy / ckpt.STATE_NAME).unlink()
    evil_opt = tmp_path / "evil" / "checkpoints" / "step_2"
    shutil.copytree(step2, evil_opt)
    torch.save(_Payload(ran), evil_opt / "optimizer.bin")
    for folder in (legacy, evil_opt):
        with pytest.raises(CheckpointError):
            train(_cfg(), output_dir=str(folder.parent.parent), resume=str(folder))
        assert not ran.exists(), folder
    # an older-format checkpoint holding plain counters still resumes (read with weights_only=True)
    torch.save(json.loads((step2 / ckpt.STATE_NAME).read_text()), legacy / ckpt.LEGACY_STATE_NAME)
    c = train(_cfg("train.ckpt_every=2"), output_dir=str(tmp_path / "c"), resume=str(legacy))
    assert c["history"][0]["step"] == 3 and counters(c["state"]) == counters(a["state"])


def test_resume_from_older_checkpoint_starts_a_new_lineage(tmp_path):
    """--resume step_2 of a run that went on to step_6: the later ones move to abandoned-*/, are never deleted,
    and latest / pruning only see the new lineage."""
    out = tmp_path / "run"
    train(_cfg("train.ckpt_every=2", "train.keep_last=3", steps=6), output_dir=str(out))
    root = out / "checkpoints"
    old6 = load_weights(root / "step_6")
    res = train(_cfg("train.ckpt_every=2", "train.keep_last=2", "seed=1", steps=6), output_dir=str(out),
                resume=str(root / "step_2"))
    assert res["history"][0]["step"] == 3
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["step_4", "step_6"]
    abandoned = list(root.glob("abandoned-*"))
    assert len(abandoned) == 1 and sorted(p.name for p in abandoned[0].iterdir()) == ["step_4", "step_6"]
    assert all(torch.equal(v, load_weights(abandoned[0] / "step_6")[k]) for k, v in old6.items())
    new6 = load_weights(root / "step_6")
    assert any(not torch.equal(v, new6[k]) for k, v in old6.items())  # a different history (other seed)
    assert ckpt.latest_checkpoint(root).name == "step_6"


def test_damaged_newest_checkpoint_falls_back_or_stops(tmp_path, capsys, monkeypatch):
    from lrm.training import trainer

    out = tmp_path / "run"
    a = train(_cfg("train.ckpt_every=2"), output_dir=str(out))
    root = out / "checkpoints"
    weights = root / "step_4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated under a COMPLETE marker
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.verify_checkpoint(root / "step_4")
    # named explicitly: one clear line, exit 2
    argv = ["--config", "tiny", "--output-dir", str(out), "--resume", str(root / "step_4"), *MICRO]
    assert trainer.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "damaged" in err[-1]
    # --resume latest: falls back to step_2 and continues exactly
    assert ckpt.usable_latest(root).name == "step_2"
    b = train(_cfg("train.ckpt_every=2"), output_dir=str(out), resume="latest")
    assert b["history"][0]["step"] == 3
    for (k, va), vb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(va, vb), k


def test_checkpoint_files_are_flushed_before_the_marker(tmp_path, monkeypatch):
    events = []
    real_fsync, real_marker = ckpt.fsync_tree, ckpt._write_marker
    monkeypatch.setattr(ckpt, "fsync_tree", lambda d: (events.append(("fsync", sorted(os.listdir(d)))),
                                                         real_fsync(d)))
    monkeypatch.setattr(ckpt, "_write_marker", lambda d: (events.append(("marker",)), real_marker(d)))
    train(_cfg("train.ckpt_every=0", steps=1), output_dir=str(tmp_path / "r"))
    assert [e[0] for e in events] == ["fsync", "marker"]
    assert {"model.safetensors", "optimizer.bin", ckpt.STATE_NAME} <= set(events[0][1])


def _tensors_equal(a, b):
    keys = [k for k, v in a.items() if torch.is_tensor(v)]
    return keys == [k for k, v in b.items() if torch.is_tensor(v)] and all(torch.equal(a[k], b[k]) for k in keys)


def test_logged_validation_batch_does_not_depend_on_the_run_seed():
    """Runs of different seeds train on different batches but log val numbers on the same views (VAL_SEED), and
    drawing that batch leaves the run's torch RNG where it was."""
    from lrm.training.data import make_source
    from lrm.training.lrm_task import fixed_val_batch

    cfg0 = build_config("tiny", MICRO + ["seed=0"], max_steps=1)
    cfg7 = build_config("tiny", MICRO + ["seed=7"], max_steps=1)
    assert not _tensors_equal(make_source(cfg0, "train").get(0), make_source(cfg7, "train").get(0))
    torch.manual_seed(3)
    state = torch.get_rng_state()
    v0 = fixed_val_batch(cfg0)
    assert torch.equal(torch.get_rng_state(), state) and cfg0.seed == 0
    assert _tensors_equal(v0, fixed_val_batch(cfg7))
