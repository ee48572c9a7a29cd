"""The numbers of docs/conventions.md, defined once (no torch import: lrm/config.py reads them).

They are the *defaults* of config values (``camera.distance``, ``camera.fov_deg``, ``model.render.radius``,
an evaluation protocol's ``distance`` / ``fov_deg`` / ``radius``) and the fallbacks of functions that take a
camera distance, FoV or cube radius; a config or protocol that sets its own value wins.
"""
#: distance of the canonical input camera from the origin (orbit camera at azimuth 0, elevation 0)
CANONICAL_DISTANCE = 2.0
#: vertical field of view of the canonical camera, degrees
CANONICAL_FOV_DEG = 40.0
#: a normalised object (longest side 1, centred) fits in [-0.5, 0.5]^3, whose corners lie at sqrt(3) / 2 = 0.8660:
#: the ball of this radius holds it under any rotation (3D-supervision points are drawn in it, lrm/data/points.py)
OBJECT_BALL_RADIUS = 0.866
#: the triplane covers [-R, R]^3, R = the ball's radius rounded up (``model.render.radius``'s default)
CUBE_RADIUS = 0.87
