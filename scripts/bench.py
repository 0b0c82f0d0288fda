#!/usr/bin/env python3
"""Benchmark fan-out against naive, batched and the in-process floor. See benchmarks/bench.py.

    .venv/bin/python scripts/bench.py --json docs/bench.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fanout.tools.bench.bench import main

if __name__ == "__main__":
    main()
