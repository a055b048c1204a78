"""Correlated noise, as in a coadd of resampled visits: probcat's weights (the default
ones, trained on white noise, and the coadd weights, trained on a mix of white and coadd
noise) and SEP on the same simulated fields, one run; LSST i (``correlated_noise``) or
ugrizy (``--bands ugrizy``: ``correlated_noise_ugrizy``, DC2 colours, SEP on the riz coadd).

Each held-out 400×400 LSST field (test-split galaxies) is made as a coadd is, band by
band: ``--visits`` exposures, each the field shifted by a random sub-pixel offset
(exactly, in Fourier space) plus white noise, resampled back onto the common grid and
averaged; by a cubic spline (``coadd``: a kernel the coadd weights never saw) and by the
Lanczos-3 kernel of the Rubin pipelines and SWarp (``coadd_lanczos3``: one of the two the
coadd weights were trained with, on other galaxies and seeds). The same coadded signal is
also given white noise of the coadd's pixel noise sigma (``white``). Every image is read
with its pixel sigma: precision, recall (true i-band SNR > 3), F1, false detections per
Mpx, precision at prob ≥ 0.9, detection ECE, and the noise correlation probcat measures
(:func:`probcat.background.noise_correlation`, on which it warns above 0.08). In i, also
the coverage of isolated galaxies' own aperture fluxes by the deblender's errors. In
ugrizy, also the photo-z PDFs (``photoz_lsst_ugrizy``) of the gold galaxies (i < 25.3) at
their true positions: as probcat reads them (at the aperture noise where the noise is
correlated) and at the pixel sigma, with the same signal given white noise of the
survey's sigma as the reference (the pixel sigma of a coadd is lower: white noise of that
sigma is a deeper image).

Writes ``benchmarks/results/<name>.json`` and ``<name>.png``.

    .venv/bin/python benchmarks/correlated_noise.py
    .venv/bin/python benchmarks/correlated_noise.py --bands ugrizy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 400


def resample_back(img: np.ndarray, d) -> np.ndarray:
    """``img`` resampled onto the grid it was shifted off by ``-d``: a cubic spline."""
    from scipy.ndimage import shift

    return shift(img, d, order=3, mode="wrap")


def coadd(noiseless: np.ndarray, sigma: float, visits: int, rng, kernel="cubic") -> tuple:
    """The coadded signal and noise of ``visits`` exposures of ``noiseless`` (each of noise
    ``sigma`` x sqrt(visits), so that a plain sum would have ``sigma``), resampled back by a
    cubic spline (``"cubic"``) or by :func:`probcat.simulate.noise.resampled`'s kernels."""
    from scipy.ndimage import fourier_shift

    from probcat.simulate.noise import resampled

    def back(img, d):
        return resample_back(img, d) if kernel == "cubic" else resampled(img, -d[0], -d[1], kernel)

    signal = np.zeros(noiseless.shape)
    noise = np.zeros(noiseless.shape)
    ft = np.fft.fft2(noiseless)
    for _ in range(visits):
        d = rng.uniform(-0.5, 0.5, 2)
        exposure = np.fft.ifft2(fourier_shift(ft, -d)).real
        signal += back(exposure, d)
        noise += back(sigma * np.sqrt(visits) * rng.standard_normal(noiseless.shape), d)
    return signal / visits, noise / visits


def score(cat, truth, band: int = 0) -> dict:
    from probcat.metrics.detection import match

    txy = np.stack([np.asarray(truth["x"]), np.asarray(truth["y"])], 1)
    exy = np.stack([np.asarray(cat["x"]), np.asarray(cat["y"])], 1)
    i, j = match(txy, exy)
    real = np.zeros(len(exy), bool)
    real[j] = True
    bright = np.asarray(truth["snr"])[:, band] > 3
    found = np.zeros(len(txy), bool)
    found[i] = True
    out = {
        "n_detections": len(exy),
        "n_real": int(real.sum()),
        "n_true_snr_gt_3": int(bright.sum()),
        "n_found_snr_gt_3": int((found & bright).sum()),
    }
    if "prob_raw" in cat.colnames:  # probcat's calibrated probabilities
        hi = np.asarray(cat["prob"]) >= 0.9
        out.update(n_at_0_9=int(hi.sum()), n_real_at_0_9=int((real & hi).sum()))
        out.update(prob=np.asarray(cat["prob"], float), real=real)
    return out


def summary(counts: list[dict], area_mpx: float) -> dict:
    from probcat.metrics.calibration import expected_calibration_error

    arrays = {k: np.concatenate([c.pop(k) for c in counts]) for k in ("prob", "real")
              if k in counts[0]}  # fmt: skip
    tot = {k: sum(c[k] for c in counts) for k in counts[0]}
    p = tot["n_real"] / max(tot["n_detections"], 1)
    r = tot["n_found_snr_gt_3"] / max(tot["n_true_snr_gt_3"], 1)
    out = {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
           "false_per_mpx": (tot["n_detections"] - tot["n_real"]) / area_mpx, **tot}  # fmt: skip
    if "n_at_0_9" in tot:
        out["precision_at_0_9"] = tot["n_real_at_0_9"] / max(tot["n_at_0_9"], 1)
        out["detection_ece"] = expected_calibration_error(arrays["prob"], arrays["real"])
    return out


NOISES = ("white", "coadd", "coadd_lanczos3")
NOISE_TITLES = {
    "white": "white noise",
    "coadd": "coadd, cubic spline",
    "coadd_lanczos3": "coadd, Lanczos-3",
}


PHOTOZ_READS = {  # the figure's names of the photo-z reads
    "white_survey_sigma": "white,\nsurvey sigma",
    "white": "white,\npixel sigma",
    "coadd": "cubic coadd,\nas read",
    "coadd_pixel_sigma": "cubic coadd,\npixel sigma",
    "coadd_lanczos3": "Lanczos-3,\nas read",
    "coadd_lanczos3_pixel_sigma": "Lanczos-3,\npixel sigma",
}


def label(weights: str) -> str:
    """The result keys' prefix of ``weights``: ``probcat`` for the default ones,
    ``probcat_coadd_weights`` for those trained on coadd noise."""
    return "probcat_coadd_weights" if weights.endswith("_coadd") else "probcat"


def isolated(truth) -> np.ndarray:
    """The isolated galaxies of a scene's truth: blendedness < 0.05, SNR 5-200, 6 px or more
    inside the image."""
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    snr = np.asarray(truth["snr"])[:, 0]
    iso = (np.asarray(truth["blendedness"])[:, 0] < 0.05) & (snr > 5) & (snr < 200)
    return (
        iso & np.asarray(truth["galaxy"]) & (np.minimum(x, y) > 6) & (np.maximum(x, y) < SIZE - 7)
    )


def neighbour_light(sim, scene) -> np.ndarray:
    """Per isolated galaxy of ``scene`` (:func:`isolated`), the other sources' noiseless
    light in its 5-px aperture (band 0): the scene's minus its own (each galaxy composed
    alone)."""
    from probcat.measure import aperture_sums

    t = scene.catalog
    idx = np.flatnonzero(isolated(t))
    x, y = np.asarray(t["x"])[idx], np.asarray(t["y"])[idx]

    def ap(img, k):
        return aperture_sums(img, x[k], y[k], 5.0)[0][0]

    scene_light = aperture_sums(scene.noiseless[0], x, y, 5.0)[0]
    own = np.array([ap(sim.compose(t.select(np.array([i])))[0], k) for k, i in enumerate(idx)])
    return scene_light - own


def flux_pulls(deb, img, s, signal, truth, others) -> dict:
    """Pulls of the aperture fluxes of the isolated galaxies (:func:`isolated`) measured by
    the deblender at their true positions (every true source given), against each one's
    own light: the aperture flux of the noiseless ``signal`` there less ``others``
    (:func:`neighbour_light`, of the signal before any resampling), in units of
    ``flux_ap_err`` (which assumes independent pixel noise)."""
    from probcat.catalog import FullCatalog
    from probcat.measure import aperture_sums

    cat = FullCatalog({k: np.asarray(truth[k]) for k in ("x", "y", "galaxy")}, img.shape, ("i",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the correlated-noise warning, measured here
        got = deb.measure(img[None], cat, noise_sigma=s, background="none").catalog
    iso = isolated(truth)
    x, y = np.asarray(truth["x"])[iso], np.asarray(truth["y"])[iso]
    true = aperture_sums(signal, x, y, 5.0)[0] - others
    err = np.asarray(got["flux_ap_err"])[iso, 0]
    factor = (got.meta["deblend"].get("aperture_noise_factor") or [1.0])[0]
    d = np.asarray(got["flux_ap"])[iso, 0] - true
    return {"pull": d / err, "pull_independent_pixels": d * factor / err, "factor": [factor]}


def photoz_summary(pdfs: list, z: list) -> dict:
    """The photo-z metrics of the benchmark (paper 002's, as in ``benchmarks/photoz.py``)
    of grid PDFs against true redshifts."""
    from probcat.redshift.metrics import all_metrics

    got = all_metrics(np.concatenate(pdfs), np.concatenate(z))
    keys = ("n", "bias", "sigma_iqr", "outlier_frac", "outlier_frac_015", "ks", "cde_loss",
            "pit_coverage_68", "pit_coverage_95")  # fmt: skip
    return {k: got[k] for k in keys}


def coverage(pulls: dict) -> dict:
    out = {
        "n_galaxies": int(len(pulls["pull"])),
        "aperture_noise_factor_median": float(np.median(pulls["factor"])),
    }
    for key, tag in (("pull", ""), ("pull_independent_pixels", "_independent_pixels")):
        p = np.abs(np.asarray(pulls[key]))
        out[f"coverage_68{tag}"] = float(np.mean(p <= 1.0))
        out[f"coverage_95{tag}"] = float(np.mean(p <= 1.96))
        out[f"pull_sd_68{tag}"] = float(np.percentile(p, 68.27))
    return out


def photoz_field(est, images: dict, signal, sigma, truth, ib: int, rng, pz: dict) -> None:
    """The photo-z PDFs of one field's gold galaxies (true i < 25.3) at their true
    positions, added to ``pz``: each image of ``images`` read as probcat reads it and at its
    pixel sigma, and ``signal`` with white noise of the survey's ``sigma`` (drawn last from
    ``rng``: the other images are those of a run without photo-z)."""
    from probcat.redshift.pdf import GRID, truncated_pdf
    from probcat.simulate.prior import MAG_GOLD

    gold = np.asarray(truth["galaxy"], bool) & (np.asarray(truth["mag"])[:, ib] < MAG_GOLD)
    x, y = np.asarray(truth["x"])[gold], np.asarray(truth["y"])[gold]
    z = np.asarray(truth["redshift"], np.float64)[gold]
    survey = (signal + sigma[:, None, None] * rng.standard_normal(signal.shape)).astype(np.float32)
    reads = {"white_survey_sigma": (survey, sigma, False)}
    for key, (img, s) in images.items():
        reads[key] = (img, s, True)
        if key != "white":
            reads[f"{key}_pixel_sigma"] = (img, s, False)
    for key, (img, s, as_probcat) in reads.items():
        if as_probcat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the correlated-noise warning, measured here
                w, m, sd = est.mixture(img, x, y, noise_sigma=s)
        else:
            w, m, sd = est._mixture((img / s[:, None, None]).astype(np.float32), x, y)
        got = pz.setdefault(key, {"pdf": [], "z": []})
        got["pdf"].append(truncated_pdf(w, m, sd, GRID))
        got["z"].append(z)


def figure(example: dict, res: dict, who: list[str], path: Path, photoz=None) -> None:
    """The white and cubic-coadd images, the false detections of each detector per noise
    and, with ``photoz`` (the ``photoz`` results), the PDFs' interval coverage per read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 4 if photoz else 3
    fig, ax = plt.subplots(1, n, figsize=(14 + 5 * (n - 3), 4.2),
                           gridspec_kw={"width_ratios": [1, 1, 1.5, 1.6][:n]})  # fmt: skip
    for a, key in ((ax[0], "white"), (ax[1], "coadd")):
        a.imshow(example[key][100:200, 100:200], origin="lower", cmap="gray_r", vmin=-2, vmax=4)
        a.set_title(f"{NOISE_TITLES[key]} (100 px; noise_correlation {example[key + '_nc']:.2f})")
        a.set_xticks([])
        a.set_yticks([])
    x = np.arange(len(who))
    width = 0.8 / len(NOISES)
    for k, noise in enumerate(NOISES):
        vals = [res[f"{w}_{noise}"]["false_per_mpx"] for w in who]
        ax[2].bar(x + width * (k - 1), vals, width, color=f"C{k}", label=NOISE_TITLES[noise])
    ax[2].set_xticks(
        x, [w.replace("_weights", "\nweights").replace("probcat_", "probcat ") for w in who]
    )
    ax[2].set_ylabel("false detections per Mpx")
    ax[2].legend()
    ax[2].set_title("same signal, same pixel sigma")
    if photoz:
        reads = [k for k in photoz if k != "weights"]
        x = np.arange(len(reads))
        for k, (level, nominal) in enumerate((("68", 0.6827), ("95", 0.9545))):
            vals = [photoz[r][f"pit_coverage_{level}"] for r in reads]
            ax[3].bar(x + 0.4 * (k - 0.5), vals, 0.4, color=f"C{k}", label=f"{level}% interval")
            ax[3].axhline(nominal, color=f"C{k}", ls="--", lw=1)
        ax[3].set_xticks(x, [PHOTOZ_READS.get(r, r) for r in reads], fontsize=7)
        ax[3].set_ylim(0.5, 1.0)
        ax[3].set_ylabel("fraction of true z inside")
        ax[3].legend(loc="lower right", fontsize=8)
        ax[3].set_title("photo-z PDFs (gold galaxies): coverage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import load
    from probcat.baselines.sep import riz_coadd, sep_detect
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance
    from probcat.simulate.bank import BankConfig, SourceBank
    from probcat.simulate.scene import SceneConfig, SceneSimulator
    from probcat.weights import names as available

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bands", choices=("i", "ugrizy"), default="i")
    ap.add_argument("--fields", type=int, default=16, help="400-px fields")
    ap.add_argument("--visits", type=int, default=6, help="exposures per coadd, per band")
    ap.add_argument("--seed", type=int, default=20261204)
    ap.add_argument("--weights", default=None, help="comma-separated registered names "
                    "(default: the bands' shipped weights and their coadd weights)")  # fmt: skip
    ap.add_argument("--photoz", default="photoz_lsst_ugrizy",
                    help="photo-z weights of the ugrizy run ('none': no photo-z)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/correlated_noise.py",
                        *(argv or sys.argv[1:])])  # fmt: skip
    name = "correlated_noise" + ("" if args.bands == "i" else f"_{args.bands}")
    base = f"detection_lsst_{args.bands}"
    names = args.weights.split(",") if args.weights else [
        base, *([base + "_coadd"] if base + "_coadd" in available() else [])]  # fmt: skip
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    dets = {label(n): load(n, threads=2, kind="detection") for n in names}
    survey = next(iter(dets.values())).survey
    bands = tuple(survey.band_names)
    ib = bands.index("i")
    one = len(bands) == 1  # the i band alone: SEP on it, and the deblender's flux errors
    deb = load("deblender_lsst_i", threads=2, kind="deblender") if one else None
    est = None if one or args.photoz == "none" else load(args.photoz, threads=2, kind="photoz")
    if est is not None and est.bands != bands:
        sys.exit(f"the photo-z weights' bands {''.join(est.bands)} are not {''.join(bands)}")
    pz: dict = {}  # photo-z: per way of reading, the PDFs and true redshifts
    pulls: dict = {k: {"pull": [], "pull_independent_pixels": [], "factor": []} for k in NOISES}
    sigma = survey.noise_sigma.astype(np.float64)
    population = {} if one else {"population": "dc2"}  # six bands: DC2 colours
    bank = SourceBank.load_or_build(survey, BankConfig(split="test", n_galaxies=5000, **population))
    sim = SceneSimulator(bank, SceneConfig(SIZE, SIZE))
    counts: dict = {}
    nc: dict = {k: [] for k in NOISES}
    example = None
    for f in range(args.fields):
        rng = np.random.default_rng([args.seed, f])
        scene = sim.sample(rng, keep_noiseless=True)
        others = neighbour_light(sim, scene) if deb is not None else None
        truth = scene.noiseless.astype(np.float64)
        cubic = [coadd(truth[b], sigma[b], args.visits, rng) for b in range(len(bands))]
        pix = np.array([np.std(n) for _, n in cubic])  # each coadd's pixel noise sigma
        signal = np.stack([sg for sg, _ in cubic])
        white = signal + pix[:, None, None] * rng.standard_normal(signal.shape)
        lanczos = [
            coadd(truth[b], sigma[b], args.visits, rng, "lanczos3") for b in range(len(bands))
        ]
        signal_l = np.stack([sg for sg, _ in lanczos])
        images = {
            "white": (white.astype(np.float32), pix),
            "coadd": (np.stack([sg + n for sg, n in cubic]).astype(np.float32), pix),
            "coadd_lanczos3": (np.stack([sg + n for sg, n in lanczos]).astype(np.float32),
                               np.array([np.std(n) for _, n in lanczos])),
        }  # fmt: skip
        for key, (img, s) in images.items():
            for who, det in dets.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the correlated-noise warning, measured here
                    cat = det.catalog(img, noise_sigma=s, background="none")
                if who == "probcat":
                    nc[key].append(cat.meta["input"]["noise_correlation"][ib])
                counts.setdefault(f"{who}_{key}", []).append(score(cat, scene.catalog, ib))
            # SEP: on the image (one band) or on the riz coadd in noise-sigma units
            det_img, det_sigma = (
                (img[0], float(s[0])) if one else (riz_coadd(img / s[:, None, None], bands), 1.0)
            )
            counts.setdefault(f"sep_{key}", []).append(
                score(sep_detect(det_img, det_sigma), scene.catalog, ib)
            )
            if deb is not None:
                sig = signal_l[0] if key == "coadd_lanczos3" else signal[0]
                got = flux_pulls(deb, img[0], float(s[0]), sig, scene.catalog, others)
                for k, v in got.items():
                    pulls[key][k].extend(v)
        if est is not None:
            photoz_field(est, images, signal, sigma, scene.catalog, ib, rng, pz)
        if example is None:
            example = {k: v[ib] / s[ib] for k, (v, s) in images.items()}
            example.update({f"{k}_nc": nc[k][0] for k in NOISES})
    area = args.fields * SIZE * SIZE / 1e6
    res = {k: summary(v, area) for k, v in counts.items()}
    who = [*dets, "sep"]
    coadd_det = dets.get("probcat_coadd_weights")
    out = {
        "command": command,
        "bands": "".join(bands),
        "weights": names,
        "result_keys": {label(n): n for n in names},
        "weights_sha256": {who: (det.manifest or {}).get("sha256") for who, det in dets.items()},
        # the coadd weights' own key, by which scripts/ship_weights.py records these numbers
        "coadd_weights_sha256": coadd_det.manifest.get("sha256") if coadd_det else None,
        "fields": args.fields,
        "field_size": SIZE,
        "visits": args.visits,
        "seed": args.seed,
        "held_out": f"test-split galaxies of the {'default' if one else 'dc2'} prior; seed "
        "other than training's; the cubic-spline coadd's kernel is not among the coadd "
        "weights' training kernels",
        "noise_correlation": {
            k: {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v))}
            for k, v in nc.items()
        },  # fmt: skip
        **res,
        **({"flux_error_coverage": {k: coverage(v) for k, v in pulls.items()}} if one else {}),
        **(
            {
                "photoz": {
                    "weights": args.photoz,
                    **{k: photoz_summary(v["pdf"], v["z"]) for k, v in pz.items()},
                }
            }
            if pz
            else {}
        ),
        "ratios": {
            f"{w}_false_{k}_over_white": res[f"{w}_{k}"]["false_per_mpx"]
            / max(res[f"{w}_white"]["false_per_mpx"], 1e-12)
            for w in who
            for k in NOISES[1:]
        },
        "definitions": {
            "precision, recall, f1": "MAP catalogue at threshold 0.5 (SEP: its catalogue; "
            "six bands: on the riz coadd), Hungarian matches within 2 px; precision over all "
            "detections, recall over true sources with SNR > 3 in i",
            "false_per_mpx": "unmatched detections per million pixels",
            "flux_error_coverage": "isolated galaxies (blendedness < 0.05, true SNR 5-200), "
            "deblended aperture flux (deblender_lsst_i, conserve, 5 px) at the true positions "
            "of all true sources: fraction within 1 / 1.96 flux_ap_err of the galaxy's own "
            "light in the aperture (the noiseless coadd's aperture flux less the other "
            "sources' light there); pull_sd_68: the 68th percentile of |pull| (1 if the "
            "errors are right); _independent_pixels: the pulls times the image's "
            "aperture_noise_factor (which Deblender.measure applies to the pixel-noise term "
            "where noise_correlation > 0.08): the errors as they were without it, for "
            "isolated galaxies whose error is the pixel noise's",
            "photoz": "PDFs of the gold galaxies (true i < 25.3) at their true positions, "
            "each image read as probcat.photoz reads it (PhotozEstimator.mixture with the "
            "image's pixel sigma: at the aperture noise where the noise is correlated; "
            "<noise>) and at the pixel sigma (<noise>_pixel_sigma; the same for white "
            "noise); white_survey_sigma: the same signal with white noise of the survey's "
            "sigma, read at it (the depth the weights were trained at). Metrics as in "
            "benchmarks/photoz.py: point estimate the PDF mode on 0-3 (301 points), "
            "outlier_frac |e_z| > max(3 sigma_IQR, 0.06), pit_coverage: true z inside the "
            "central 68% / 95% interval",
            "detection_ece": "expected calibration error of the MAP detections' calibrated "
            "prob against being matched (10 equal-width bins)",
            "noise_correlation": "probcat.background.noise_correlation of each image, i band "
            "(catalog meta input.noise_correlation)",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(example, res, who, args.out / f"{name}.png", out.get("photoz"))
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / f"{name}.json", lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
