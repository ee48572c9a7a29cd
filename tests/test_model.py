"""Model stages: triplane sampling, decoder, attention backends, encoder weight loading, the assembled LRM."""
import pytest
import torch
from omegaconf import OmegaConf

from lrm import cameras as C
from lrm.config import DecoderConfig, EncoderConfig, load_config
from lrm.models import build_model
from lrm.models.attention import MultiHeadAttention, attention
from lrm.models.decoder import TriplaneDecoder, sample_triplane
from lrm.models.encoder import ImageEncoder, interpolate_pos_grid, load_pretrained
from lrm.models.lift import lift_features, token_points


def test_triplane_sampling_exact_at_grid_points():
    torch.manual_seed(0)
    R, H, W = 0.87, 6, 8
    planes = torch.randn(1, 3, 5, H, W)
    # cell centres: u = (2i + 1) / W - 1 (width, first coordinate), v = (2j + 1) / H - 1
    i, j = 3, 2
    u, v = (2 * i + 1) / W - 1, (2 * j + 1) / H - 1
    # plane 0 (xy): x -> width, y -> height. Need a point whose xy lands on (u, v) and whose xz / yz also
    # land on cell centres: pick z so that (x, z) and (y, z) are centres too (H != W, so check plane 0 only
    # exactly, and planes 1/2 via their own coordinates)
    p = torch.tensor([[[u * R, v * R, ((2 * 1 + 1) / H - 1) * R]]])
    f = sample_triplane(planes, p, R, "concat")[0, 0]
    assert torch.allclose(f[:5], planes[0, 0, :, j, i], atol=1e-6)
    assert torch.allclose(f[5:10], planes[0, 1, :, 1, i], atol=1e-6)  # xz: x -> width i, z -> height 1
    # yz: y is the width coordinate there: v = (2j+1)/H - 1 is not a width centre unless H == W; use a square case
    sq = torch.randn(1, 3, 4, 8, 8)
    p2 = torch.tensor([[[((2 * 5 + 1) / 8 - 1) * R, ((2 * 2 + 1) / 8 - 1) * R, ((2 * 6 + 1) / 8 - 1) * R]]])
    f2 = sample_triplane(sq, p2, R, "concat")[0, 0]
    assert torch.allclose(f2[0:4], sq[0, 0, :, 2, 5], atol=1e-6)  # xy: (x=5 -> w, y=2 -> h)
    assert torch.allclose(f2[4:8], sq[0, 1, :, 6, 5], atol=1e-6)  # xz: (x=5, z=6)
    assert torch.allclose(f2[8:12], sq[0, 2, :, 6, 2], atol=1e-6)  # yz: (y=2, z=6)
    s = sample_triplane(sq, p2, R, "sum")[0, 0]
    assert torch.allclose(s, f2[0:4] + f2[4:8] + f2[8:12], atol=1e-6)
    # outside the cube features vanish (zero padding)
    far = sample_triplane(sq, torch.tensor([[[5.0, 5.0, 5.0]]]), R, "mean")
    assert torch.equal(far, torch.zeros_like(far))


def test_triplane_sampling_is_bilinear_between_centres():
    R = 1.0
    planes = torch.zeros(1, 3, 1, 4, 4)
    planes[0, 0, 0, 1, 1], planes[0, 0, 0, 1, 2] = 1.0, 3.0
    x = ((2 * 1 + 1) / 4 - 1 + (2 * 2 + 1) / 4 - 1) / 2  # halfway between width cells 1 and 2
    y = (2 * 1 + 1) / 4 - 1
    f = sample_triplane(planes, torch.tensor([[[x, y, 0.9]]]), R, "concat")
    assert f[0, 0, 0].item() == pytest.approx(2.0, abs=1e-6)


def test_decoder_output_ranges():
    torch.manual_seed(0)
    cfg = OmegaConf.structured(DecoderConfig)
    dec = TriplaneDecoder(cfg, channels=8, radius=0.87)
    out = dec(torch.randn(2, 3, 8, 16, 16) * 5, torch.rand(2, 500, 3) * 2 - 1)
    assert out["density"].shape == (2, 500) and out["rgb"].shape == (2, 500, 3)
    assert (out["density"] >= 0).all() and ((out["rgb"] >= 0) & (out["rgb"] <= 1)).all()
    for act in ("exp", "softplus", "relu"):
        cfg.density_activation = act
        assert (TriplaneDecoder(cfg, 8, 0.87)(torch.randn(1, 3, 8, 4, 4), torch.rand(1, 10, 3))["density"] >= 0).all()


def test_attention_backends_agree():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    ref = attention(q, k, v, "math")
    assert torch.allclose(attention(q, k, v, "sdpa"), ref, atol=1e-5)
    # xformers has no CPU kernel: it falls back to sdpa and still agrees
    assert torch.allclose(attention(q, k, v, "xformers"), ref, atol=1e-5)
    m = MultiHeadAttention(16, 2, context_dim=12)
    x, ctx = torch.randn(1, 5, 16), torch.randn(1, 9, 12)
    m.backend = "math"
    a = m(x, ctx)
    m.backend = "sdpa"
    assert torch.allclose(a, m(x, ctx), atol=1e-5)
    with pytest.raises(ValueError):
        attention(q, k, v, "nope")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = load_config("tiny")
    return cfg, build_model(cfg)


def test_tiny_forward_backward_shapes_and_finite_grads(tiny):
    cfg, model = tiny
    m = cfg.model
    assert sum(p.numel() for p in model.parameters()) <= 10_000_000
    imgs = torch.rand(2, 3, 96, 96)
    cams = C.camera_vector(C.orbit_camera(0.0, 0.0, 2.0), C.intrinsics_from_fov(40.0)).expand(2, -1)
    tri = model(imgs, cams)
    side = m.transformer.plane_tokens * m.upsampler.kernel
    planes = 4 if m.pixel_plane.enabled else 3  # the pixel plane (lrm/models/pixel_plane.py)
    assert tri.shape == (2, planes, m.upsampler.channels, side, side)
    c2w = C.orbit_cameras(2, 20.0)[None].expand(2, -1, -1, -1)
    intr = C.intrinsics_from_fov(40.0).expand(2, 2, 4)
    out = model.render(tri, c2w, intr, resolution=16, randomize=True)
    assert out["rgb"].shape == (2, 2, 16, 16, 3) and out["opacity"].shape == (2, 2, 16, 16)
    loss = out["rgb"].mean() + out["opacity"].mean()
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.transformer.tokens.grad.abs().sum() > 0 and model.encoder.patch_embed.weight.grad.abs().sum() > 0
    # the camera conditioning path is trained too once modulation is non-zero
    assert model.camera_embed is not None


def test_same_seed_same_output_and_camera_matters(tiny):
    cfg, _ = tiny
    torch.manual_seed(5)
    a = build_model(cfg)
    torch.manual_seed(5)
    b = build_model(cfg)
    img = torch.rand(1, 3, 64, 64)
    assert torch.equal(a(img), b(img))
    # modulation starts at zero; after perturbing it the camera changes the triplane
    with torch.no_grad():
        for blk in a.transformer.blocks:
            blk.norm_self.mod[1].weight.normal_(0, 0.1)
    c1 = C.camera_vector(C.orbit_camera(0.0, 0.0, 2.0), C.intrinsics_from_fov(40.0))[None]
    c2 = C.camera_vector(C.orbit_camera(0.0, 0.0, 2.0), C.intrinsics_from_fov(60.0))[None]
    assert not torch.allclose(a(img, c1), a(img, c2))


def test_fixed_camera_model_ignores_camera():
    cfg = load_config("tiny", ["model.transformer.camera_modulation=false", "model.transformer.lift_image=false",
                               "model.pixel_plane.enabled=false"])
    torch.manual_seed(0)
    m = build_model(cfg)
    assert m.camera_embed is None
    img = torch.rand(1, 3, 64, 64)
    assert torch.equal(m(img), m(img, torch.randn(1, 16)))


def test_attention_backend_config_agrees_in_model():
    torch.manual_seed(0)
    a = build_model(load_config("tiny", ["model.transformer.attention=math", "model.encoder.attention=math"]))
    torch.manual_seed(0)
    b = build_model(load_config("tiny"))
    img = torch.rand(1, 3, 64, 64)
    assert torch.allclose(a(img), b(img), atol=1e-4)


def test_lift_puts_each_patch_on_the_tokens_its_rays_cross():
    """One-hot patch features: the yz-plane token hit by the ray through a patch centre (found with get_rays,
    independently of the projection the lift uses) receives mostly that patch's feature."""
    g, p, radius = 8, 16, 0.87
    feats = torch.eye(g * g)[None]  # [1, g*g patches, D = g*g]
    c2w = C.orbit_camera(0.0, 0.0, 2.0)
    intr = C.intrinsics_from_fov(40.0)
    cams = C.camera_vector(c2w, intr)[None]
    lifted = lift_features(feats, g, cams, token_points(p, radius, 9))[0]  # [3*p*p, g*g]
    hits = 0
    for k in [g * 3 + 3, g * 4 + 4, g * 2 + 5, g * 5 + 2]:
        row, col = divmod(k, g)
        uv = torch.tensor([[(col + 0.5) / g * 64, (row + 0.5) / g * 64]])
        o, d = C.get_rays(c2w, intr, 64, 64, uv=uv)
        hit = o[0] + d[0] * (-o[0, 0] / d[0, 0])  # the ray where it crosses x = 0 (the yz plane)
        a, b = hit[1] / radius, hit[2] / radius  # plane 2 = (y, z): y indexes width, z height
        ci, ri = int((a + 1) / 2 * p), int((b + 1) / 2 * p)
        token = 2 * p * p + ri * p + ci
        assert lifted[token].argmax() == k
        hits += 1
    assert hits == 4
    # a point behind the camera contributes nothing
    behind = torch.tensor([[[5.0, 0.0, 0.0]]])
    assert lift_features(feats, g, cams, behind).abs().sum() == 0


def test_lift_makes_tokens_depend_on_image_position():
    cfg = load_config("tiny", ["model.transformer.lift_image=true"])
    torch.manual_seed(0)
    m = build_model(cfg)
    assert m.lift is not None and m.parameter_counts()["lift"] > 0
    img = torch.zeros(1, 3, 64, 64)
    img[..., 10:20, 10:20] = 1.0
    tri = m(img)
    tri.square().mean().backward()
    assert m.lift.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["small", "base", "large"])
def test_big_configs_build_on_meta(name):
    m = build_model(load_config(name), meta=True)
    counts = m.parameter_counts()
    assert counts["total"] > 10_000_000
    assert all(p.is_meta for p in m.parameters())


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = build_model(load_config("tiny"))
    torch.manual_seed(0)
    b = build_model(load_config("tiny", ["model.transformer.grad_checkpoint=true"]))
    img = torch.rand(1, 3, 64, 64)
    a(img).square().mean().backward()
    b(img).square().mean().backward()
    assert torch.allclose(a.transformer.tokens.grad, b.transformer.tokens.grad, atol=1e-6)


def test_pos_interpolation_modes():
    g = torch.randn(1, 9, 4)
    assert torch.equal(interpolate_pos_grid(g, 3, 3, "bicubic"), g)
    a = interpolate_pos_grid(g, 4, 4, "bicubic")
    b = interpolate_pos_grid(g, 4, 4, "bicubic_legacy")
    assert a.shape == b.shape == (1, 16, 4) and not torch.allclose(a, b)


def test_encoder_loads_local_dinov2_folder_and_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                                       patch_size=14, mlp_ratio=2)
    torch.manual_seed(0)
    ref = transformers.Dinov2Model(hf_cfg).eval()
    with torch.no_grad():  # make every parameter non-trivial so a wrong mapping shows
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(tmp_path)
    from lrm.models.encoder import encoder_config_from_hf

    cfg = OmegaConf.merge(OmegaConf.structured(EncoderConfig),
                          dict(encoder_config_from_hf(tmp_path), image_size=28, pretrained_path=str(tmp_path)))
    enc = ImageEncoder(cfg).eval()
    load_pretrained(enc, tmp_path)
    img = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        ours = enc(img)
        theirs = ref(pixel_values=enc.prepare(img)).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)
    # a folder that doesn't fit the config is refused with a clear error
    bad = OmegaConf.merge(cfg, {"dim": 64, "heads": 4})
    with pytest.raises(ValueError, match="does not fit"):
        load_pretrained(ImageEncoder(bad), tmp_path)



def test_init_from_a_shallower_transformer_starts_as_that_checkpoint():
    """--init-from into a model with more transformer blocks: the extra blocks get zero output projections, so the
    triplanes equal the checkpoint's; a checkpoint whose blocks are not 0..n-1 is refused as before."""
    import pytest

    from lrm.checkpoint import CheckpointError, load_init_weights
    from lrm.config import load_config
    from lrm.models import build_model

    small = ["model.encoder.image_size=32", "model.encoder.patch_size=8", "model.encoder.dim=32",
             "model.encoder.depth=1", "model.encoder.heads=2", "model.transformer.token_dim=32",
             "model.transformer.heads=2", "model.transformer.plane_tokens=4", "model.transformer.camera_embed_dim=16",
             "model.transformer.lift_samples=4", "model.upsampler.channels=6", "model.decoder.hidden=16",
             "model.pixel_plane.enabled=false", "model.upsampler.kernel=2"]
    torch.manual_seed(0)
    old = build_model(load_config("tiny", small + ["model.transformer.depth=2"])).eval()
    torch.manual_seed(1)
    deep = build_model(load_config("tiny", small + ["model.transformer.depth=4"])).eval()
    load_init_weights(deep, dict(old.state_dict()), "old")
    assert not deep.transformer.blocks[3].mlp.fc2.weight.any() and deep.transformer.blocks[3].mlp.fc1.weight.any()
    img = torch.rand(1, 1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deep(img), old(img), atol=1e-6)
    gap = {k: v for k, v in old.state_dict().items() if not k.startswith("transformer.blocks.0.")}
    with pytest.raises(CheckpointError):
        load_init_weights(build_model(load_config("tiny", small + ["model.transformer.depth=4"])), gap, "gap")
