"""Web demo: upload an image -> preprocessed input -> interactive 3D viewer, turntable, timings, downloads.

    python -m lrm.app [--port 7860] [--checkpoints checkpoints] [--mc-resolution 65] [--video-frames 12]
    lrm-app                                   # the same, as a console script (pip install -e ".[app]")

A Gradio page on http://127.0.0.1:7860 (localhost only, no share link, analytics off, nothing fetched from
outside: the viewer's JS and the fonts are served by gradio itself). It runs the pipeline exactly as infer.py
does (``Pipeline.run`` then ``lrm.outputs.write_result``); each checkpoint is loaded once and kept; runs go
through gradio's queue one at a time. The options shown are the pipeline's own (``Pipeline.user_options``),
so new stages appear here when the pipeline offers them. Bad input gives one error line in the page.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no calls home

from .checkpoint import DEFAULT_CHECKPOINT, CheckpointError, is_checkpoint_dir  # noqa: E402
from .preprocess import InputError  # noqa: E402

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
DOWNLOADS = ("glb", "obj", "ply", "triplane")  # download buttons, in page order
TITLE = "lrm: image to 3D"


def list_checkpoints(root: Path) -> Dict[str, Path]:
    """Checkpoint folders (config.yaml + model.safetensors) directly under ``root``, by folder name."""
    root = Path(root)
    found = sorted(p for p in root.iterdir() if is_checkpoint_dir(p)) if root.is_dir() else []
    return {p.name: p for p in sorted(found, key=lambda p: p.name != "default")}


def list_examples(folder: Path = EXAMPLES_DIR) -> List[str]:
    exts = {".png", ".jpg", ".jpeg", ".webp"}
    return sorted(str(p) for p in Path(folder).glob("*") if p.suffix.lower() in exts) if Path(folder).is_dir() else []


def error_line(e: BaseException) -> str:
    """One readable line for the page: the pipeline's own message for bad input, the type for anything else."""
    if isinstance(e, (InputError, CheckpointError)):
        return f"error: {e}"
    return f"error: {type(e).__name__}: {e}"


class PipelineCache:
    """One loaded pipeline per checkpoint folder, shared by every request."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._pipes: Dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, folder: Path):
        from .pipeline import Pipeline

        key = str(Path(folder).resolve())
        with self._lock:
            if key not in self._pipes:
                t = time.perf_counter()
                self._pipes[key] = Pipeline.from_pretrained(folder, device=self.device)
                log.info("loaded %s in %.2fs", folder, time.perf_counter() - t)
            return self._pipes[key]


def coerce(option, value):
    """A widget's value as the option's type (sliders give floats, dropdowns may give strings)."""
    if value is None or value == "":
        return None
    return value_type(option)(value)


def integer(value) -> int:
    return int(float(value))  # sliders send 4.0


def value_type(option):
    """int / float / bool / str converter for an option's values (a choice: its choices' type)."""
    kind = type(option.choices[0]).__name__ if option.kind == "choice" and option.choices else option.kind
    return {"int": integer, "float": float, "bool": bool}.get(kind, str)


@dataclass
class Outcome:
    """What one run shows in the page; ``status`` starts with "error:" when it failed."""
    status: str
    model: Optional[str] = None  # GLB for the 3D viewer
    video: Optional[str] = None
    timings: str = ""
    downloads: Dict[str, Optional[str]] = field(default_factory=dict)

    def as_outputs(self) -> tuple:
        return (self.status, self.model, self.video, self.timings) + tuple(self.downloads.get(k) for k in DOWNLOADS)


def timings_table(timings: Dict[str, float], mesh) -> str:
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in timings.items())
    total = sum(timings.values())
    return (f"| stage | seconds |\n|---|---|\n{rows}\n| **total** | **{total:.2f}** |\n\n"
            f"{len(mesh.faces)} faces, {len(mesh.vertices)} vertices")


def bundle(files: Sequence[Path]) -> Path:
    """A single file to download: the file itself, or a zip of a multi-file format (OBJ + MTL + texture)."""
    if len(files) == 1:
        return files[0]
    import zipfile

    out = files[0].with_name(f"{files[0].stem}_{files[0].suffix[1:]}.zip")
    with zipfile.ZipFile(out, "w") as z:
        for f in files:
            z.write(f, f.name)
    return out


class DemoApp:
    """The page's logic without the widgets: ``preview`` and ``run`` are what gradio calls."""

    def __init__(self, checkpoints_dir: Path = DEFAULT_CHECKPOINT.parent, device: str = "cpu",
                 out_dir: Optional[Path] = None, defaults: Optional[dict] = None):
        self.checkpoints = list_checkpoints(checkpoints_dir)
        if not self.checkpoints:
            raise CheckpointError(f"no checkpoint folders (config.yaml + model.safetensors) under {checkpoints_dir}")
        self.default_checkpoint = next(iter(self.checkpoints))
        self.cache = PipelineCache(device)
        self.out_root = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="lrm-app-"))
        self.options = self._options(defaults or {})

    def _options(self, defaults: dict) -> list:
        from dataclasses import replace

        opts = self.pipeline(self.default_checkpoint).user_options()
        return [replace(o, default=defaults[o.name]) if defaults.get(o.name) is not None else o for o in opts]

    def pipeline(self, checkpoint: Optional[str]):
        folder = self.checkpoints.get(checkpoint or self.default_checkpoint)
        if folder is None:
            raise InputError(f"unknown checkpoint {checkpoint!r} (one of {', '.join(self.checkpoints)})")
        return self.cache.get(folder)

    # ------------------------------------------------------------------ events
    def preview(self, image: Optional[str], checkpoint: Optional[str] = None) -> Tuple[object, str]:
        """The model input (cut-out, cropped, composited) for an upload, before running."""
        if not image:
            return None, ""
        try:
            pre = self.pipeline(checkpoint).preprocess(image)
        except Exception as e:  # noqa: BLE001 - shown as one line in the page
            return None, error_line(e)
        return pre.image, f"ready: foreground from {pre.mask_source}; press Reconstruct"

    def run(self, image: Optional[str], checkpoint: Optional[str], *values,
            progress: Optional[Callable] = None) -> tuple:
        """The Reconstruct button: (status, glb, video, timings, glb, obj, ply, triplane) for the page."""
        try:
            return self.reconstruct(image, checkpoint, dict(zip((o.name for o in self.options), values)),
                                    progress).as_outputs()
        except Exception as e:  # noqa: BLE001 - the page gets one line, the log the traceback
            if not isinstance(e, (InputError, CheckpointError)):
                log.exception("reconstruction failed")
            return Outcome(error_line(e)).as_outputs()

    def reconstruct(self, image: Optional[str], checkpoint: Optional[str], values: dict,
                    progress: Optional[Callable] = None) -> Outcome:
        from .outputs import MESH_FORMATS, require_surface, write_result

        if not image:
            raise InputError("no image: upload one or pick an example")
        settings = {o.name: coerce(o, values.get(o.name, o.default)) for o in self.options}
        at_init = {o.name: settings[o.name] for o in self.options if o.applies == "init"}
        at_run = {o.name: settings[o.name] for o in self.options if o.applies == "run"}
        pipe = self.pipeline(checkpoint).with_options(**at_init)
        result = pipe.run(image, progress=stage_reporter(progress), **at_run)
        require_surface(result, Path(image).name)
        t = time.perf_counter()
        out = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_root))
        files = write_result(result, out, MESH_FORMATS, radius=pipe.cfg.model.render.radius,
                             mesh_name=Path(image).stem or "mesh")
        result.timings["export"] = time.perf_counter() - t
        video = files.get("video", [None])[0]
        return Outcome(status=f"done: {Path(image).name} -> {len(result.mesh.faces)} faces",
                       model=str(files["glb"][0]), video=str(video) if video else None,
                       timings=timings_table(result.timings, result.mesh),
                       downloads={k: str(bundle(files[k])) for k in DOWNLOADS})


def stage_reporter(progress: Optional[Callable]) -> Optional[Callable]:
    """Pipeline progress (stage, fraction) -> gradio's ``progress(fraction, desc=...)``."""
    if progress is None:
        return None
    return lambda stage, done: progress(done, desc=stage)


# ---------------------------------------------------------------------- the page
def option_widget(gr, option):
    info = f"{option.help} ({option.flag})" if option.flag else option.help
    common = dict(label=option.label, info=info, value=option.default)
    if option.kind == "choice":
        choices = list(option.choices)
        if option.default is not None and option.default not in choices:
            choices.append(option.default)
        return gr.Dropdown(choices=choices, **common)
    if option.kind == "bool":
        return gr.Checkbox(**common)
    if option.kind == "int" and option.minimum is not None and option.maximum is not None:
        return gr.Slider(minimum=option.minimum, maximum=option.maximum, step=option.step or 1, **common)
    return gr.Number(precision=0 if option.kind == "int" else None, **common)


def download_widgets(gr) -> list:
    """One file box with a download link per output, two to a row."""
    labels = {"glb": "GLB", "obj": "OBJ", "ply": "PLY", "triplane": "triplane (safetensors)"}
    widgets = []
    for i in range(0, len(DOWNLOADS), 2):
        with gr.Row():
            widgets += [gr.File(label=labels[k], interactive=False, elem_id=f"download-{k}")
                        for k in DOWNLOADS[i:i + 2]]
    return widgets


def build_ui(app: DemoApp):
    import gradio as gr

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nUpload an object photo (RGBA, or on a plain background) or pick an example, "
                    "check the preprocessed input, then **Reconstruct**.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="input image", type="filepath", image_mode=None, sources=["upload"],
                                 elem_id="input-image")
                preview = gr.Image(label="model input (cut-out, crop)", interactive=False, elem_id="preview")
                checkpoint = gr.Dropdown(choices=list(app.checkpoints), value=app.default_checkpoint,
                                         label="checkpoint", info="folders under checkpoints/ (--checkpoint)")
                with gr.Accordion("options", open=False):
                    widgets = [option_widget(gr, o) for o in app.options]
                run = gr.Button("Reconstruct", variant="primary", elem_id="run")
                status = gr.Markdown(elem_id="status")
                if list_examples():
                    gr.Examples(examples=[[p] for p in list_examples()], inputs=[image], label="examples")
            with gr.Column(scale=2):
                viewer = gr.Model3D(label="3D model (GLB)", clear_color=(1.0, 1.0, 1.0, 1.0), height=420,
                                    elem_id="viewer")
                with gr.Row():
                    video = gr.Video(label="turntable", autoplay=True, loop=True, interactive=False, height=260,
                                     elem_id="video")
                    timings = gr.Markdown(elem_id="timings")
                downloads = download_widgets(gr)
        image.change(app.preview, [image, checkpoint], [preview, status], queue=False, api_name="preview")
        checkpoint.change(app.preview, [image, checkpoint], [preview, status], queue=False, api_visibility="private")

        def on_run(img, ckpt, *values, progress=gr.Progress()):
            return app.run(img, ckpt, *values, progress=progress)

        run.click(on_run, [image, checkpoint, *widgets], [status, viewer, video, timings, *downloads],
                  concurrency_limit=1, api_name="reconstruct")
    return demo.queue(max_size=32, default_concurrency_limit=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--checkpoints", default=str(DEFAULT_CHECKPOINT.parent), help="folder of checkpoint folders")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--out", default=None, help="where run outputs are written (default: a temporary folder)")
    from .pipeline import USER_OPTIONS

    for o in USER_OPTIONS:  # initial values of the page's options, as infer.py's flags
        if o.flag and o.kind != "bool":
            p.add_argument(o.flag, dest=o.name, default=None, type=value_type(o), help=f"initial {o.label}")
    return p.parse_args(argv)


def launch(app: DemoApp, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page; with ``block=False`` returns the running Blocks (``.close()`` stops it)."""
    demo = build_ui(app)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                ssr_mode=False, prevent_thread_lock=not block, allowed_paths=[str(app.out_root)], quiet=not block)
    return demo


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('error: the web demo needs gradio: pip install -e ".[app]"', file=sys.stderr)
        return 2
    from .pipeline import USER_OPTIONS

    defaults = {o.name: getattr(args, o.name, None) for o in USER_OPTIONS}
    try:
        app = DemoApp(Path(args.checkpoints), args.device, args.out, defaults)
    except (InputError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"lrm web demo on http://{args.host}:{args.port} (Ctrl+C to stop)")
    launch(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
