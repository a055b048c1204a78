"""Imported first by every benchmark script: run as ``python benchmarks/<name>.py``, a script
puts this folder first on the import path, where ``platform.py`` would shadow the standard
library's ``platform`` module (imported by numpy, torch...). Take the folder off the path;
:func:`sibling` loads the scripts' helper modules (``_fuzz.py``, ``_child.py``) from it."""

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def sibling(name: str):
    """The module ``benchmarks/<name>.py``, loaded from its file (once per process)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]
