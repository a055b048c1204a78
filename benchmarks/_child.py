"""A probcat CLI command in a fresh Python process, measured: wall time and peak RSS."""

from __future__ import annotations

import subprocess
import sys


def run_cli(args: list[str]) -> dict:
    """``probcat <args>`` through :func:`probcat.cli.main` in a child process: ``seconds``,
    ``peak_rss_mb`` (the child's own ``VmHWM``: ``ru_maxrss`` would inherit the parent's at
    fork) and ``exit_code``; ``error`` (the end of its output) when it printed no result."""
    code = (
        "import re, time; from probcat.cli import main; t = time.perf_counter(); "
        f"rc = main({list(args)!r}); "
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
        "print('RSS_MB', hwm / 1024, 'SECONDS', time.perf_counter() - t, 'RC', rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RSS_MB")]
    if not line:
        return {"error": (res.stderr or res.stdout)[-500:]}
    parts = line[0].split()
    return {"seconds": float(parts[3]), "peak_rss_mb": float(parts[1]), "exit_code": int(parts[5])}
