#!/usr/bin/env python3
"""Evaluate a model folder on the held-out slice. See training/evaluate.py, or --help.

    .venv/bin/python scripts/eval_model.py models/small --json models/small/eval.json
    # and as a ctranslate2 pool serves it (int8), side by side: what eval.json ships
    .venv/bin/python scripts/eval_model.py models/small --engine both --json models/small/eval.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.evaluate import main

if __name__ == "__main__":
    main()
