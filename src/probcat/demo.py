"""``probcat demo``: simulate an LSST-i field and show what is in it.

Later capabilities (detection, SEP comparison) extend this; today it writes the image
(FITS with WCS), its truth catalog and a PNG overview.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from probcat.catalog import make_wcs
from probcat.io import write_image
from probcat.plots import field_overview
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.datasets import FIELD_CENTER, _check_writable, _write_yaml
from probcat.simulate.scene import SceneConfig, SceneSimulator
from probcat.survey import Survey

__all__ = ["run_demo"]


def run_demo(out: str | Path, *, size: int = 1000, seed: int = 0, bank_size: int = 5000,
             cache_dir=None, command: str | None = None) -> dict:
    from probcat.errors import ProbcatValueError
    from probcat.provenance import provenance

    if size < 16:
        raise ProbcatValueError(f"demo field size must be >= 16 px, got {size}")
    out = Path(out)
    _check_writable(out)
    t0 = time.perf_counter()
    survey = Survey.lsst(bands="i")
    bank_cfg = BankConfig(split="test", n_galaxies=bank_size)
    bank = SourceBank.load_or_build(survey, bank_cfg, cache_dir=cache_dir)
    t_bank = time.perf_counter() - t0
    sim = SceneSimulator(bank, SceneConfig(size, size))
    scene = sim.sample(np.random.default_rng([seed, 0]))
    wcs = make_wcs((size, size), survey.pixel_scale, *FIELD_CENTER)
    image_path = write_image(out / "field.fits", scene.image, survey, wcs,
                             header={"SEED": seed, "RECIPE": "demo"})
    truth_path = scene.catalog.write(out / "truth.fits", wcs=wcs)
    png = field_overview(out / "overview.png", scene.image[0], survey.noise_sigma[0],
                         scene.catalog, title=f"probcat demo: LSST-i 10-yr field {size}x{size} px")
    cat = scene.catalog
    gal = cat["galaxy"].astype(bool)
    snr = cat["snr"][:, 0]
    area = (size * survey.pixel_scale / 60) ** 2
    _write_yaml(out / "config.yaml", {"demo": {"size": size, "seed": seed},
                                      "bank": bank_cfg.__dict__, "survey": survey.to_dict(),
                                      **provenance(command)})
    lines = [
        f"field: {size}x{size} px LSST i, 10-year depth (noise sigma {survey.noise_sigma[0]:.1f} e-)",
        f"truth: {gal.sum()} galaxies ({gal.sum() / area:.0f} arcmin^-2), {(~gal).sum()} stars; "
        f"{(snr > 5).sum()} sources with SNR > 5",
        f"blended (blendedness > 0.1): {(cat['blendedness'][:, 0] > 0.1).sum()}",
        f"wrote {image_path}, {truth_path}, {png}",
        f"time: {time.perf_counter() - t0:.1f} s (source bank {t_bank:.1f} s, cached for next runs)",
    ]
    return {"lines": lines, "n_galaxies": int(gal.sum()), "n_stars": int((~gal).sum())}
