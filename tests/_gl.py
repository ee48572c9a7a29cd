"""Shared test helper: whether a headless EGL/OpenGL context (the dataset renderer's) can be created here."""


def gl_ok() -> bool:
    try:
        from lrm.data.render_gl import get_context

        get_context()
        return True
    except Exception:  # noqa: BLE001
        return False
