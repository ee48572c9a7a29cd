from .lrm import LRM, build_model

__all__ = ["LRM", "build_model"]
