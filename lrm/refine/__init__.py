"""Refinement of LRM triplanes (and optimisation from scratch) with reference-view losses and SDS: loop.py (the
optimisation), io.py (infer.py folders in, refined folders out), __main__.py (``python -m lrm.refine``)."""
from .io import (DEFAULT_PRIOR, default_target, load_prior, read_output_dir, refine_to_folder, refined_result,
                 write_refined)
from .loop import (MODES, RefineConfig, RefineError, RefineResult, check_triplane, evaluate_reference,
                   expected_triplane_shape, refine, render_views, scratch_triplane, with_decoder)

__all__ = ["DEFAULT_PRIOR", "MODES", "RefineConfig", "RefineError", "RefineResult", "check_triplane",
           "default_target", "evaluate_reference", "expected_triplane_shape", "load_prior", "read_output_dir",
           "refine", "refine_to_folder", "refined_result", "render_views", "scratch_triplane", "with_decoder",
           "write_refined"]
