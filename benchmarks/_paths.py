"""Imported first by every benchmark script: run as ``python benchmarks/<name>.py``, a script
puts this folder first on the import path, where ``platform.py`` would shadow the standard
library's ``platform`` module (imported by numpy, torch...). Take the folder off the path."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
