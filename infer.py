#!/usr/bin/env python
"""Image -> textured mesh (+ turntable video): ``python infer.py examples/duck.png``. The command lives in
lrm/infer.py (also installed as ``lrm-infer``); ``python infer.py --help`` lists every option."""
import sys

from lrm.infer import *  # noqa: F401,F403 (the command's functions, for scripts that import infer)
from lrm.infer import main

if __name__ == "__main__":
    sys.exit(main())
