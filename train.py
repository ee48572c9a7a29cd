#!/usr/bin/env python
"""Train the LRM: ``python train.py --config configs/tiny.yaml [key=value ...]``, or under
``torchrun`` / ``accelerate launch`` unchanged. See docs/training.md."""
import sys

from lrm.training.trainer import main

if __name__ == "__main__":
    sys.exit(main())
