"""Renderers for dataset building.

* ``gl`` (default, CPU): moderngl on headless EGL — implemented in the package as
  :mod:`lrm.data.render_gl` so ``lrm.evaluate`` can import it; re-exported here.
* ``blender``: Cycles through the ``bpy`` pip package for Objaverse-grade PBR renders; same outputs and
  camera conventions (:mod:`data.render.blender`).
"""
from lrm.data.render_gl import render_mesh  # noqa: F401
