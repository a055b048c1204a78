"""``probcat demo``: simulate an LSST-i field (or take ``--image``), run the shipped
encoders and SEP, and write the image, the catalogs and PNG overviews.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from probcat.catalog import make_wcs, new_output_dir
from probcat.errors import ProbcatValueError
from probcat.io import write_image
from probcat.plots import field_overview
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.datasets import FIELD_CENTER
from probcat.simulate.scene import SceneConfig, SceneSimulator
from probcat.survey import Survey

__all__ = ["run_demo"]


MAX_SIZE = 8192  # px: a demo field's side (ugrizy: 1.6 GB of float32 planes)


def _check_field(size: int, seed: int) -> None:
    if size < 16:
        raise ProbcatValueError(f"demo field size must be >= 16 px, got {size}")
    if size > MAX_SIZE:  # before any bank is rendered for a field that cannot be held
        raise ProbcatValueError(
            f"demo field size must be <= {MAX_SIZE} px, got {size}: simulate a large field "
            "in pieces (probcat simulate), and detect on images of any size (probcat detect)"
        )
    if not 0 <= seed < 2**63:
        raise ProbcatValueError(f"seed must lie in [0, 2^63), got {seed}")


def _demo_bank(out: Path, image, survey, bank_cfg, cache_dir, progress):
    """The output folder checked (created) and, without an ``image``, the field's source
    bank; a bank refused (too large for memory) or interrupted leaves no new folder."""
    with new_output_dir(out):
        if image is None:
            return SourceBank.load_or_build(
                survey, bank_cfg, cache_dir=cache_dir, progress=progress
            )
    return None


def run_demo(
    out: str | Path,
    *,
    size: int = 1000,
    seed: int = 0,
    bank_size: int = 5000,
    cache_dir=None,
    command: str | None = None,
    image: str | Path | None = None,
    weights=None,
    deblender=None,
    progress: bool = True,
) -> dict:
    from probcat.api import detect
    from probcat.baselines.sep import sep_detect
    from probcat.io import read_image
    from probcat.metrics.detection import match
    from probcat.plots import detection_figure
    from probcat.provenance import provenance, write_record

    _check_field(size, seed)
    from probcat.api import DEFAULT_DEBLENDER, load

    load(weights, kind="detection")  # other weights: an error before the field is simulated
    dbl = load(deblender or DEFAULT_DEBLENDER, kind="deblender")
    out = Path(out)
    t0 = time.perf_counter()
    lines, truth = [], None
    survey = Survey.lsst(bands="i")
    bank_cfg = BankConfig(split="test", n_galaxies=bank_size)
    bank = _demo_bank(out, image, survey, bank_cfg, cache_dir, progress)
    if image is None:
        sim = SceneSimulator(bank, SceneConfig(size, size))
        scene = sim.sample(np.random.default_rng([seed, 0]))
        wcs = make_wcs((size, size), survey.pixel_scale, *FIELD_CENTER)
        image_path = write_image(
            out / "field.fits", scene.image, survey, wcs, header={"SEED": seed, "RECIPE": "demo"}
        )
        truth = scene.catalog
        truth.write(out / "truth.fits", wcs=wcs)
        field_overview(
            out / "overview.png",
            scene.image[0],
            survey.noise_sigma[0],
            truth,
            title=f"probcat demo: LSST-i 10-yr field {size}x{size} px (truth)",
        )
        gal = truth["galaxy"].astype(bool)
        area = (size * survey.pixel_scale / 60) ** 2
        lines.append(
            f"simulated: {size}x{size} px LSST i, 10-year depth; {gal.sum()} galaxies "
            f"({gal.sum() / area:.0f} arcmin^-2), {(~gal).sum()} stars, "
            f"{(truth['snr'][:, 0] > 5).sum()} with SNR > 5 ({time.perf_counter() - t0:.1f} s)"
        )
        config = {"demo": {"size": size, "seed": seed}, "bank": bank_cfg.__dict__}
    else:
        image_path = Path(image)
        config = {"demo": {"image": str(image_path)}}
    from probcat.weights import load_detection

    data = read_image(image_path)
    sigma = float(data.noise_sigma[0])
    if not np.isfinite(sigma):  # no NOISE keyword: the survey's, as probcat.detect assumes
        sigma = float(load_detection(weights)[1].noise_sigma[0])
    t1 = time.perf_counter()
    res = detect(data, weights=weights)
    t_probcat = time.perf_counter() - t1
    t1 = time.perf_counter()
    sep_cat = sep_detect(data.image, sigma, bands=data.bands[:1])
    t_sep = time.perf_counter() - t1
    from probcat.plots import deblend_figure

    t1 = time.perf_counter()
    deb = dbl.measure(data, res.catalog, noise_sigma=sigma)
    t_deblend = time.perf_counter() - t1
    deb.catalog.write(out / "probcat_catalog.fits", wcs=data.wcs)
    sep_cat.write(out / "sep_catalog.fits", wcs=data.wcs)
    n_gal = int(np.sum(res.catalog["galaxy"]))
    lines.append(
        f"probcat: {len(res.catalog)} detections ({n_gal} galaxies, "
        f"{len(res.catalog) - n_gal} stars) in {t_probcat:.2f} s; "
        f"SEP: {len(sep_cat)} detections in {t_sep:.2f} s; deblended and measured in "
        f"{t_deblend:.2f} s"
    )
    if truth is not None:
        xy = np.stack([truth["x"], truth["y"]], 1)
        for name, cat in (("probcat", res.catalog), ("SEP", sep_cat)):
            i, _ = match(xy, np.stack([cat["x"], cat["y"]], 1))
            snr = truth["snr"][:, 0]
            found = np.zeros(len(truth), bool)
            found[i] = True
            lines.append(
                f"  {name:8s} precision {len(i) / max(len(cat), 1):.3f}  "
                f"recall {found.mean():.3f} (SNR 3-10: {found[(snr >= 3) & (snr < 10)].mean():.3f})"
            )
    detection_figure(
        out / "detections.png",
        data.image[0],
        sigma,
        res.catalog,
        sep_cat,
        truth,
        title="truth | probcat (colour = detection probability) | SEP",
    )
    detection_figure(
        out / "detections_zoom.png",
        data.image[0],
        sigma,
        res.catalog,
        sep_cat,
        truth,
        title="central 200x200 px",
        zoom=200,
    )
    deblend_figure(
        out / "deblend.png",
        data.image[0],
        deb.model[0],
        sigma,
        res.catalog,
        title="probcat deblending, central 200x200 px: data | model | residual",
    )
    write_record(out / "config.yaml", {**config, **provenance(command)})
    lines.append(
        f"wrote {out}/: field.fits, truth.fits, probcat_catalog.fits, sep_catalog.fits, "
        f"overview.png, detections.png, detections_zoom.png, deblend.png"
        if truth is not None
        else f"wrote {out}/: probcat_catalog.fits, sep_catalog.fits, detections.png, deblend.png"
    )
    lines.append(f"total {time.perf_counter() - t0:.1f} s")
    return {"lines": lines, "n_detections": len(res.catalog), "n_sep": len(sep_cat)}


def run_photoz_demo(
    out: str | Path,
    *,
    size: int = 300,
    seed: int = 0,
    bank_size: int = 2000,
    cache_dir=None,
    command: str | None = None,
    image: str | Path | None = None,
    weights=None,
    photoz_weights=None,
    progress: bool = True,
) -> dict:
    """Simulate a ugrizy field (DC2 galaxies with true redshifts, test split) or take
    ``image``, detect and estimate photo-z PDFs, write the catalog, the qp file and
    ``photoz.png`` (RGB with labelled objects, as in paper 002 Fig. 11)."""
    from probcat.api import photoz
    from probcat.io import read_image
    from probcat.plots import photoz_figure
    from probcat.provenance import provenance, write_record
    from probcat.redshift.pdf import write_ensemble

    _check_field(size, seed)
    from probcat.api import DEFAULT_PHOTOZ, DEFAULT_PHOTOZ_DETECTOR, load

    load(weights or DEFAULT_PHOTOZ_DETECTOR, kind="detection")  # before the field is simulated
    load(photoz_weights or DEFAULT_PHOTOZ, kind="photoz")
    out = Path(out)
    t0 = time.perf_counter()
    lines, truth = [], None
    survey = Survey.lsst(bands="ugrizy")
    bank_cfg = BankConfig(population="dc2", split="test", n_galaxies=bank_size)
    bank = _demo_bank(out, image, survey, bank_cfg, cache_dir, progress)
    if image is None:
        scene = SceneSimulator(bank, SceneConfig(size, size)).sample(
            np.random.default_rng([seed, 0])
        )
        wcs = make_wcs((size, size), survey.pixel_scale, *FIELD_CENTER)
        image = write_image(
            out / "field_ugrizy.fits", scene.image, survey, wcs, header={"SEED": seed}
        )
        truth = scene.catalog
        truth.write(out / "truth.fits", wcs=wcs)
        lines.append(
            f"simulated: {size}x{size} px LSST ugrizy, 10-year depth, {int(truth['galaxy'].sum())}"
            f" DC2 galaxies with true redshifts, {int((~truth['galaxy']).sum())} stars "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        config = {
            "demo": {"size": size, "seed": seed, "bands": "ugrizy"},
            "bank": bank_cfg.__dict__,
        }
    else:
        config = {"demo": {"image": str(image), "bands": "ugrizy"}}
    data = read_image(image)
    t1 = time.perf_counter()
    res = photoz(data, estimator=photoz_weights, detector=weights, progress=progress)
    t_pz = time.perf_counter() - t1
    res.catalog.write(out / "photoz_catalog.fits", wcs=res.wcs)
    if res.ensemble is not None:
        write_ensemble(res.ensemble, out / "photoz_pz.hdf5")
    n_pz = int(res.catalog["has_pz"].sum())
    lines.append(
        f"probcat: {len(res.catalog)} detections, {n_pz} galaxies with photo-z PDFs in {t_pz:.2f} s"
    )
    if truth is not None:
        from probcat.metrics.detection import match
        from probcat.redshift.metrics import point_metrics

        c = res.catalog
        i, j = match(np.stack([truth["x"], truth["y"]], 1), np.stack([c["x"], c["y"]], 1))
        ok = np.asarray(truth["galaxy"], bool)[i] & np.asarray(c["has_pz"], bool)[j]
        ok &= np.asarray(truth["mag"])[i, 3] < 25.3
        if ok.any():
            m = point_metrics(np.asarray(c["z_mode"])[j[ok]], np.asarray(truth["redshift"])[i[ok]])
            lines.append(
                f"  {int(ok.sum())} matched gold galaxies: bias {m['bias']:+.4f}, "
                f"sigma_IQR {m['sigma_iqr']:.4f}, outliers {m['outlier_frac']:.3f}"
            )
    sigma = np.where(
        np.isfinite(data.noise_sigma),
        data.noise_sigma,
        Survey.lsst(bands="".join(data.bands)).noise_sigma,
    )
    xs = data.image / sigma[:, None, None]
    photoz_figure(
        out / "photoz.png", xs, tuple(data.bands), res.catalog, truth, title="probcat photo-z"
    )
    write_record(out / "config.yaml", {**config, **provenance(command)})
    lines.append(
        f"wrote {out}/: photoz_catalog.fits, photoz_pz.hdf5, photoz.png"
        + (", field_ugrizy.fits, truth.fits" if truth is not None else "")
    )
    lines.append(f"total {time.perf_counter() - t0:.1f} s")
    return {"lines": lines, "n_detections": len(res.catalog), "n_pz": n_pz}
