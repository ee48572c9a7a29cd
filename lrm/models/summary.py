"""Print a config's parameter counts per stage without allocating weights (meta device).

    python -m lrm.models.summary tiny small base large [key=value ...]
"""
from __future__ import annotations

import sys

from ..config import load_config
from .lrm import build_model


def summary_rows(names, overrides=()):
    rows = []
    for name in names:
        cfg = load_config(name, overrides)
        model = build_model(cfg, meta=True)
        c = model.parameter_counts()
        m = cfg.model
        planes = f"3x{m.upsampler.channels}x{m.transformer.plane_tokens * m.upsampler.kernel}^2"
        rows.append((cfg.name, c, planes))
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [a for a in argv if "=" not in a] or ["tiny", "small", "base", "large"]
    overrides = [a for a in argv if "=" in a]
    try:
        rows = summary_rows(names, overrides)
    except Exception as e:  # noqa: BLE001 - one clear line for any bad config
        print(f"error: {e}", file=sys.stderr)
        return 2
    stages = ["encoder", "camera_embed", "lift", "transformer", "upsampler", "pixel_plane", "decoder", "total"]
    print(f"| config | {' | '.join(stages)} | triplane |")
    print("|" + "---|" * (len(stages) + 2))
    for name, c, planes in rows:
        print(f"| {name} | " + " | ".join(f"{c[s] / 1e6:.2f} M" for s in stages) + f" | {planes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
