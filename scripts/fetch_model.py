#!/usr/bin/env python3
"""Download GPT-2 checkpoints into models/ on a host that can reach the hub.

    .venv/bin/python scripts/fetch_model.py gpt2 gpt2-medium
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fanout.tools.fetch_model import main

if __name__ == "__main__":
    raise SystemExit(main())
