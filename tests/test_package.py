"""The package: what ``import probcat`` loads, and the command line's entry."""

import subprocess
import sys


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_probcat_loads_no_heavy_dependency():
    code = (
        "import sys, probcat\n"
        "heavy = ('torch', 'galsim', 'astropy', 'sep', 'scipy', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert _run(code) == "[]"


def test_public_names_resolve_lazily():
    code = (
        "import sys, probcat\n"
        "f = probcat.detect\n"
        "print(callable(f), type(probcat.Survey).__name__, 'torch' in sys.modules)\n"
    )
    assert _run(code) == "True type False"  # torch loads when a model does


def test_cli_help_loads_no_heavy_dependency():
    code = (
        "import sys\n"
        "from probcat.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'galsim', 'astropy') if m in sys.modules))\n"
    )
    out = _run(code)
    assert out.endswith("[]") and "detect" in out and "simulate" in out


def test_detecting_loads_neither_scipy_stats_nor_optimize():
    # importing them cost 0.5 s and 0.2 s of every `probcat detect` (3.9 s -> 3.3 s)
    code = (
        "import sys, numpy as np, probcat\n"
        "yy, xx = np.mgrid[:64, :64]\n"
        "img = np.random.default_rng(0).normal(0, 1, (64, 64))\n"
        "for x, y in ((20, 30), (24, 31), (45, 12)):\n"
        "    img += 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4)\n"
        "res = probcat.detect(img, noise_sigma=1.0)\n"
        "slow = [m for m in ('scipy.stats', 'scipy.optimize') if m in sys.modules]\n"
        "print(len(res.catalog) > 0, slow)\n"
    )
    assert _run(code) == "True []"


def test_json_safe_makes_strict_json():
    import json

    import numpy as np

    from probcat.provenance import json_safe

    got = json_safe({"a": [np.float32(1.5), float("nan")], "b": (np.int64(3), np.inf), "c": "x"})
    assert got == {"a": [1.5, None], "b": [3, None], "c": "x"}
    json.dumps(got, allow_nan=False)


def test_reference_speed_runs_and_leaves_torch_state_alone():
    import math

    import torch

    from probcat.provenance import reference_speed_s

    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    t = reference_speed_s(size=16, runs=3)
    assert math.isfinite(t) and 0 < t < 60
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)  # its own generator


def test_provenance_records_the_versions_asked_for():
    from importlib import metadata

    from probcat.provenance import provenance

    rec = provenance("cmd", packages=("pyyaml", "no-such-distribution-xyz"))
    assert rec["command"] == "cmd"
    assert rec["versions"]["pyyaml"] == metadata.version("pyyaml")
    assert rec["versions"]["no-such-distribution-xyz"] is None
    assert rec["versions"]["numpy"] == metadata.version("numpy")
