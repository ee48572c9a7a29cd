"""lrm: an image-to-3D Large Reconstruction Model (triplane NeRF), trainer, inference and evaluation."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: importing lrm must stay cheap (no torch import until needed)
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    if name in ("LRM", "build_model"):
        from . import models

        return getattr(models, name)
    raise AttributeError(name)
