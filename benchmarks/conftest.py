"""Benchmarks import their shared helpers from this folder (common.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
