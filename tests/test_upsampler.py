"""The triplane upsampler's overlap (lrm/models/upsampler.py, ``model.upsampler.overlap``): tokens whose kernels
reach into their neighbours' patches, and ``--init-from`` of a checkpoint without overlap."""
import pytest
import torch

from lrm.checkpoint import CheckpointError, load_init_weights
from lrm.config import load_config
from lrm.models.upsampler import TriplaneUpsampler
from test_pixel_plane import PIXEL, canonical_vector, small_model


def test_overlap_keeps_the_plane_size():
    tokens = torch.randn(2, 3 * 5 * 5, 16)
    for overlap in (0, 1, 2, 3):
        up = TriplaneUpsampler(16, 4, kernel=4, overlap=overlap)
        assert up(tokens, 5).shape == (2, 3, 4, 20, 20)


@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_one_token_paints_its_patch_and_overlap_texels_of_each_neighbour(overlap):
    """A single non-zero token (bias zero, kernel all ones) reaches exactly its k x k patch widened by ``overlap``
    texels on every side; with overlap 0 the patches are independent."""
    k, p = 4, 5
    up = TriplaneUpsampler(3, 1, kernel=k, overlap=overlap)
    with torch.no_grad():
        up.deconv.weight.fill_(1.0)
        up.deconv.bias.zero_()
    tokens = torch.zeros(1, 3 * p * p, 3)
    row, col = 2, 3
    tokens[0, row * p + col] = 1.0  # plane 0 (xy), token (row, col)
    plane = up(tokens, p)[0, 0, 0]
    rows, cols = torch.nonzero(plane, as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (row * k - overlap, row * k + k - 1 + overlap)
    assert (cols.min().item(), cols.max().item()) == (col * k - overlap, col * k + k - 1 + overlap)
    assert torch.allclose(plane[plane != 0], torch.full_like(plane[plane != 0], 3.0))
    assert not up(tokens, p)[0, 1:].any()  # the other planes see nothing of it


def test_zero_padded_kernel_reproduces_the_independent_patches():
    torch.manual_seed(0)
    tokens = torch.randn(1, 3 * 4 * 4, 8)
    plain = TriplaneUpsampler(8, 5, kernel=4)
    wide = TriplaneUpsampler(8, 5, kernel=4, overlap=2)
    with torch.no_grad():
        wide.deconv.weight.copy_(torch.nn.functional.pad(plain.deconv.weight, (2, 2, 2, 2)))
        wide.deconv.bias.copy_(plain.deconv.bias)
    assert torch.allclose(wide(tokens, 4), plain(tokens, 4), atol=1e-6)


def test_init_from_a_checkpoint_without_overlap_starts_as_that_checkpoint():
    old = small_model(*PIXEL, "model.upsampler.kernel=4", seed=0)
    new = small_model(*PIXEL, "model.upsampler.kernel=4", "model.upsampler.overlap=2", seed=3)
    assert new.upsampler.deconv.weight.shape[-2:] == (8, 8)
    load_init_weights(new, dict(old.state_dict()), "old")
    img, cam = torch.rand(1, 1, 3, 32, 32), canonical_vector()[:, None]
    with torch.no_grad():
        a, b = old(img, cam), new(img, cam)
    assert torch.allclose(a, b, atol=1e-6)
    # training then reaches the new taps: they get gradients
    new.train()
    new(img, cam).square().mean().backward()
    g = new.upsampler.deconv.weight.grad
    assert g[..., :2, :].abs().sum() > 0 and g[..., -2:].abs().sum() > 0


def test_init_from_a_smaller_stride_into_an_overlapping_model_is_refused():
    """Nearest-widening (kernel 2 -> 4) would not reproduce the planes through a padded kernel: a clear error."""
    old = small_model(*PIXEL, seed=0)  # kernel 2
    new = small_model(*PIXEL, "model.upsampler.kernel=4", "model.upsampler.overlap=2", seed=3)
    with pytest.raises(CheckpointError, match="upsampler.deconv.weight"):
        load_init_weights(new, dict(old.state_dict()), "old")


def test_overlap_config():
    assert load_config("tiny").model.upsampler.overlap == 0
    with pytest.raises(ValueError, match="overlap"):
        load_config("tiny", ["model.upsampler.overlap=-1"])


def test_seam_ratio_of_patchwise_constant_and_smooth_planes():
    from lrm.models.upsampler import seam_ratio

    torch.manual_seed(0)
    blocks = torch.randn(2, 3, 4, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    noise = 0.01 * torch.randn(2, 3, 16, 16)
    assert seam_ratio(blocks + noise, 4) > 20
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ramp = (0.3 * x + 0.2 * y).expand(2, 3, 16, 16)  # every neighbour pair differs by the same amount
    assert seam_ratio(ramp, 4) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="whole patches"):
        seam_ratio(torch.zeros(1, 10, 10), 4)


def test_density_seam_ratio_sees_steps_at_patch_borders_inside_the_band():
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.spec_from_file_location("plane_seams", Path(__file__).parents[1] / "tools" / "plane_seams.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    density_seam_ratio = tool.density_seam_ratio

    n = 16
    i = np.arange(n)
    base = np.add.outer(np.add.outer(0.1 * i, 0.1 * i), 0.1 * i)  # a log-linear field: equal steps everywhere
    band = np.ones((n, n, n), bool)
    assert density_seam_ratio(base, 4, band) == pytest.approx(1.0)
    steps = base + 0.5 * (i // 4)[:, None, None]  # an extra jump of 0.5 at every x-border
    # along x the border pairs differ by 0.6 and the others by 0.1; y and z pairs by 0.1 everywhere
    expected = ((0.6 * 1 + 0.1 * 2) / 3) / 0.1
    assert density_seam_ratio(steps, 4, band) == pytest.approx(expected)
    band_no_x_borders = np.zeros_like(band)
    band_no_x_borders[5:7] = True  # only x = 5, 6: no x-border pair lies inside the band
    assert density_seam_ratio(steps, 4, band_no_x_borders) == pytest.approx(1.0)
