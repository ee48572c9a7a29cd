"""The shipped checkpoint's pipeline and the triplane of examples/duck.png, as infer.py makes it."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "checkpoints" / "default"


def duck_triplane(**options):
    """(pipeline, preprocessed image, triplane) for examples/duck.png with the pipeline's own preprocessing."""
    from lrm.pipeline import Pipeline
    from lrm.preprocess import preprocess

    pipe = Pipeline.from_pretrained(str(CKPT), **options)
    o = pipe.opts
    pre = preprocess(str(ROOT / "examples" / "duck.png"), o["input_size"], None, o["foreground_ratio"],
                     tuple(o["input_background"]))
    return pipe, pre.image, pipe.triplane(pre.image)
