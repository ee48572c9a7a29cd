from .volume import VolumeRenderer, composite, near_far, sample_pdf, uniform_samples

__all__ = ["VolumeRenderer", "composite", "near_far", "sample_pdf", "uniform_samples"]
