#!/usr/bin/env python3
"""Size a pool's worker count under a closed-loop load. See fanout/capacity.py, or --help.

    .venv/bin/python scripts/capacity.py --pool small --users 8 --slo-p95 2 --out capacity/
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fanout.tools.capacity import main

if __name__ == "__main__":
    raise SystemExit(main())
