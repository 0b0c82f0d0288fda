#!/usr/bin/env python3
"""Train one of the shipped models. See training/train.py, or run with --help.

    .venv/bin/python scripts/train_model.py small --export models/small
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.train import main

if __name__ == "__main__":
    main()
