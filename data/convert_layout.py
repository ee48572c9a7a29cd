#!/usr/bin/env python
"""Convert shards <-> the "one folder per object: rgba/NNN.png + pose/NNN.npy" layout (lrm/data/layout.py).

    python data/convert_layout.py to-folders   data/shards/default /tmp/dump [--convention c2w_opengl]
    python data/convert_layout.py from-folders /path/to/dump data/shards/imported [--convention ...] [--fov 40]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrm.conventions import CANONICAL_FOV_DEG  # noqa: E402
from lrm.data.layout import CONVENTIONS, folders_to_shards, shards_to_folders  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("direction", choices=["to-folders", "from-folders"])
p.add_argument("src")
p.add_argument("dst")
p.add_argument("--convention", default="c2w_opengl", choices=CONVENTIONS)
p.add_argument("--fov", type=float, default=CANONICAL_FOV_DEG, help="vertical FoV when a folder has no intrinsics.npy")
p.add_argument("--scale", type=float, default=1.0, help="multiply camera positions (dump units -> ours)")
p.add_argument("--split", default=None)
a = p.parse_args()
if a.direction == "to-folders":
    print(shards_to_folders(a.src, a.dst, a.convention, a.split), "objects written")
else:
    m = folders_to_shards(a.src, a.dst, a.convention, a.fov, a.scale)
    print(m["counts"], "skipped:", len(m["skipped"]))
