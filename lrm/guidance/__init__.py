"""Guidance for optimising 3D scenes through their renders (SDS): see base.py for the interface."""
from .base import GUIDANCES, Guidance, Reference, coerce_config, make_guidance, register_guidance
from .sds import SDSConfig, SDSGuidance, predict_cfg, sample_timesteps, sds_loss, t_range

__all__ = ["GUIDANCES", "Guidance", "Reference", "coerce_config", "make_guidance", "register_guidance",
           "SDSConfig", "SDSGuidance", "predict_cfg", "sample_timesteps", "sds_loss", "t_range"]
