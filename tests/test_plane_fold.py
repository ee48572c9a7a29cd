"""The decoder's inference fast path (lrm/models/plane_fold.py): first layer folded into the planes.

Reference: the same decoder with ``fold_planes`` off (``grid_sample`` + ``Linear``), and a hand-checked bilinear case.
"""
import pytest
import torch
from omegaconf import OmegaConf

from lrm.config import DecoderConfig, PixelPlaneConfig
from lrm.models.decoder import TriplaneDecoder
from lrm.models.plane_fold import fold_table, folded_first_layer

R = 0.87


def decoder(aggregation="concat", pixel=False, hidden_layers=3, channels=6, gate=0):
    cfg = OmegaConf.structured(DecoderConfig)
    cfg.aggregation, cfg.hidden_layers, cfg.hidden = aggregation, hidden_layers, 16
    pcfg = None
    if pixel:
        pcfg = OmegaConf.structured(PixelPlaneConfig)
        pcfg.enabled, pcfg.depth_bands = True, gate
    dec = TriplaneDecoder(cfg, channels, R, pcfg)
    if pixel:  # the pixel input starts at zero: give it weights so the test sees it
        torch.nn.init.normal_(dec.pixel_in.weight)
    return dec


def points(b, n):
    """Inside, outside the cube, and behind / beside the canonical camera (distance 2 on +z)."""
    p = torch.rand(b, n, 3) * 2.6 - 1.3
    p[:, :8] = torch.tensor([0.0, 0.0, 2.5])  # behind the camera
    p[:, 8:16, 2] = 1.999  # just in front of it: far off the image
    p[:, 16:24] = torch.tensor([R, -R, R * 0.999])  # on the cube's corner (plane edges)
    return p


def both(dec, tri, pts):
    with torch.no_grad():
        dec.cfg.fold_planes = False
        ref = dec(tri, pts)["raw"]
        dec.cfg.fold_planes = True
        assert dec.can_fold(tri)
        got = dec(tri, pts)["raw"]
    return ref, got


@pytest.mark.parametrize("aggregation,pixel,layers", [("concat", False, 3), ("sum", False, 2), ("mean", False, 1),
                                                      ("concat", True, 3), ("sum", True, 0)])
def test_folded_decoder_equals_sampling_then_linear(aggregation, pixel, layers):
    torch.manual_seed(0)
    dec = decoder(aggregation, pixel, layers)
    tri = torch.randn(2, 4 if pixel else 3, 6, 8, 12)  # H != W catches swapped axes
    ref, got = both(dec, tri, points(2, 3000))
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5 * ref.abs().max().item())


def test_bf16_mlp_keeps_the_fold_and_matches_the_unfolded_bf16_mlp():
    """``mlp_precision=bf16``: the folded path still applies (fp32 table and first layer, bf16 after it) and agrees
    with the unfolded bf16 MLP to bf16 rounding; both are close to fp32 and differ from it (bf16 really ran)."""
    torch.manual_seed(2)
    dec = decoder("concat", False, 4)
    tri = torch.randn(1, 3, 6, 8, 12)
    pts = points(1, 2000)
    with torch.no_grad():
        exact = dec(tri, pts)["raw"]
    dec.cfg.mlp_precision = "bf16"
    ref, got = both(dec, tri, pts)
    assert got.dtype == torch.float32
    scale = exact.abs().max().item()
    assert not torch.equal(got, exact)
    assert (got - exact).abs().max().item() < 0.05 * scale
    assert (got - ref).abs().max().item() < 0.05 * scale


def test_first_layer_of_a_single_texel_is_its_bilinear_weight():
    # one plane of 4 x 4 with a single 1 at (row 1, col 2); the block is the identity on one channel
    planes = torch.zeros(1, 1, 1, 4, 4)
    planes[0, 0, 0, 1, 2] = 1.0
    table = fold_table(planes, [torch.ones(1, 1)])
    centre = lambda i: (2 * i + 1) / 4 - 1  # noqa: E731  (align_corners=False texel centres)
    x = centre(2) * 0.75 + centre(1) * 0.25  # 3/4 of the way from column 1 to column 2
    coords = torch.tensor([[x, centre(1)], [centre(2), -1.0], [5.0, 5.0], [float("nan"), 0.0]]).view(1, 1, 4, 2)
    out = folded_first_layer(table, coords[..., 0], coords[..., 1], 4, 4)
    # points [P=1, B=1, N=4]; exactly on row 1: 0.75 of the texel; at y = -1 (the plane's edge, half a texel beyond row 0): 0; far off: 0
    # and a NaN coordinate: 0
    assert out[:, 0].tolist() == pytest.approx([0.75, 0.0, 0.0, 0.0], abs=1e-6)


def test_the_table_follows_in_place_changes_and_new_scenes():
    torch.manual_seed(1)
    dec = decoder(pixel=True)
    tri = torch.randn(1, 4, 6, 8, 8)
    pts = points(1, 500)
    ref, got = both(dec, tri, pts)
    with torch.no_grad():
        tri.mul_(-2)  # an optimiser step on the scene
        dec.layers[0].weight.add_(0.5)  # and on the decoder
    ref2, got2 = both(dec, tri, pts)
    assert not torch.allclose(ref2, ref) and torch.allclose(got2, ref2, atol=1e-4)
    other = torch.randn(1, 4, 6, 8, 8)
    ref3, got3 = both(dec, other, pts)
    assert torch.allclose(got3, ref3, atol=1e-4)
    with torch.inference_mode():  # inference tensors carry no version counter: no cache, same values
        t = tri.clone()
        assert torch.allclose(dec(t, pts)["raw"], ref2, atol=1e-4)


def test_autograd_and_the_depth_gate_keep_the_sampling_path():
    dec = decoder(pixel=True, gate=2)
    tri = torch.randn(1, 4, 6, 8, 8, requires_grad=True)
    with torch.no_grad():
        assert not dec.can_fold(tri)  # the gate multiplies the pixel term: not folded
    dec = decoder(pixel=True)
    assert not dec.can_fold(tri)  # autograd on
    dec(tri, points(1, 50))["density"].sum().backward()
    assert tri.grad is not None and tri.grad.abs().sum() > 0
