"""Training data: mesh handling, the GL renderer, webdataset shards and the training loader.

Public API (docs/data.md):

* :func:`make_loader` — webdataset training loader yielding the "Training batch" of docs/conventions.md.
* :func:`read_samples` — plain iteration over decoded objects of a shard set (eval / inspection).
* :mod:`lrm.data.render_gl` — ``render_mesh`` (moderngl/EGL RGBA + depth + normals, OpenCV cameras).
* :mod:`lrm.data.mesh` — loading, validation, normalisation.
"""
from __future__ import annotations


def __getattr__(name):  # lazy: keep ``import lrm.data`` cheap
    if name in ("make_loader", "read_samples", "LoaderConfig"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(name)
