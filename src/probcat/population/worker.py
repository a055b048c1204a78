"""One of the two processes of the population chain's training
(:func:`probcat.population.chain.train_in_two_processes`):
``python -m probcat.population.worker SPEC``, where the JSON file ``SPEC`` holds the
chain's ``config``, the run folder ``out``, the ``part`` to train (``r3``: r3 for the map
and detections in ``out/workers/target.pkl``, with the pool, r2 and r4 read from the run;
``plain``: the plain NRE) and ``progress``.

Writes the seconds it took to ``out/workers/<part>_stages.json``; a probcat error (bad
input, a checkpoint of another config) goes to ``out/workers/<part>.error`` as one line,
with exit status 2."""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from probcat.catalog import atomic_write
    from probcat.config import from_dict
    from probcat.errors import ProbcatError
    from probcat.population.chain import Chain, PopulationConfig
    from probcat.runtime import threads_for

    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    out, part = Path(spec["out"]), spec["part"]
    work = out / "workers"
    t0 = time.perf_counter()
    try:
        cfg = from_dict(PopulationConfig, spec["config"])
        torch.set_num_threads(threads_for(cfg.threads, 0))
        chain = Chain(cfg, out, progress=spec["progress"])
        if part == "plain":
            chain.train_plain()
        else:
            target = pickle.loads((work / "target.pkl").read_bytes())  # the chain's own file
            chain.train_r2_r4(chain.pool())
            chain.train_r3(target["det"], target["x_o"])
    except ProbcatError as e:
        msg = str(e)
        atomic_write(work / f"{part}.error", lambda tmp: Path(tmp).write_text(msg))
        return 2
    except KeyboardInterrupt:  # Ctrl-C reaches the chain's process too, which says so
        return 130
    text = json.dumps(
        {"plain_nre" if part == "plain" else "r3": round(time.perf_counter() - t0, 1)}
    )
    atomic_write(work / f"{part}_stages.json", lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
