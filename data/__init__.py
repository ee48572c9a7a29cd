"""Dataset building scripts (not part of the installed ``lrm`` package): mesh sources, renderers, builders.

Run from the repository root: ``python data/build.py ...``, ``python data/build_eval.py ...`` (docs/data.md).
"""
