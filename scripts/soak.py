#!/usr/bin/env python3
"""A bounded soak against real tiers, then the books. See fanout/soak.py, or --help.

    .venv/bin/python scripts/soak.py --clients 16 --duration 600 --json docs/soak.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fanout.tools.soak import main

if __name__ == "__main__":
    raise SystemExit(main())
