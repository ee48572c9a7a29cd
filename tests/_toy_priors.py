"""Toy view priors for the guidance / refinement tests: the ViewPrior protocol (lrm/diffusion/prior.py) with noise
predictions simple enough to compute by hand."""
import torch

from lrm.diffusion.prior import Condition


class ToyPrior:
    """Pixel-space prior: encode = 2·rgb − 1 at the render's own size (``resolution`` only sizes the condition).
    ε̂ = a·x_t + b·(t / T) + [cond] (mean of the condition image + Δelevation + sin Δazimuth): linear, so the
    SDS gradient has a closed form. Counts its calls and the cond of each."""

    def __init__(self, resolution=8, T=100, a=0.5, b=0.3, dtype=torch.float64):
        self.resolution, self.num_train_timesteps = resolution, T
        self.alphas_cumprod = torch.linspace(0.999, 0.02, T, dtype=dtype)
        self.a, self.b = a, b
        self.calls = []

    def condition(self, image):
        return Condition(image=image, extras={"mean": image.mean()})

    def encode(self, rgb):
        return rgb * 2 - 1

    def decode(self, x0):
        return (x0 + 1) / 2

    def eps(self, x_t, t, cond, rel):
        """The prediction written out (the tests' independent reference)."""
        e = self.a * x_t + self.b * (t.to(x_t.dtype) / self.num_train_timesteps).view(-1, 1, 1, 1)
        if cond is not None:
            e = e + cond.extras["mean"] + (rel[:, 0] + rel[:, 1]).to(x_t.dtype).view(-1, 1, 1, 1)
        return e

    def predict_noise(self, x_t, t, cond, rel):
        self.calls.append(cond is not None)
        return self.eps(x_t, t, cond, rel)


class OraclePrior(ToyPrior):
    """Knows the answer: ε̂ = (x_t − sqrt(ᾱ_t) x_target) / sqrt(1 − ᾱ_t), x_target = encode(target image)."""

    def __init__(self, target, **kw):
        super().__init__(resolution=target.shape[-1], **kw)
        self.x_target = self.encode(target)

    def eps(self, x_t, t, cond, rel):
        a = self.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * self.x_target.to(x_t.dtype)) / (1 - a).sqrt()


class NaNPrior(ToyPrior):
    def eps(self, x_t, t, cond, rel):
        return torch.full_like(x_t, float("nan"))
