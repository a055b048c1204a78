"""Images as surveys deliver them: pixels without data, and a noise that varies across the
image. probcat (the shipped LSST-i weights) and SEP on the same images, one run.

- **A masked strip.** Held-out 98×98 LSST-i scenes (test-split galaxies of the default
  prior) with a 10-px wide strip of pixels masked (``mask=``; SEP given the same mask):
  false detections within 6 px of the strip's edges, and recall (SNR > 3) of the sources
  outside it, against the same scenes without a mask.
- **A varying noise.** 256×256 images whose left half is 1.5 times noisier (as a coadd is
  where fewer visits overlap), written as LSST image files (``IMAGE``, ``VARIANCE``), with
  a grid of 32 stars per half at the same local signal-to-noise: recall and false
  detections per half, probcat reading the file (the noise map from ``VARIANCE``) against
  probcat given one noise sigma (the variance's median), and SEP given that one sigma
  against SEP on the image scaled to the local noise (as SExtractor's weight map does).

Writes ``benchmarks/results/missing_data.json`` and ``missing_data.png``.

    .venv/bin/python benchmarks/missing_data.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (first: keeps benchmarks/ off the import path)
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
STRIP = (44, 54)  # the masked columns [44, 54)
NEAR_PX = 6.0  # a false detection this close to the strip's edges is the strip's
SIZE, STARS_PER_HALF, NOISIER = 256, 32, 1.5
MATCH_PX, FALSE_PX = 1.5, 3.0  # a star found: a detection within 1.5 px; false: none in 3


def strip_experiment(det, n_scenes: int, seed: int) -> dict:
    from probcat.baselines.sep import sep_detect
    from probcat.metrics.detection import match
    from probcat.simulate.bank import BankConfig, SourceBank
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    sigma = float(det.survey.noise_sigma[0])
    bank = SourceBank.load_or_build(det.survey, BankConfig(split="test", n_galaxies=4000))
    sim = SceneSimulator(bank, SceneConfig(98, 98))
    rng = np.random.default_rng([seed, 1])
    scenes = [sim.sample(rng) for _ in range(n_scenes)]
    imgs = [s.image.astype(np.float32) for s in scenes]
    lo, hi = STRIP
    mask = np.zeros(imgs[0].shape[-2:], bool)
    mask[:, lo:hi] = True
    out = {}
    for masked in (False, True):
        for who in ("probcat", "sep"):
            if who == "probcat":
                m = [mask] * n_scenes if masked else None
                cats = det.catalog(imgs, background="none", mask=m)
            else:
                cats = [sep_detect(im, sigma, mask=mask if masked else None) for im in imgs]
            near_false = tp = nt = 0
            for s, c in zip(scenes, cats):
                tx, ty = np.asarray(s.catalog["x"]), np.asarray(s.catalog["y"])
                cx, cy = np.asarray(c["x"]), np.asarray(c["y"])
                outside = (cx < lo - 0.5) | (cx > hi - 0.5)
                cx, cy = cx[outside], cy[outside]
                _, j = match(np.stack([tx, ty], 1), np.stack([cx, cy], 1))
                matched = np.zeros(len(cx), bool)
                matched[j] = True
                edge = np.minimum(np.abs(cx - (lo - 0.5)), np.abs(cx - (hi - 0.5))) < NEAR_PX
                near_false += int((~matched & edge).sum())
                keep = ((tx < lo - 0.5) | (tx > hi - 0.5)) & (
                    np.asarray(s.catalog["snr"])[:, 0] > 3
                )
                i2, _ = match(np.stack([tx, ty], 1)[keep], np.stack([cx, cy], 1))
                tp += len(i2)
                nt += int(keep.sum())
            key = f"{who}_{'masked' if masked else 'no_mask'}"
            out[key] = {"false_near_strip": near_false, "recall_outside": tp / max(nt, 1)}
    return {"n_scenes": n_scenes, "strip_columns": list(STRIP), **out}


def _star(img, x, y, flux, fwhm=3.7):
    s = fwhm / 2.3548
    r = 12
    x0, y0 = int(round(x)), int(round(y))
    ys, xs = slice(max(y0 - r, 0), y0 + r + 1), slice(max(x0 - r, 0), x0 + r + 1)
    yy, xx = np.mgrid[ys, xs]
    img[ys, xs] += (
        flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)
    )


def noise_experiment(det, n_images: int, seed: int, star_snr_flux: float, folder: Path):
    from astropy.io import fits

    from probcat.baselines.sep import sep_detect
    from probcat.io import read_image

    sigma = float(det.survey.noise_sigma[0])
    tally: dict = {}
    example = None
    for k in range(n_images):
        rng = np.random.default_rng([seed, 2, k])
        noise = np.full((SIZE, SIZE), sigma)
        noise[:, : SIZE // 2] *= NOISIER
        img = noise * rng.standard_normal((SIZE, SIZE))
        pos = []
        for gx in range(4):
            for gy in range(STARS_PER_HALF // 4):
                x, y = 16 + gx * 30 + rng.uniform(-3, 3), 16 + gy * 30 + rng.uniform(-3, 3)
                for half in (0, 1):  # 0: the noisy (left) half
                    xx = x + half * SIZE // 2
                    _star(img, xx, y, star_snr_flux * noise[int(y), int(xx)])
                    pos.append((xx, y, half))
        pos = np.array(pos)
        path = folder / f"coadd_{k}.fits"
        hdus = [fits.PrimaryHDU(), fits.ImageHDU(img.astype(np.float32), name="IMAGE"),
                fits.ImageHDU((noise**2).astype(np.float32), name="VARIANCE")]  # fmt: skip
        fits.HDUList(hdus).writeto(path, overwrite=True)
        data = read_image(path)
        s = float(data.noise_sigma[0])
        cats = {
            "probcat_noise_map": det.catalog(data, background="none"),
            "probcat_one_sigma": det.catalog(data.image, background="none", noise_sigma=s),
            "sep_one_sigma": sep_detect(data.image, s),
            "sep_noise_map": sep_detect(data.image * (sigma / noise), sigma),
        }
        if example is None:
            example = (data.image[0], {k: (c["x"], c["y"]) for k, c in cats.items()}, pos)
        for name, c in cats.items():
            cx, cy = np.asarray(c["x"]), np.asarray(c["y"])
            d = np.hypot(cx[:, None] - pos[:, 0], cy[:, None] - pos[:, 1])
            found = d.min(0, initial=np.inf) < MATCH_PX
            false = d.min(1, initial=np.inf) > FALSE_PX
            for half, label in ((0, "noisy"), (1, "quiet")):
                t = tally.setdefault(name, {}).setdefault(label, [0, 0, 0])
                t[0] += int(found[pos[:, 2] == half].sum())
                t[1] += int((pos[:, 2] == half).sum())
                side = cx < SIZE // 2 if half == 0 else cx >= SIZE // 2
                t[2] += int((false & side).sum())
    res = {
        name: {
            label: {"recall": v[0] / v[1], "false_detections": v[2], "stars": v[1]}
            for label, v in halves.items()
        }
        for name, halves in tally.items()
    }
    return {"n_images": n_images, "size": SIZE, "noisier": NOISIER,
            "star_flux_over_local_sigma": star_snr_flux, **res}, example  # fmt: skip


def figure(example, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, dets, pos = example
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    lim = np.percentile(img, [1, 99.5])
    panels = ((axes[0], "probcat_one_sigma", "probcat, one noise sigma"),
              (axes[1], "probcat_noise_map", "probcat, the VARIANCE noise map"))  # fmt: skip
    for ax, key, title in panels:
        ax.imshow(img, origin="lower", cmap="gray_r", vmin=lim[0], vmax=lim[1])
        ax.scatter(pos[:, 0], pos[:, 1], s=60, facecolors="none", edgecolors="C2", label="stars")
        x, y = dets[key]
        ax.scatter(x, y, s=12, c="C3", marker="x", label="detections")
        ax.axvline(SIZE / 2 - 0.5, color="C0", lw=0.8)
        ax.set_title(title)
        ax.text(4, SIZE - 12, f"noise {NOISIER}x", color="C0", backgroundcolor="w")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from probcat.api import load
    from probcat.catalog import atomic_write
    from probcat.provenance import provenance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=300, help="98-px scenes, masked strip")
    ap.add_argument("--images", type=int, default=10, help="256-px images, varying noise")
    ap.add_argument("--star-flux", type=float, nargs="+", default=[25.0, 40.0],
                    help="stars' fluxes in units of the local noise sigma (PSF SNR about "
                         "flux / 5.6)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/missing_data.py", *(argv or sys.argv[1:])])
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    det = load("detection_lsst_i", threads=2, kind="detection")
    out = {"command": command, "weights": "detection_lsst_i"}
    out["masked_strip"] = strip_experiment(det, args.scenes, args.seed)
    out["varying_noise"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for flux in args.star_flux:
            res, example = noise_experiment(det, args.images, args.seed, flux, Path(tmp))
            out["varying_noise"][f"flux_{flux:g}"] = res
            if flux == args.star_flux[0]:
                first = example
    args.out.mkdir(parents=True, exist_ok=True)
    figure(first, args.out / "missing_data.png")
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out.update({k: v for k, v in provenance(command).items() if k != "command"})
    text = json.dumps(out, indent=1, default=float)
    atomic_write(args.out / "missing_data.json", lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
