"""View-conditioned diffusion priors (Zero-1-to-3 style): the interface is in prior.py."""
