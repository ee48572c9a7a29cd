"""Only ``build_eval.py`` is left here (being folded into lrm/evaluate/evalset.py); the dataset builder, mesh
sources and renderers live in the package: ``lrm.data.build`` (``lrm-build-data``), ``lrm.data.sources``."""
