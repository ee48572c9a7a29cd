"""The default renderer (moderngl/EGL): see lrm/data/render_gl.py."""
from lrm.data.render_gl import get_context, gl_matrices, mesh_arrays, render_mesh  # noqa: F401
