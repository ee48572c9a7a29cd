"""TripoSR import: conversion, conformance with the reference implementation's stored tensors, cameras,
renderer edge cases, corrupted checkpoints and fine-tuning from converted weights.

The conformance vectors are vendored in ``tests/data/triposr_conformance`` (see its PROVENANCE.md), so every
clone checks them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lrm import cameras as cam
from lrm.checkpoint import load_checkpoint, save_checkpoint
from lrm.config import load_config
from lrm.convert import triposr as tsr
from lrm.models import build_model
from lrm.models.decoder import sample_triplane
from lrm.render.volume import VolumeRenderer, near_far

#: Vendored reference vectors (provenance: tests/data/triposr_conformance/PROVENANCE.md); never skipped.
CONF = Path(__file__).resolve().parent / "data" / "triposr_conformance"


@pytest.fixture(scope="module")
def io():
    from safetensors.torch import load_file

    return load_file(str(CONF / "tiny_io.safetensors"))


@pytest.fixture(scope="module")
def manifest():
    return json.loads((CONF / "full_manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tsr") / "tiny"
    assert tsr.main([str(CONF / "tiny_weights.safetensors"), str(CONF / "tiny_config.json"), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_checkpoint(tiny_dir)[0]


def _close(name, got, ref, atol=1e-5, rtol=0.0):
    got = got.reshape(ref.shape).to(ref.dtype)
    err = (got - ref).abs()
    tol = atol + rtol * ref.abs()
    assert bool((err <= tol).all()), f"{name}: max |ours - reference| = {err.max().item():.3g}"


# --------------------------------------------------------------------------------------------------
# config + full-size key/shape manifest
# --------------------------------------------------------------------------------------------------
def test_config_yaml_matches_converter(manifest):
    want = load_config("triposr")
    assert tsr.config_from_triposr(manifest["tsr_config"], manifest["vit_config"]) == want
    # dino-vitb16's config is built in, so the TripoSR config.yaml alone is enough
    assert tsr.config_from_triposr(manifest["tsr_config"]) == want


def test_full_manifest_converts_key_for_key(manifest):
    cfg = load_config("triposr")
    entries = manifest["state_dict"]
    man = {k: tuple(v["shape"]) for k, v in entries.items()}
    assert tsr.expected_triposr_shapes(cfg) == man
    # run the real converter on meta tensors of the manifest's shapes: every key lands, with our shape
    converted = tsr.convert_state_dict({k: torch.empty(s, device="meta") for k, s in man.items()}, cfg)
    model = build_model(cfg, meta=True)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    pooler = sum(math.prod(man[k]) for k in tsr.POOLER_KEYS)
    assert model.parameter_counts()["total"] == manifest["total_parameters"] - pooler
    assert model.parameter_counts()["camera_embed"] == 0


def test_key_mapping_round_trips():
    for k in ["encoder.blocks.11.attn.to_q.weight", "transformer.blocks.3.attn_cross.to_out.bias",
              "transformer.blocks.0.mlp.fc1.weight", "decoder.layers.18.bias", "transformer.tokens"]:
        assert tsr.triposr_to_ours(tsr.ours_to_triposr(k)) == k
    assert tsr.triposr_to_ours("image_tokenizer.model.pooler.dense.weight") is None
    with pytest.raises(KeyError):
        tsr.triposr_to_ours("backbone.something_else.weight")


# --------------------------------------------------------------------------------------------------
# conformance: tiny model vs the reference's intermediates (fp32 within 1e-5; fp64 to rounding)
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_tiny_intermediates_fp32(tiny, io):
    enc, t = tiny.encoder, tiny.transformer
    img = io["input_image_raw"].permute(2, 0, 1)[None]
    s = enc.cfg.image_size
    _close("rgb_cond", F.interpolate(img, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
           .permute(0, 2, 3, 1), io["rgb_cond"])
    pixels = enc.prepare(img)
    _close("vit_pixel_values", pixels, io["vit_pixel_values"])
    pos = enc.pos_embed
    from lrm.models.encoder import interpolate_pos_grid

    n = pixels.shape[-1] // enc.cfg.patch_size
    grid = interpolate_pos_grid(pos[:, 1:], n, n, enc.cfg.pos_interp)
    _close("vit_pos_embed_interpolated", torch.cat([pos[:, :1], grid], 1), io["vit_pos_embed_interpolated"])
    _close("vit_embeddings_out", enc.embed(pixels), io["vit_embeddings_out"])
    tokens = enc(img)
    _close("image_tokens", tokens, io["image_tokens"])
    _close("triplane_tokens_in", t.tokens.T[None], io["triplane_tokens_in"])
    x = t(tokens)
    _close("backbone_out", x.transpose(1, 2), io["backbone_out"])
    p, c = t.cfg.plane_tokens, t.cfg.token_dim
    _close("triplane_lowres", x.view(1, 3, p, p, c).permute(0, 1, 4, 2, 3), io["triplane_lowres"])
    planes = tiny(img)
    _close("scene_codes", planes, io["scene_codes"])
    pts = io["query_points"][None]
    _close("query_triplane_features", sample_triplane(planes, pts, tiny.cfg.render.radius), io["query_triplane_features"])
    q = tiny.query(planes, pts)
    _close("query_density", q["raw"][..., :1], io["query_density"])
    _close("query_features", q["raw"][..., 1:], io["query_features"])
    _close("query_density_act", q["density"], io["query_density_act"], rtol=1e-5)  # values up to 17
    _close("query_color", q["rgb"], io["query_color"])


@torch.no_grad()
def test_tiny_cameras_and_rays(io):
    rc = json.loads((CONF / "tiny_config.json").read_text())["render_camera"]
    n, h = rc["n_views"], rc["height"]
    c2w, intr = tsr.triposr_cameras(n, rc["elevation_deg"], rc["camera_distance"], rc["fovy_deg"])
    # the reference's OpenGL-style c2w is ours with camera y and z flipped
    _close("cam_c2w", cam.opengl_to_opencv(io["cam_c2w"]), c2w, atol=1e-6)
    _close("cam_c2w (opencv_to_opengl)", cam.opencv_to_opengl(c2w), io["cam_c2w"], atol=1e-6)
    d_cv = cam.camera_directions(cam.pixel_grid(h, h), intr[:, None], h, h)  # z = 1, OpenCV
    d_gl = d_cv * torch.tensor([1.0, -1.0, -1.0])
    _close("cam_directions_cam (direction)", F.normalize(d_gl, dim=-1), F.normalize(io["cam_directions_cam"], dim=-1),
           atol=1e-6)
    rays_o, rays_d = cam.get_rays(c2w, intr, h, h)
    _close("cam_rays_o", rays_o, io["cam_rays_o"], atol=1e-6)
    _close("cam_rays_d", rays_d, io["cam_rays_d"], atol=1e-6)
    r = load_config("triposr").model.render
    t_near, t_far, valid = near_far(rays_o, rays_d, r.radius, r.box_margin, r.min_ray_length)
    _close("cam_t_near", t_near, io["cam_t_near"], atol=1e-5)
    _close("cam_t_far", t_far, io["cam_t_far"], atol=1e-5)
    assert torch.equal(valid.reshape(io["cam_rays_valid"].shape), io["cam_rays_valid"])


@torch.no_grad()
def test_tiny_render_fp32(tiny, io):
    rc = json.loads((CONF / "tiny_config.json").read_text())["render_camera"]
    c2w, intr = tsr.triposr_cameras(rc["n_views"], rc["elevation_deg"], rc["camera_distance"], rc["fovy_deg"])
    planes = tiny(io["input_image_raw"].permute(2, 0, 1)[None])
    out = tiny.render(planes, c2w[None], intr[None], resolution=rc["height"])
    _close("render_rgb", out["rgb"][0], io["render_rgb"])
    # chunking only splits the work
    tiny.renderer.cfg.chunk = 333
    try:
        out2 = tiny.render(planes, c2w[None], intr[None], resolution=rc["height"])
    finally:
        tiny.renderer.cfg.chunk = 8192
    assert (out2["rgb"] - out["rgb"]).abs().max() < 1e-6


@torch.no_grad()
def test_tiny_fp64(tiny_dir, io):
    """In float64 the port equals the reference's float64 run to rounding error (the budget for fp32)."""
    m = load_checkpoint(tiny_dir)[0].double()
    img = io["input_image_raw"].permute(2, 0, 1)[None].double()
    tokens = m.encoder(img)
    _close("image_tokens_f64", tokens, io["image_tokens_f64"], atol=1e-10)
    _close("backbone_out_f64", m.transformer(tokens).transpose(1, 2), io["backbone_out_f64"], atol=1e-10)
    planes = m(img)
    _close("scene_codes_f64", planes, io["scene_codes_f64"], atol=1e-10)
    q = m.query(planes, io["query_points"][None].double())
    _close("query_density_f64", q["raw"][..., :1], io["query_density_f64"], atol=1e-10)
    _close("query_features_f64", q["raw"][..., 1:], io["query_features_f64"], atol=1e-10)
    # the reference's fp64 run used the fp32 rays
    rays_o = io["cam_rays_o"].double().reshape(1, -1, 3)
    rays_d = io["cam_rays_d"].double().reshape(1, -1, 3)
    out = m.render_rays(planes, rays_o, rays_d)
    _close("render_rgb_f64", out["rgb"], io["render_rgb_f64"], atol=1e-8)


# --------------------------------------------------------------------------------------------------
# the two reference bugs are not reproduced
# --------------------------------------------------------------------------------------------------
def _gl_turntable(n, elev, dist):
    """README recipe for TripoSR's spherical cameras, with the cross products taken along the last axis."""
    az = torch.deg2rad(torch.linspace(0, 360, n + 1, dtype=torch.float64)[:n])
    e = torch.deg2rad(torch.tensor(float(elev), dtype=torch.float64))
    pos = dist * torch.stack([torch.cos(e) * torch.cos(az), torch.cos(e) * torch.sin(az), torch.sin(e).expand(n)], -1)
    lookat = F.normalize(-pos, dim=-1)
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(n, 3)
    right = F.normalize(torch.linalg.cross(lookat, z, dim=-1), dim=-1)
    up = F.normalize(torch.linalg.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -lookat, pos
    return c2w


@pytest.mark.parametrize("n_views", [1, 3, 4, 30])
def test_turntable_matches_correct_recipe(n_views):
    c2w, intr = tsr.triposr_cameras(n_views, 15.0, 1.9, 40.0, dtype=torch.float64)
    assert torch.allclose(cam.opencv_to_opengl(c2w), _gl_turntable(n_views, 15.0, 1.9), atol=1e-12)
    # and each camera equals the same camera computed on its own (the reference's n_views=3 bug mixes them)
    for i in range(n_views):
        one = cam.orbit_camera(torch.tensor(360.0 * i / n_views, dtype=torch.float64), 15.0, 1.9)
        assert torch.allclose(c2w[i], one, atol=1e-12)
    assert torch.allclose(intr[:, 1], torch.full((n_views,), 0.5 / math.tan(math.radians(20)), dtype=torch.float64))


def _toy_field(points):
    r = points.norm(dim=-1)
    return 30.0 * (r < 0.5).to(points.dtype), torch.sigmoid(points)


def test_rays_missing_the_box_render_background():
    """The reference crashes when any ray misses the box; here such rays are empty (background, opacity 0)."""
    cfg = load_config("triposr").model.render
    c2w, intr = tsr.triposr_cameras(2, 20.0, 2.5, 70.0)  # a wide view: corner rays miss the cube
    rays_o, rays_d = cam.get_rays(c2w, intr, 24, 24)
    _, _, valid = near_far(rays_o, rays_d, cfg.radius, cfg.box_margin, cfg.min_ray_length)
    assert (~valid).any() and valid.any()
    out = VolumeRenderer(cfg)(_toy_field, rays_o.reshape(1, -1, 3), rays_d.reshape(1, -1, 3))
    miss = ~valid.reshape(1, -1)
    assert torch.isfinite(out["rgb"]).all()
    assert torch.equal(out["rgb"][miss], torch.ones_like(out["rgb"][miss]))
    assert torch.equal(out["opacity"][miss], torch.zeros_like(out["opacity"][miss]))
    assert out["opacity"][~miss].max() > 0.5

    def inf_field(points):  # exp density can overflow: an empty ray must stay background, not NaN
        d, c = _toy_field(points)
        return torch.where(points.norm(dim=-1) > 1.5, torch.full_like(d, float("inf")), d), c

    out = VolumeRenderer(cfg)(inf_field, rays_o.reshape(1, -1, 3), rays_d.reshape(1, -1, 3))
    assert torch.equal(out["rgb"][miss], torch.ones_like(out["rgb"][miss]))


def test_short_rays_are_empty():
    """A ray whose segment in the box is not longer than min_ray_length (0.01) is empty, as in TripoSR."""
    cfg = load_config("triposr").model.render
    h = cfg.radius * (1 - cfg.box_margin)
    rays_o = torch.tensor([[[h - 0.005, 0.0, 0.0], [h - 0.02, 0.0, 0.0]]])  # inside, 0.005 / 0.02 from the face
    rays_d = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    t_near, t_far, valid = near_far(rays_o, rays_d, cfg.radius, cfg.box_margin, cfg.min_ray_length)
    assert torch.allclose(t_far - t_near, torch.tensor([[0.005, 0.02]]), atol=1e-6)
    assert valid.tolist() == [[False, True]]


# --------------------------------------------------------------------------------------------------
# corrupted / mismatched checkpoints are refused
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_sd():
    from safetensors.torch import load_file

    return load_file(str(CONF / "tiny_weights.safetensors"))


def _convert_expect_error(tmp_path, sd, match):
    from safetensors.torch import save_file

    p = tmp_path / "bad.safetensors"
    save_file(sd, str(p))
    with pytest.raises(tsr.TripoSRConversionError, match=match):
        tsr.convert(p, CONF / "tiny_config.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupted_checkpoints_are_rejected(tmp_path, tiny_sd, capsys):
    sd = dict(tiny_sd)
    sd.pop("backbone.proj_in.bias")
    _convert_expect_error(tmp_path, sd, r"missing keys: backbone\.proj_in\.bias")
    sd = dict(tiny_sd, **{"backbone.extra.weight": torch.zeros(2)})
    _convert_expect_error(tmp_path, sd, r"unexpected keys: backbone\.extra\.weight")
    sd = dict(tiny_sd)
    sd["decoder.layers.2.weight"] = torch.zeros(16, 17)
    _convert_expect_error(tmp_path, sd, r"mis-shaped tensors: decoder\.layers\.2\.weight")
    sd = dict(tiny_sd)
    sd["tokenizer.embeddings"] = sd["tokenizer.embeddings"].clone()
    sd["tokenizer.embeddings"][0, 0, 0, 0] = float("nan")
    _convert_expect_error(tmp_path, sd, r"non-finite")
    sd = dict(tiny_sd)
    sd["decoder.layers.0.bias"] = torch.zeros(16, dtype=torch.int64)
    _convert_expect_error(tmp_path, sd, r"non-float")
    # a truncated file
    raw = (CONF / "tiny_weights.safetensors").read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(tsr.TripoSRConversionError, match="cannot read checkpoint"):
        tsr.read_triposr_checkpoint(bad)
    assert tsr.main([str(bad), str(CONF / "tiny_config.json"), str(tmp_path / "out")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    # weights of a different-size model than the config says
    with pytest.raises(tsr.TripoSRConversionError, match="mis-shaped"):
        tsr.convert(CONF / "tiny_weights.safetensors", CONF / "full_manifest.json", tmp_path / "out")


def test_unknown_config_fields_are_refused(tmp_path, manifest):
    cfg = json.loads(json.dumps(manifest["tsr_config"]))
    cfg["backbone"]["some_new_option"] = 1
    with pytest.raises(tsr.TripoSRConversionError, match="some_new_option"):
        tsr.config_from_triposr(cfg)
    assert tsr.config_from_triposr(cfg, strict=False) == load_config("triposr")
    cfg = json.loads(json.dumps(manifest["tsr_config"]))
    cfg["decoder"]["in_channels"] = 40
    with pytest.raises(tsr.TripoSRConversionError, match="decoder.in_channels"):
        tsr.config_from_triposr(cfg)


def test_ckpt_pickle_and_yaml_config(tmp_path, tiny_sd, tiny):
    """``model.ckpt`` (torch pickle, weights_only) + ``config.yaml`` convert like the safetensors/JSON pair."""
    from omegaconf import OmegaConf

    torch.save(tiny_sd, tmp_path / "model.ckpt")
    conf = json.loads((CONF / "tiny_config.json").read_text())
    OmegaConf.save(OmegaConf.create(conf["tsr_config"]), tmp_path / "config.yaml")
    (tmp_path / "vit.json").write_text(json.dumps(conf["vit_config"]))
    out = tsr.convert(tmp_path / "model.ckpt", tmp_path / "config.yaml", tmp_path / "conv", vit_config=tmp_path / "vit.json")
    m, _ = load_checkpoint(out)
    ref = tiny.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())
    # a Lightning-style {"state_dict": ...} wrapper is accepted too
    torch.save({"state_dict": tiny_sd}, tmp_path / "wrapped.ckpt")
    assert tsr.read_triposr_checkpoint(tmp_path / "wrapped.ckpt").keys() == tiny_sd.keys()
    # the tiny ViT is not built in: without its config the converter says what to pass
    with pytest.raises(tsr.TripoSRConversionError, match="--vit-config"):
        tsr.convert(tmp_path / "model.ckpt", tmp_path / "config.yaml", tmp_path / "conv2")


# --------------------------------------------------------------------------------------------------
# the converted folder is an ordinary checkpoint: load, fine-tune, save, reload
# --------------------------------------------------------------------------------------------------
def test_converted_folder_is_a_normal_checkpoint(tiny_dir, tiny):
    from safetensors.torch import load_file

    cfg = load_config(tiny_dir / "config.yaml")
    model = build_model(cfg)
    model.load_state_dict(load_file(str(tiny_dir / "model.safetensors")), strict=True)
    img = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model.eval()(img), tiny(img))
    assert cfg.model.transformer.camera_modulation is False and cfg.infer.input_background == [0.5, 0.5, 0.5]


def test_fine_tune_from_converted_weights(tiny_dir, tmp_path, io):
    torch.manual_seed(0)
    model, cfg = load_checkpoint(tiny_dir)
    model.train()
    img = io["input_image_raw"].permute(2, 0, 1)[None]
    c2w, intr = tsr.triposr_cameras(2, 10.0)
    target = torch.full((1, 2, 8, 8, 3), 0.3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn():
        out = model.render(model(img), c2w[None], intr[None], resolution=8, randomize=True)
        return F.mse_loss(out["rgb"], target)

    first = loss_fn()
    first.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder.pos_embed"].abs().sum() > 0 and grads["transformer.tokens"].abs().sum() > 0
    opt.step()
    opt.zero_grad()
    for _ in range(3):
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < first.item()
    # midpoint sampling is deterministic: training renders equal eval renders
    with torch.no_grad():
        planes = model(img)
        a = model.render(planes, c2w[None], intr[None], resolution=8, randomize=True)["rgb"]
        b = model.render(planes, c2w[None], intr[None], resolution=8, randomize=False)["rgb"]
    assert torch.equal(a, b)
    save_checkpoint(model, cfg, tmp_path / "ft")
    save_checkpoint(model, cfg, tmp_path / "ft")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]
    again, _ = load_checkpoint(tmp_path / "ft")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_normalized_step_never_uses_nerfacc(caplog):
    """The nerfacc path marches at a world-space step, so TripoSR's ``step: normalized`` stays on torch."""
    cfg = load_config("triposr", ["model.render.backend=nerfacc"]).model.render
    r = VolumeRenderer(cfg)
    with caplog.at_level("WARNING"):
        assert r._resolve_backend(torch.device("cuda")) == "torch"
    assert "step=world" in caplog.text
    assert VolumeRenderer(load_config("triposr").model.render)._resolve_backend(torch.device("cuda")) == "torch"


def test_converter_never_empties_a_foreign_folder(tmp_path, capsys):
    """Converting into an existing folder that is not a checkpoint it wrote is refused (one line, exit 2)."""
    w, c = str(CONF / "tiny_weights.safetensors"), str(CONF / "tiny_config.json")
    out = tmp_path / "docs"
    out.mkdir()
    (out / "notes.md").write_text("keep")
    assert tsr.main([w, c, str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert [p.name for p in out.iterdir()] == ["notes.md"]
    assert tsr.main([w, c, str(out), "--overwrite"]) == 0
    assert not (out / "notes.md").exists() and (out / "model.safetensors").is_file()
    assert tsr.main([w, c, str(out)]) == 0  # a checkpoint it wrote: replaced without asking


def test_converter_refuses_absurd_sizes_and_binary_configs(tmp_path, capsys):
    conf = json.loads((CONF / "tiny_config.json").read_text())
    conf["tsr_config"]["backbone"]["num_layers"] = 1e6
    (tmp_path / "huge.json").write_text(json.dumps(conf))
    (tmp_path / "blob.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "blob.json").write_bytes(bytes(range(256)) * 4)
    for cfg, what in (("huge.json", "transformer.depth"), ("blob.yaml", "blob.yaml"), ("blob.json", "blob.json")):
        rc = tsr.main([str(CONF / "tiny_weights.safetensors"), str(tmp_path / cfg), str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and what in err[0], (cfg, err)
        assert not (tmp_path / "out").exists()
