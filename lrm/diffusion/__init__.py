"""View-conditioned diffusion priors (Zero-1-to-3 style): the interface is in prior.py.

``load_prior(path, device)`` opens any prior folder as a ``ViewPrior`` (lrm/diffusion/pixel_prior.py): the
project's own exported ``zero123`` model, or a diffusers Zero-1-to-3 folder (lrm/diffusion/zero123.py). diffusers
is imported only when a prior is loaded.
"""


def load_prior(path=None, device="cpu"):
    """A ``ViewPrior`` from a prior folder (default ``checkpoints/zero123-tiny``); see lrm/diffusion/pixel_prior.py."""
    from .pixel_prior import load_prior as _load_prior

    return _load_prior(path, device)


__all__ = ["load_prior"]
