"""Command line: a thin layer over the Python API.

Errors from probcat (bad arguments, unreadable files, unwritable outputs) print one line
``probcat: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import typer

from probcat.errors import ProbcatError, ProbcatFileError, ProbcatValueError
from probcat.measure import DEFAULT_METHOD

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="probcat: probabilistic catalogs from survey images.",
)


def _print_version(value: bool) -> None:
    if value:
        import platform

        import torch

        from probcat import __version__
        from probcat.runtime import choose_device, device_name

        print(f"probcat {__version__} (Python {platform.python_version()}, torch "
              f"{torch.__version__}, device {device_name(choose_device())})")  # fmt: skip
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="print probcat's version (and torch's, and the device it would use) and exit",
    ),
) -> None:
    """probcat: probabilistic catalogs from survey images."""


# images as users have them (probcat.background), the same for every command that reads one
BACKGROUND_OPTION = typer.Option(
    "auto",
    help="auto: subtract a smooth sky (sep.Background) when the image still has one, and "
    "say so in the catalog header; none: use the image as it is",
)
GAIN_OPTION = typer.Option(
    None, help="e-/ADU for an image in ADU (default: its GAIN keyword unless BUNIT=electron)"
)
SEEING_OPTION = typer.Option(
    "auto",
    help="star/galaxy classes at the image's seeing: auto (its PSF width measured on its "
    "bright stars; the survey's without enough of them), none (the weights' survey seeing) "
    "or RATIO (its PSF FWHM over the survey's)",
)
DEBLENDER_OPTION = typer.Option(None, help="deblender weights (default: deblender_lsst_i)")
RESCUE_BRIGHT_OPTION = typer.Option(
    True,
    "--rescue-bright/--no-rescue-bright",
    help="a detection for each bright object (SEP: SNR 50+, 100+ px) left without one, "
    "where the network spreads a lumpy galaxy's probability over several tiles "
    "(bright_rescue column; docs/robustness.md, Bright galaxies)",
)
REAL_SHAPES_OPTION = typer.Option(
    None,
    "--real-shapes",
    help="share of the image's galaxies unlike the prior's (real galaxies: 1; 0: like the "
    "training's), for the detection probabilities' calibration (default: the image's own "
    "detections measure it; docs/robustness.md, Evidence from many images)",
)
CUTOUT_OPTION = typer.Option(
    None,
    "--cutout",
    help="probability that the image is a survey cutout (sources beyond its edges: 1) "
    "rather than an isolated scene (0), for the same calibration (default: its own "
    "detections decide)",
)
NOISE_OPTION = typer.Option(
    "auto",
    help="background noise sigma per band: auto (the NOISE keywords, else the survey's, "
    "or the measured where the pixels' is over 5% off it), measured (the image's own pixel "
    "noise, sources masked) or VALUE[,VALUE...] in the image's units",
)
MASK_OPTION = typer.Option(
    None,
    "--mask",
    help="FITS mask of pixels without data, nonzero = masked, (H, W) or one plane per band "
    "(NaN and inf pixels are masked too; catalog column mask_fraction)",
)

WEIGHT_OPTION = typer.Option(
    None,
    "--weight",
    help="FITS weight map (by --weight-type; relative weights do): where the noise varies, "
    "detection reads each source against its local noise; 0 = no data",
)
WEIGHT_TYPE_OPTION = typer.Option(
    "weight",
    "--weight-type",
    help="what weight maps hold (--weight, or weight= in a file list), as SExtractor's "
    "WEIGHT_TYPE: weight (inverse variance, MAP_WEIGHT), variance (MAP_VAR) or rms (MAP_RMS)",
)
HDU_OPTION = typer.Option(
    None,
    "--hdu",
    help="the HDU to read (index or EXTNAME) of a file with several images, e.g. one CCD of "
    "a mosaic camera's file (default: the first image, with a warning naming the others)",
)
MASK_PLANES_OPTION = typer.Option(
    "NO_DATA,BAD",
    "--mask-planes",
    help="of an LSST image file (IMAGE, MASK, VARIANCE HDUs) or mask file: the mask planes "
    "read as no data (names of its MP_ keywords, comma-separated, e.g. NO_DATA,BAD,SAT,CR), "
    "or none",
)


def _planes_option(text: str) -> tuple[str, ...] | None:
    """``--mask-planes``: None for the default planes (skipped when a file lacks one), else
    the named planes (each must be in the file), ``()`` for none."""
    from probcat.masking import NO_DATA_PLANES

    names = tuple(p.strip().upper() for p in text.split(",") if p.strip())
    if names in ((), ("NONE",)):
        return ()
    if not all(n.replace("_", "").isalnum() for n in names):
        raise ProbcatValueError(f"--mask-planes: not a list of plane names: {text!r}")
    return None if names == NO_DATA_PLANES else names


def _mask_option(path, planes=None, hdu=None):
    """``--mask``: the mask of a FITS file (:func:`probcat.masking.read_mask`; at ``hdu``
    when it holds several images, as the image), or None."""
    if path is None:
        return None
    from probcat.masking import read_mask

    return read_mask(path, planes, hdu)


def _image_files(images) -> tuple[list, list[Path], str]:
    """The image arguments of ``detect`` and ``photoz``: ``(band, path)`` pairs (one file,
    or one per band: ``FILE`` or ``BAND=FILE``), their paths, and the stem of the default
    output names (one file's, or the files' name less the band, :func:`probcat.io.files_stem`:
    ``field`` of ``field_u.fits``, ``field_g.fits``..., ``calexp-HSC-9813`` of
    ``calexp-HSC-U-9813.fits``...; else their common start)."""
    from probcat.io import band_and_path, band_letter, band_of_file, files_stem, image_stem

    items = [band_and_path(str(p)) for p in images]
    paths = [Path(p) for _, p in items]
    stems = [image_stem(p) for p in paths]
    if len(stems) == 1:
        return items, paths, stems[0]
    bands = [band_letter(b) if b else (band_of_file(p) or (None,))[0] for b, p in items]
    if all(bands) and len(set(bands)) == len(bands):
        return items, paths, files_stem(dict(zip(bands, paths)))
    return items, paths, os.path.commonprefix(stems).rstrip("_-. ") or stems[0]


def _checked_seeing(value: str) -> str:
    """``--seeing``, normalised and checked before anything is loaded or run."""
    from probcat.api import seeing_option

    value = str(value).strip().lower()
    seeing_option(value)
    return value


def _numbers(value, option: str, words: str, positive: bool):
    """A comma-separated option's numbers: one, or a list of them (one per band); a
    one-line error naming ``option`` for anything else."""
    try:
        vals = [float(t) for t in str(value).split(",")]
    except ValueError:
        raise ProbcatValueError(f"{option} must be {words}, got {value!r}") from None
    if not all(math.isfinite(t) for t in vals) or (positive and min(vals) <= 0):
        raise ProbcatValueError(
            f"{option} values must be {'positive' if positive else 'finite'}, got {value!r}"
        )
    return vals[0] if len(vals) == 1 else vals


def _noise_option(value: str):
    """``--noise``: None (auto), ``"measured"`` or a list of floats."""
    v = str(value).strip().lower()
    if v == "auto":
        return None
    if v == "measured":
        return v
    return _numbers(v, "--noise", "auto, measured or numbers (one per band)", positive=True)


def _zeropoint_option(value):
    """``--zeropoint`` of ``probcat photoz``: None, one number or one per band."""
    if value is None:
        return None
    return _numbers(value, "--zeropoint", "a number or one per band (comma-separated)", False)


def _command_line() -> str:
    return " ".join(["probcat", *sys.argv[1:]])


@app.command()
def simulate(
    recipe: str = typer.Option("blend", help="blend, single, tiles, central or pair"),
    n: int = typer.Option(100, "-n", "--n", help="number of images"),
    seed: int = typer.Option(0, help="image seed (same seed, same files)"),
    out: Path = typer.Option(Path("simulated"), "--out", "-o", help="output directory"),
    bands: str = typer.Option("i", help="bands, e.g. i or ugrizy"),
    population: str = typer.Option(
        "parametric",
        help="parametric (bulge+disk), morphology (five families; morphology:sersic+clumpy for "
        "some), dc2 (DC2 colours and redshifts), cww (the DC2 galaxies with the colours of "
        "the CWW templates: a test of photo-z on colours unlike DC2's), dc2:morphology (with "
        "the five families' "
        "shapes), hdf (real galaxies of the Hubble Deep Field; needs scikit-image), "
        "morphology+hdf (the five families with a fifth of the galaxies real) or a "
        "FITS/Parquet catalog",
    ),
    split: str = typer.Option("train", help="train, val or test galaxies (disjoint)"),
    years: float = typer.Option(10.0, help="coadd depth in years"),
    bank_size: int = typer.Option(20000, help="galaxies rendered into the source bank"),
    noise: str = typer.Option("gaussian", help="gaussian (background-limited) or poisson"),
    size: int = typer.Option(0, help="image side in pixels (0: the recipe's size)"),
    seeing: float = typer.Option(
        1.0, help="atmospheric PSF FWHM over the survey's (0.79 arcsec in LSST i)"
    ),
    psf_beta: float = typer.Option(
        None,
        help="a Moffat atmosphere of this index (e.g. 2.5-4.8) and the same FWHM "
        "instead of the Kolmogorov one the shipped weights learned",
    ),  # fmt: skip
    cache_dir: Path = typer.Option(None, help="source bank cache (default ~/.cache/probcat)"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace a dataset written in OUT with other settings"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Simulate a dataset: FITS images with WCS, truth.fits and config.yaml in OUT. A rerun
    with the same settings resumes an interrupted run (or extends it to a larger -n)."""
    from probcat.simulate.datasets import SimulationConfig, write_dataset

    cfg = SimulationConfig(
        recipe=recipe,
        n=n,
        seed=seed,
        bands=bands,
        population=population,
        split=split,
        years=years,
        bank_size=bank_size,
        noise=noise,
        size=size,
        seeing=seeing,
        psf_beta=psf_beta,
    )
    summary = write_dataset(
        cfg,
        out,
        cache_dir=cache_dir,
        progress=not quiet,
        command=_command_line(),
        overwrite=overwrite,
    )
    typer.echo(
        f"wrote {summary['images']} {recipe} images, {summary['sources']} sources "
        f"({summary['galaxies']} galaxies) to {out}"
    )


@app.command()
def demo(
    out: Path = typer.Option(Path("probcat_demo"), "--out", "-o", help="output directory"),
    size: int = typer.Option(None, help="field side in pixels (default 1000; 300 for ugrizy)"),
    seed: int = typer.Option(0, help="field seed"),
    bank_size: int = typer.Option(
        None, help="galaxies rendered into the source bank (default 5000; 2000 for ugrizy)"
    ),
    cache_dir: Path = typer.Option(None, help="source bank cache (default ~/.cache/probcat)"),
    image: Path = typer.Option(None, help="run on this FITS image instead of a simulated field"),
    weights: str = typer.Option(
        None,
        help="detection weights, a registered name or a file (default: detection_lsst_i, "
        "or detection_lsst_ugrizy with --bands ugrizy)",
    ),
    deblender: str = DEBLENDER_OPTION,
    bands: str = typer.Option(
        "i", help="i: detection and deblending demo; ugrizy: photo-z demo (RGB with labels)"
    ),
    photoz_weights: str = typer.Option(
        None, help="photo-z weights for --bands ugrizy (default: photoz_lsst_ugrizy)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Simulate an LSST field, run probcat (and SEP), write catalogs and PNG overviews:
    detection and deblending in i, or photo-z PDFs with --bands ugrizy."""
    from probcat.demo import run_demo, run_photoz_demo

    if bands not in ("i", "ugrizy"):
        raise ProbcatValueError(f"--bands must be i or ugrizy, got {bands!r}")
    if bands == "ugrizy":
        if deblender is not None:
            raise ProbcatValueError("--deblender applies to the i-band demo only")
        summary = run_photoz_demo(
            out,
            size=size or 300,
            seed=seed,
            bank_size=bank_size or 2000,
            cache_dir=cache_dir,
            command=_command_line(),
            image=image,
            weights=weights,
            photoz_weights=photoz_weights,
            progress=not quiet,
        )
    elif photoz_weights is not None:
        raise ProbcatValueError("--photoz-weights needs --bands ugrizy")
    else:
        summary = run_demo(
            out,
            size=size or 1000,
            seed=seed,
            bank_size=bank_size or 5000,
            cache_dir=cache_dir,
            command=_command_line(),
            image=image,
            weights=weights,
            deblender=deblender,
            progress=not quiet,
        )
    for line in summary["lines"]:
        typer.echo(line)


def _threads_option(value: str) -> str | int:
    """``--threads``: ``auto`` or a positive integer."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ProbcatValueError(f"--threads must be 'auto' or an integer >= 1, got {value!r}")
    return n  # its upper bound: threads_for, where every setting is checked


def _density_note(rec: dict) -> str:
    """The detection line's note of an image read at another source density than the
    prior's (:mod:`probcat.infer.density`; the posterior mean, or for older records the
    likeliest calibrated factor), or ""."""
    if not rec.get("applied"):
        return ""
    f = float(rec.get("mean_factor", rec.get("factor", 1.0)))
    if abs(f - 1.0) < 0.05:
        return ""
    note = f"; source density read as {0 if f < 0.005 else f:.2g} times the prior's"
    if rec.get("dropped"):
        note += f", {rec['dropped']} detections it puts below the threshold left out"
    return note + " (docs/robustness.md, Source density)"


def _stacked_samples(samples: list) -> tuple:
    """Posterior samples as one catalogue (a ``sample`` column), its ``density`` record
    counting the sources thinned from all of them, and the detection line's note of it."""
    from dataclasses import replace

    from probcat.catalog import concat_catalogs

    stacked = concat_catalogs(samples, "sample")
    rec = stacked.meta.get("density") or {}
    if not rec.get("applied"):
        return stacked, ""
    n = sum(s.meta["density"]["thinned"] for s in samples)
    stacked = replace(stacked, meta={**stacked.meta, "density": {**rec, "thinned": n}})
    return stacked, "" if rec.get("factor") == 1.0 else f" (thinned to that density: {n} left out)"


@app.command("detect")
def detect_cmd(
    images: list[Path] = typer.Argument(
        ...,
        help="FITS image (electrons, background-subtracted), or one file per band: FILE or "
        "BAND=FILE each (the band from the header's BAND or FILTER unless given)",
        metavar="IMAGE...",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="catalog (.fits, .parquet or .ecsv)"),
    threshold: float = typer.Option(0.5, help="detection probability threshold (MAP catalog)"),
    samples: int = typer.Option(
        None,
        help="posterior catalog samples, written to <out>_samples (default 0; 100 with "
        "--deblend, for the flux posteriors)",
    ),
    plot: Path = typer.Option(None, help="PNG of the image with detections by probability"),
    regions: Path = typer.Option(
        None, help="DS9 region file (.reg) of the detections: galaxies green, stars cyan"
    ),
    weights: str = typer.Option(None, help="registered weights name or file (default: LSST-i)"),
    deblend: bool = typer.Option(
        False,
        "--deblend",
        help="deblend and measure every source (aperture flux posterior, magnitude, size, "
        "ellipticity); model and residual images to <out>_model.fits, <out>_residual.fits",
    ),
    deblender: str = DEBLENDER_OPTION,
    method: str = typer.Option(
        DEFAULT_METHOD,
        help="deblended light: conserve (the data shared in proportion to the models; sums "
        "to the data) or subtract (the data minus the other sources' models, paper 000's)",
    ),
    zeropoint: float = typer.Option(
        None,
        help="AB magnitude of a flux of 1 in the image's units: the image's depth, for the "
        "detection probabilities' calibration, and with --deblend mag_ap (default: a "
        "flux-density BUNIT such as nJy, else the MAGZERO, MAGZP, PHOTZP or FLUXMAG0 "
        "keyword, else for electrons the survey's zeropoint, at an unknown depth)",
    ),
    seed: int = typer.Option(0, help="seed of the posterior samples"),
    background: str = BACKGROUND_OPTION,
    gain: float = GAIN_OPTION,
    noise: str = NOISE_OPTION,
    seeing: str = SEEING_OPTION,
    rescue_bright: bool = RESCUE_BRIGHT_OPTION,
    real_shapes: float = REAL_SHAPES_OPTION,
    cutout: float = CUTOUT_OPTION,
    mask: Path = MASK_OPTION,
    mask_planes: str = MASK_PLANES_OPTION,
    weight: Path = WEIGHT_OPTION,
    weight_type: str = WEIGHT_TYPE_OPTION,
    hdu: str = HDU_OPTION,
    threads: str = typer.Option(
        "auto", help="CPU threads: auto (1 for small images, else one per idle core) or N"
    ),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: a GPU when present)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Probabilistic detection and star/galaxy classification of a FITS image."""
    import numpy as np

    from probcat.api import load

    items, paths, stem = _image_files(images)
    seeing = _checked_seeing(seeing)
    planes = _planes_option(mask_planes)
    evidence = _evidence_options(real_shapes, cutout)
    from probcat.io import check_planes_found, check_weight_type, read_files

    check_weight_type(weight_type, "--weight-type")  # before any work
    if samples is None:
        samples = 100 if deblend else 0
    if deblend:
        from probcat.infer.deblend import check_method

        check_method(method)  # before loading weights and running detection
    if zeropoint is not None:
        from probcat.background import per_band_array

        per_band_array(zeropoint, 1, "--zeropoint", positive=False)
    det = load(weights, device=device, threads=_threads_option(threads), kind="detection")
    dbl = None
    if deblend:
        from probcat.api import DEFAULT_DEBLENDER

        dbl = load(deblender or DEFAULT_DEBLENDER, device=device,
                   threads=_threads_option(threads), kind="deblender")  # fmt: skip
    elif deblender is not None:
        raise ProbcatValueError("--deblender needs --deblend")
    from probcat.catalog import TABLE_SUFFIXES, check_outputs

    out = out or paths[0].with_name(stem + "_catalog.fits")
    table_suffix = TABLE_SUFFIXES
    outputs = {out: table_suffix}
    if samples:
        outputs[out.with_name(out.stem + "_samples" + out.suffix)] = table_suffix
    if dbl is not None:
        outputs.update({out.with_name(f"{out.stem}_{n}.fits"): None for n in ("model", "residual")})
    if plot is not None:
        outputs[plot] = (".png", ".pdf", ".svg", ".jpg")
    if regions is not None:
        outputs[regions] = (".reg",)
    check_outputs(outputs, paths + [p for p in (mask, weight) if p], outputs)
    data = read_files(items, mask_planes=planes, weight=weight, weight_type=weight_type, hdu=hdu)
    check_planes_found(items, planes, mask)
    opts = {"background": background, "gain": gain, "noise_sigma": _noise_option(noise),
            "mask": _mask_option(mask, planes, hdu), **evidence}  # fmt: skip
    kw = dict(zeropoint=zeropoint, threshold=threshold, samples=samples, seed=seed,
              progress=not quiet, seeing=seeing, rescue_bright=rescue_bright, **opts)  # fmt: skip
    extra = []
    if dbl is None:
        res = det.detect(data, **kw)
        catalog = res.catalog
    else:
        from probcat.api import deblend
        from probcat.io import write_image

        d = deblend(data, weights=det, deblender=dbl, method=method, **kw)
        res, catalog = d.detection, d.catalog
        cards = _unit_cards(d.catalog.meta["deblend"], dbl.survey.n_bands)
        for name, img in (("model", d.model), ("residual", d.residual)):
            path = out.with_name(f"{out.stem}_{name}.fits")
            write_image(path, img, dbl.survey, res.wcs, header={"PCIMAGE": name}, band_cards=cards)
            extra.append(str(path))
    catalog.write(out, wcs=res.wcs)
    if regions is not None:
        catalog.write_regions(regions, title=", ".join(p.name for p in paths))
    msg = f"{len(catalog)} detections ({int(np.sum(catalog['galaxy']))} galaxies) -> {out}"
    vetoed = res.catalog.meta.get("pair_vetoed", 0)
    if vetoed:
        msg += f"; {vetoed} read as pieces of a neighbour's galaxy and left out (pair_prob < 0.5)"
    msg += _density_note(res.catalog.meta.get("density", {}))
    msg += _input_note(res.catalog.meta.get("input", {}))
    if extra:
        msg += f"; deblended: model and residual -> {', '.join(extra)}"
        rec = catalog.meta["deblend"]
        if rec.get("zeropoint"):
            shown = ", ".join("?" if v is None else f"{v:.4g}" for v in rec["zeropoint"])
            msg += f" [mag_ap at zeropoint {shown}, from {rec['zeropoint_source']}]"
    if samples:
        spath = out.with_name(out.stem + "_samples" + out.suffix)
        stacked, thinned = _stacked_samples(res.samples)
        stacked.write(spath, wcs=res.wcs)
        msg += f"; {samples} posterior samples{thinned} -> {spath}"
    if regions is not None:
        msg += f"; regions -> {regions}"
    if plot is not None:
        from probcat.plots import detection_figure

        k = data.bands.index(det.bands[0]) if det.bands[0] in data.bands else 0  # read band
        detection_figure(
            plot,
            data.image[k],
            float(data.noise_sigma[k])
            if np.isfinite(data.noise_sigma[k])
            else float(np.std(data.image[k])),
            res.catalog,
            title=", ".join(str(p) for p in paths),
        )
        msg += f"; figure -> {plot}"
    typer.echo(msg)


def _unit_cards(rec: dict, n_bands: int) -> list[dict]:
    """Per band, the header cards of a deblended model or residual image in the units of
    the image it came from (``Deblender.measure``'s ``meta["deblend"]``): its ``BUNIT``,
    noise sigma and, where known, its zeropoint (``MAGZERO``, in place of the survey's
    ``ZEROPT`` and ``EXPTIME``)."""
    cards = []
    zps = rec.get("zeropoint") or [None] * n_bands
    for k in range(n_bands):
        c = {"NOISE": (rec["noise_sigma"][k], "background noise sigma, BUNIT")}
        if rec.get("flux_unit", "electron") not in ("electron", "mixed"):
            c["BUNIT"] = rec["flux_unit"]
        if zps[k] is not None:
            c.update(MAGZERO=(zps[k], "AB mag of a pixel value of 1"), ZEROPT=None, EXPTIME=None)
        cards.append(c)
    return cards


def _input_note(info: dict) -> str:
    """What was done to the image before inference, for the one-line summary."""
    parts = []
    if "gain" in info:
        parts.append(f"converted to electrons (gain {', '.join(f'{g:g}' for g in info['gain'])})")
    if info.get("noise_source") in ("measured", "VARIANCE"):
        how = "measured" if info["noise_source"] == "measured" else "from the VARIANCE plane"
        parts.append(f"noise sigma {how}: {', '.join(f'{v:.4g}' for v in info['noise_sigma'])}")
    if info.get("noise_map"):
        lo, hi = info["noise_map"]
        parts.append(f"noise map: {lo:.3g}-{hi:.3g} x sigma, read as the local noise")
    if info.get("masked_pixels"):
        parts.append(f"{info['masked_pixels']} pixels masked, no data")
    if info.get("masked_weights"):  # bands partly without data: the detector trained so
        parts.append(f"detections by {info['masked_weights']}: bands without data")
    if info.get("background") == "subtracted":
        med = ", ".join(f"{m:.4g}" for m in info["sky_median"])
        dens = info.get("sky_density") or {}
        at = (
            f", faint galaxies' light at {round(dens['factor'], 2):g}x the prior's density"
            if dens.get("applied")
            else ""
        )
        parts.append(f"sky subtracted (median {med} e-{at})")
    if info.get("calibration_noise"):
        ratio = "/".join(f"{v:.3g}" for v in info.get("noise_over_survey") or () if v)
        parts.append(
            f"noise {ratio}x the survey's as a flux: probabilities calibrated at "
            f"{info['calibration_noise']:.3g}x"
        )
    if info.get("seeing_matched", 1.0) != 1.0:
        note = f"star/galaxy classes read at {info['seeing_matched']:g}x the survey's PSF"
        if info.get("calibration_seeing", 1.0) != 1.0:
            note += f", probabilities calibrated at {info['calibration_seeing']:g}x"
        parts.append(note)
    return "".join(f" [{p}]" for p in parts)


@app.command("photoz")
def photoz_cmd(
    images: list[Path] = typer.Argument(
        ...,
        help="multi-band FITS image (ugrizy for the shipped weights), or one file per band: "
        "FILE or BAND=FILE each (the band from the header's BAND or FILTER unless given)",
        metavar="IMAGE...",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="catalog (.fits, .parquet or .ecsv)"),
    weights: str = typer.Option(None, help="photo-z weights (default: photoz_lsst_ugrizy)"),
    regions: Path = typer.Option(
        None, help="DS9 region file (.reg) of the detections, labelled with z_mode"
    ),
    detector: str = typer.Option(
        None, help="detection weights (default: detection_lsst_ugrizy, the six-band encoder)"
    ),
    threshold: float = typer.Option(0.5, help="detection probability threshold (MAP catalog)"),
    all_objects: bool = typer.Option(
        False, "--all-objects", help="PDFs for stars too (default: galaxies only)"
    ),
    background: str = BACKGROUND_OPTION,
    gain: float = GAIN_OPTION,
    noise: str = NOISE_OPTION,
    seeing: str = SEEING_OPTION,
    rescue_bright: bool = RESCUE_BRIGHT_OPTION,
    real_shapes: float = REAL_SHAPES_OPTION,
    cutout: float = CUTOUT_OPTION,
    mask: Path = MASK_OPTION,
    mask_planes: str = MASK_PLANES_OPTION,
    weight: Path = WEIGHT_OPTION,
    weight_type: str = WEIGHT_TYPE_OPTION,
    hdu: str = HDU_OPTION,
    zeropoint: str = typer.Option(
        None,
        help="AB magnitude of a flux of 1 in the image's units, one or one per band "
        "(comma-separated), by which its depth is checked against the weights' (default: a "
        "flux-density BUNIT such as nJy, else the MAGZERO, MAGZP, PHOTZP, FLUXMAG0 or ZEROPT "
        "keywords, else for electrons the survey's zeropoint and exposure)",
    ),
    match_depth: bool = typer.Option(
        False,
        "--match-depth",
        help="an image deeper than the weights' training depths: read its PDFs' stamps at "
        "the deepest of them, white noise added (calibrated PDFs at that depth's precision)",
    ),
    spec_z: Path = typer.Option(
        None,
        "--spec-z",
        help="FITS/Parquet table of objects of the image with known redshifts (x, y or ra, "
        "dec; redshift): the PDFs' widths are refit to them, one factor on every width "
        "(galaxies unlike the training galaxies: docs/photoz.md)",
    ),
    width_scale: float = typer.Option(
        1.0, "--width-scale", help="a factor on every PDF width, e.g. one --spec-z fitted"
    ),
    threads: str = typer.Option(
        "auto", help="CPU threads: auto (1 for small images, else one per idle core) or N"
    ),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: a GPU when present)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
):
    """Detect the sources of a multi-band image and estimate a redshift PDF for each galaxy:
    the catalog gets z_mode, z_median, z_mean and 68%/95% intervals; the PDFs go to
    <out>_pz.hdf5 (qp mixmod ensemble, ancil 'row' = catalog row)."""
    from probcat.api import photoz
    from probcat.catalog import TABLE_SUFFIXES, check_outputs
    from probcat.redshift.pdf import pdf_path, write_ensemble

    items, paths, stem = _image_files(images)
    seeing = _checked_seeing(seeing)
    planes = _planes_option(mask_planes)
    zps = _zeropoint_option(zeropoint)
    evidence = _evidence_options(real_shapes, cutout)
    from probcat.io import check_planes_found, check_weight_type, read_files

    check_weight_type(weight_type, "--weight-type")  # before any work
    out = out or paths[0].with_name(stem + "_photoz.fits")
    pz_path = pdf_path(out)
    check_outputs(
        [out, pz_path] + ([regions] if regions else []), paths + [p for p in (mask, weight) if p],
        {out: TABLE_SUFFIXES, regions: (".reg",)},
    )  # fmt: skip
    masked = _mask_option(mask, planes, hdu)
    data = read_files(items, mask_planes=planes, weight=weight, weight_type=weight_type, hdu=hdu)
    check_planes_found(items, planes, mask)
    res = photoz(
        data,
        estimator=weights,
        detector=detector,
        threshold=threshold,
        galaxies_only=not all_objects,
        background=background,
        gain=gain,
        noise_sigma=_noise_option(noise),
        seeing=seeing,
        rescue_bright=rescue_bright,
        device=device,
        threads=_threads_option(threads),
        mask=masked,
        zeropoint=zps,
        match_depth=match_depth,
        known_redshifts=spec_z,
        width_scale=width_scale,
        progress=not quiet,
        **evidence,
    )
    msg = f"{len(res.catalog)} detections, {int(res.catalog['has_pz'].sum())} photo-z PDFs"
    msg += _density_note(res.catalog.meta.get("density", {}))
    msg += _input_note(res.catalog.meta.get("input", {}))
    factors = res.catalog.meta.get("photoz", {}).get("aperture_noise_factor")
    if factors:  # a coadd's correlated noise: the stamps read at its aperture noise
        msg += f" [PDFs read at {min(factors):.3g}-{max(factors):.3g}x the pixel noise: correlated]"
    if res.catalog.meta.get("photoz", {}).get("depth_matched"):
        msg += " [PDFs read at the weights' deepest training depth, noise added]"
    pz_meta = res.catalog.meta.get("photoz", {})
    n_masked = int(res.catalog["pz_masked_weights"].sum())
    if pz_meta.get("absent_bands"):  # every PDF from the weights trained with bands masked
        msg += (
            f" [no data in band {pz_meta['absent_bands']}: PDFs from {pz_meta['masked_weights']}]"
        )
    elif n_masked:  # near pixels without data: the weights trained with bands masked
        msg += f" [{n_masked} near pixels without data: {pz_meta['masked_weights']}]"
    if pz_meta.get("seeing_weights"):  # the bands' seeing differs: the weights trained so
        msg += f" [the bands' seeing differs: PDFs from {pz_meta['seeing_weights']}]"
    if "width_scale" in pz_meta:
        fitted = pz_meta.get("width_fit_objects")
        how = f", fitted to {fitted} known redshifts" if fitted else ""
        msg += f" [PDF widths x{pz_meta['width_scale']:.3g}{how}]"
    if res.ensemble is not None:
        write_ensemble(res.ensemble, pz_path)
        msg += f" -> {pz_path}"
    res.catalog.write(out, wcs=res.wcs)
    msg += f"; catalog -> {out}"
    if regions is not None:
        res.catalog.write_regions(regions, label="z_mode", title=", ".join(p.name for p in paths))
        msg += f"; regions (labelled z_mode) -> {regions}"
    typer.echo(msg)


@app.command("run")
def run_cmd(
    images: list[Path] = typer.Argument(
        ...,
        help="FITS images, or one text file listing them (one per line: an image, or its "
        "files per band as u=FILE g=FILE ..., then optionally its mask file, weight=MAP and "
        "hdu=N, hdu=EXTNAME or hdu=all for a file with several images: one catalog per HDU). "
        "Files of one field in several bands (headers naming their bands, names alike but for "
        "the band: patch_u.fits, patch_g.fits...) are read as one image",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="catalog directory (one file per image)"),
    weights: str = typer.Option(None, help="detection weights (default: LSST-i)"),
    threshold: float = typer.Option(0.5, help="detection probability threshold (MAP catalog)"),
    background: str = BACKGROUND_OPTION,
    gain: float = GAIN_OPTION,
    noise: str = NOISE_OPTION,
    seeing: str = SEEING_OPTION,
    rescue_bright: bool = RESCUE_BRIGHT_OPTION,
    real_shapes: float = REAL_SHAPES_OPTION,
    cutout: float = CUTOUT_OPTION,
    mask_planes: str = MASK_PLANES_OPTION,
    weight_type: str = WEIGHT_TYPE_OPTION,
    fmt: str = typer.Option("parquet", "--format", help="parquet or fits"),
    workers: int = typer.Option(
        None, help="local Dask workers (default: one per core); 0 runs serially in this process"
    ),
    scheduler: str = typer.Option(None, help="address of a running Dask scheduler"),
    threads: int = typer.Option(
        None, help="torch threads of a serial run (--workers 0; default: automatic)"
    ),
    hats: Path = typer.Option(None, help="also merge the catalogs into this HATS catalog"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be done, do nothing"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    photoz: bool = typer.Option(
        False,
        "--photoz",
        help="multi-band images: each galaxy's redshift PDF too (catalog columns z_mode, "
        "z_median, ...; PDFs in OUT/<stem>_pz.hdf5); the detector defaults to "
        "detection_lsst_ugrizy",
    ),
    photoz_weights: str = typer.Option(
        None, help="photo-z weights for --photoz (default: photoz_lsst_ugrizy)"
    ),
    width_scale: float = typer.Option(
        None,
        "--width-scale",
        help="with --photoz: a factor on every PDF width (one probcat photoz --spec-z fitted; "
        "default 1)",
    ),
    deblend: bool = typer.Option(
        False,
        "--deblend",
        help="deblend and measure every source too (aperture flux posterior, magnitude, "
        "size, ellipticity: the columns of probcat detect --deblend; no model or residual "
        "images)",
    ),
    deblender: str = DEBLENDER_OPTION,
    samples: int = typer.Option(
        None,
        help="with --deblend: posterior catalog samples for the flux posteriors "
        "(default 100; 0: point measurements only)",
    ),  # fmt: skip
    method: str = typer.Option(
        None,
        help="with --deblend: deblended light, conserve (the default) or subtract (as "
        "probcat detect --method)",
    ),
    device: str = typer.Option(
        None,
        help="cpu, cuda, ... (default: a GPU when present for --workers 0, else the CPU: "
        "one GPU shared by a worker per core would not pay)",
    ),
):
    """Catalogs of many images on Dask: one catalog per image in OUT, written atomically; a
    rerun skips finished images (an interrupted run resumes). Failures are listed in
    OUT/run_summary.json and do not stop the others."""
    from probcat.scale import SUMMARY, build_hats, check_hats_target, run

    if len(images) == 1 and images[0].suffix in (".txt", ".lst"):
        from probcat.scale import read_list

        images = read_list(images[0])
    if fmt not in ("parquet", "fits"):
        raise ProbcatValueError(f"--format must be parquet or fits, got {fmt!r}")
    if hats is not None and fmt != "parquet":
        raise ProbcatValueError("--hats needs --format parquet")
    if hats is not None:
        check_hats_target(hats)  # before any image is processed
    for name, value in (("--photoz-weights", photoz_weights), ("--width-scale", width_scale)):
        if value is not None and not photoz:
            raise ProbcatValueError(f"{name} needs --photoz")
    for name, value in (("--deblender", deblender), ("--samples", samples),
                        ("--method", method)):  # fmt: skip
        if value is not None and not deblend:
            raise ProbcatValueError(f"{name} needs --deblend")
    s = run(
        images,
        out,
        weights=weights,
        threshold=threshold,
        background=background,
        gain=gain,
        noise_sigma=_noise_option(noise),
        seeing=_checked_seeing(seeing),
        rescue_bright=rescue_bright,
        **_evidence_options(real_shapes, cutout),
        mask_planes=_planes_option(mask_planes),
        weight_type=weight_type,
        suffix=f".{fmt}",
        workers=workers,
        scheduler=scheduler,
        threads=threads,
        dry_run=dry_run,
        progress=not quiet,
        photoz=(photoz_weights or "default") if photoz else None,
        width_scale=1.0 if width_scale is None else width_scale,
        device=device,
        deblend=(deblender or "default") if deblend else None,
        samples=samples,
        method=method,
    )
    grouped = s["band_file_images"]
    of_files = f"; {grouped} of them of one file per band" if grouped else ""
    if dry_run:
        typer.echo(f"would process {s['to_process']} of {s['images']} images "
                   f"({s['skipped']} done{of_files})")  # fmt: skip
        labels = s["band_file_labels"]
        if labels:
            more = f" and {len(labels) - 3} more" if len(labels) > 3 else ""
            typer.echo(f"images of one file per band: {'; '.join(labels[:3])}{more}")
        return
    typer.echo(
        f"{s['processed']} images processed, {s['skipped']} already done, "
        f"{len(s['failed'])} failed{of_files}; {s['rows']} sources in {s['seconds']:.1f} s "
        f"-> {out}"
    )
    note = _evidence_note(s.get("pooled_evidence"), real_shapes, cutout)
    if note:
        typer.echo(note)
    for f in s["failed"][:5]:
        said = (
            f["error"] if f["error"].startswith(f"{f['image']}:") else f"{f['image']}: {f['error']}"
        )
        typer.echo(f"probcat: failed: {said}", err=True)
    if len(s["failed"]) > 5:
        typer.echo(f"probcat: ... and {len(s['failed']) - 5} more failed: every image's error is "
                   f"in {Path(out) / SUMMARY}", err=True)  # fmt: skip
    if hats is not None:
        n = build_hats(out, hats)
        typer.echo(f"HATS catalog of {n} sources (overlaps deduplicated) -> {hats}")
    if s["failed"]:
        raise typer.Exit(1)


@app.command("population")
def population_cmd(
    seed: int = typer.Option(None, help="simulate the target observation from this seed"),
    image: Path = typer.Option(None, help="target map (FITS, 128x128, the model's units)"),
    config: Path = typer.Option(None, "--config", "-c", help="YAML simulation budget"),
    out: Path = typer.Option(Path("population_run"), "--out", "-o", help="run directory"),
    reuse: Path = typer.Option(
        None,
        help="an earlier run: its networks that do not depend on the target (r1, the pool, "
        "r2, r4, the plain NRE) are copied in where the settings match; r3 trains anew",
    ),
    shipped: bool = typer.Option(
        True,
        help="without --reuse, take the shipped networks that do not depend on the target "
        "where the settings are those they were trained with (--no-shipped: train them all)",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Population inference with detection as truncation (r1-r4) for one target map:
    weighted posterior samples (Parquet), summary.json, the detected sources with their
    regions (FITS), detection map and corner plot."""
    from probcat.config import load_yaml
    from probcat.population.chain import PopulationConfig, check_target_map, run_chain
    from probcat.population.simulator import MAP_SIZE

    if (seed is None) == (image is None):
        raise ProbcatValueError("give exactly one of --seed (simulated target) and --image")
    if seed is not None and not 0 <= seed < 2**63:
        raise ProbcatValueError(f"--seed must lie in [0, 2^63), got {seed}")
    cfg = load_yaml(PopulationConfig, config)
    target = None
    if image is not None:
        from probcat.io import read_image

        planes = read_image(image).image  # its errors name the file
        if len(planes) != 1:  # a cube: which plane is the map is not for probcat to guess
            raise ProbcatValueError(
                f"{image}: holds {len(planes)} image planes; the map must be a single "
                f"{MAP_SIZE}x{MAP_SIZE} plane"
            )
        target = planes[0]
        try:
            target = check_target_map(target)
        except ProbcatValueError as e:
            raise ProbcatValueError(f"{image}: {e}") from None
    s = run_chain(
        cfg,
        out,
        target_seed=seed,
        target_map=target,
        progress=not quiet,
        command=_command_line(),
        reuse=reuse,
        shipped=shipped,
    )
    if s["reused"] and s["reused"]["reused"]:
        typer.echo(f"reused from {s['reused']['run']}: " + ", ".join(s["reused"]["reused"]))
    c = s["posterior"]["combined"]
    parts = [
        f"{k} {v['mean']:.3g} [{v['interval_68'][0]:.3g}, {v['interval_68'][1]:.3g}]"
        for k, v in c.items()
    ]
    typer.echo(f"{s['n_detected']} detected; combined posterior (68%): " + ", ".join(parts))
    typer.echo(
        f"wrote {out / 'summary.json'}, posterior_samples.parquet, detections.fits and figures"
    )


@app.command("weights")
def weights_cmd(
    name: str = typer.Argument(
        None,
        help="one shipped weights name, a weights file or a training run's directory: its "
        "manifest in brief",
    ),
    as_json: bool = typer.Option(False, "--json", help="with NAME: the whole manifest as JSON"),
):
    """The shipped weights: kind, bands, size and benchmark numbers; with NAME (or a
    weights file, or a run directory of `probcat train`), what they were trained on, how
    (the command that reproduces them) and how they measure."""
    from probcat import weights as registry

    if name is None:
        if as_json:
            raise ProbcatValueError("--json needs a weights NAME")
        for n in registry.names():
            m = registry.manifest(n)
            bands = (m.get("config", {}).get("data") or {}).get("bands", "?")
            bands = "-" if m.get("kind") == "population" else bands  # maps, not a survey
            size = m.get("size_bytes", 0) / 1e6
            typer.echo(f"{n:34s} {m.get('kind', '?'):12s} {bands:7s} {size:4.1f} MB  "
                       f"{_headline(m)}")  # fmt: skip
        return
    m = registry.manifest_of(name)
    if as_json:
        import json

        typer.echo(json.dumps(m, indent=1))
        return
    data = m.get("config", {}).get("data") or {}
    rows = [
        ("kind", m.get("kind")),
        (
            "bands",
            f"{data.get('bands')} ({data.get('population')} population, depth "
            f"{data.get('years')} yr)",
        ),
        (
            "file",
            f"{m.get('weights')} ({m.get('size_bytes', 0) / 1e6:.1f} MB, sha256 "
            f"{str(m.get('sha256'))[:16]}...)",
        ),
        (
            "trained",
            f"{m.get('steps')} steps, {m.get('training_s', 0) / 3600:.1f} h, at "
            f"{str(m.get('git_commit'))[:12]}",
        ),
        ("command", m.get("training_command") or m.get("command")),
    ]
    if m.get("kind") == "population":  # a point-source map model, not a survey's bands
        rows[1] = ("model", "paper 001's point-source maps (128x128, Table 1 prior)")
    if "hparams" in m:  # a weights file without a manifest
        survey = m.get("survey") if isinstance(m.get("survey"), dict) else {}
        bands = [b.get("name") for b in survey.get("bands") or [] if isinstance(b, dict)]
        rows[1] = (
            "bands",
            f"{''.join(map(str, bands)) or '?'} (depth {survey.get('depth_years')} yr)",
        )
        rows[3:] = [("network", m["hparams"]), ("note", m["note"])]
    rows += [(k.replace("_", " "), v) for k, v in m.items()
             if k.endswith("_command") and k != "training_command"]  # fmt: skip
    for k, v in m.items():  # fits recorded with their own provenance
        if isinstance(v, dict) and v.get("command") and k != "benchmark":
            rows.append((f"{k.replace('_', ' ')} command", v["command"]))
    for k, v in (m.get("data") or {}).items():
        if isinstance(v, str):
            rows.append((f"data: {k}", v))
    if m.get("density_calibration"):
        rows.append(("source densities", _densities_row(m)))
    if isinstance(m.get("final_val"), dict):  # a training run's last validation
        rows.append(("validation", ", ".join(
            f"{k} {v:.4g}" for k, v in m["final_val"].items() if isinstance(v, (int, float))
        )))  # fmt: skip
    rows.append(("benchmark", _headline(m) or "none recorded"))
    if (m.get("benchmark") or {}).get("command"):
        rows.append(("benchmark command", m["benchmark"]["command"]))
    for k, v in rows:
        typer.echo(f"{k + ':':30s} {v}")


def _densities_row(m: dict) -> str:
    """The ``probcat weights`` row of a manifest's density calibrations: the densities,
    and the seeings and depths each was fitted at (:mod:`probcat.infer.density`)."""
    main = m["density_calibration"]
    factors = ", ".join(f"{f:g}" for f in main["factors"])
    others = m.get("density_calibrations") or ()
    psf = [f"{r['seeing_factor']:g}" for r in others if r.get("seeing_factor", 1.0) != 1.0]
    noise = [f"{r['noise_factor']:.3g}" for r in others if r.get("noise_factor", 1.0) != 1.0]
    where = "the survey's seeing and depth"
    if psf:
        where += f"; PSF x {', '.join(psf)}"
    if noise:
        where += f"; noise x {', '.join(noise)}"
    return f"{factors} times the prior's, calibrated at {where}"


@app.command("cache")
def cache_cmd(
    cache_dir: Path = typer.Option(None, help="source bank cache (default ~/.cache/probcat)"),
    older_than: float = typer.Option(
        None, "--older-than", help="remove the banks unused for more than this many days"
    ),
    max_size: float = typer.Option(
        None, "--max-size", help="remove the least recently used banks until this many GB are left"
    ),
    everything: bool = typer.Option(False, "--all", help="remove every cached bank"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would go, remove nothing"),
):
    """The source banks that simulations cache (a few hundred MB to a few GB each): with no
    option, list them, most recently used first; with one, remove the least recently used
    (a removed bank is rendered again when a config next needs it)."""
    from datetime import datetime

    from probcat.simulate.cache import cached_banks, prune

    def line(b) -> str:
        used = datetime.fromtimestamp(b.last_used).strftime("%Y-%m-%d %H:%M")
        return f"{b.key}  {b.size / 1e9:6.2f} GB  last used {used}  {b.describe()}"

    if max_size is not None and not max_size >= 0:
        raise ProbcatValueError(f"--max-size must be a number of GB >= 0, got {max_size}")
    if older_than is not None and not older_than >= 0:
        raise ProbcatValueError(f"--older-than must be a number of days >= 0, got {older_than}")
    if older_than is None and max_size is None and not everything:
        if dry_run:
            raise ProbcatValueError("--dry-run goes with --older-than, --max-size or --all")
        banks = cached_banks(cache_dir)
        for b in banks:
            typer.echo(line(b))
        total = sum(b.size for b in banks)
        typer.echo(f"{len(banks)} banks, {total / 1e9:.2f} GB")
        return
    gone = prune(
        cache_dir,
        older_than_days=older_than,
        max_bytes=None if max_size is None else max_size * 1e9,
        everything=everything,
        dry_run=dry_run,
    )
    for b in gone:
        typer.echo(("would remove " if dry_run else "removed ") + line(b))
    freed = sum(b.size for b in gone) / 1e9
    typer.echo(f"{'would remove' if dry_run else 'removed'} {len(gone)} banks, {freed:.2f} GB")


def _headline(m: dict) -> str:
    """A manifest's benchmark in one line: the numbers its kind is judged by."""
    b = m.get("benchmark") or {}
    if m.get("kind") == "population" and "coverage" in b:
        cov = b["coverage"]
        return "coverage of the joint 68.3% / 95.4% regions: " + ", ".join(
            f"{k} {cov[k]['joint']['0.683']:.3f} / {cov[k]['joint']['0.954']:.3f}"
            for k in ("r4", "plain_nre")
        )
    if "probcat" in b and "precision" in b["probcat"]:
        p = b["probcat"]
        return f"precision {p['precision']:.3f}, recall {p['recall']:.3f}, F1 {p['f1']:.3f}"
    if "probcat" in b and "sigma_iqr" in b["probcat"]:
        p = b["probcat"]
        return (f"sigma_IQR {p['sigma_iqr']:.4f}, outlier fraction {p['outlier_frac']:.3f}, "
                f"PIT KS {p['ks']:.3f}")  # fmt: skip
    if "flux_residual_top_bin" in b:
        return (f"top-blendedness flux residual {b['flux_residual_top_bin']['samples']:.3f}, "
                f"flux posterior coverage {b['flux_posterior_coverage_68']:.3f} / "
                f"{b['flux_posterior_coverage_95']:.3f}")  # fmt: skip
    if "detection_ugrizy" in b:
        p = b["detection_ugrizy"]["ugrizy"]
        return f"precision {p['precision']:.3f}, recall {p['recall']:.3f}, F1 {p['f1']:.3f}"
    if b.get("seeing_weights"):  # photo-z weights for per-band seeing: the depth benchmark's
        got, ref = b["seeing_weights"]["photoz_band_seeing"], b["photoz_band_seeing"]
        keys = [k for k in ref if k in got]
        cov = lambda d: " / ".join(f"{d[k]['pit_coverage_68']:.3f}" for k in keys)  # noqa: E731
        return f"per-band seeing: 68% coverage {cov(got)} (photoz_lsst_ugrizy {cov(ref)})"
    if "zone" in ((b.get("results") or {}).get("defects") or {}).get("default", {}):
        r = b["results"]["defects"]  # detection weights for bands without data: near the masks
        got, ref = r["default"]["zone"], r["shipped_only"]["zone"]
        return (f"bands masked: recall {got['recall']:.3f}, precision {got['precision']:.3f}, "
                f"star/galaxy {got['class_accuracy']:.3f} (masks read as no light "
                f"{ref['recall']:.3f}, {ref['precision']:.3f}, "
                f"{ref['class_accuracy']:.3f})")  # fmt: skip
    if "defects" in (b.get("results") or {}):  # weights for bands without data: their galaxies
        r = b["results"]["defects"]
        got, ref = r["default"]["affected"], r["shipped_only"]["affected"]
        return (f"bands masked: sigma_IQR {got['sigma_iqr']:.4f}, 68% coverage "
                f"{got['pit_coverage_68']:.3f} (masks read as no light "
                f"{ref['sigma_iqr']:.4f}, {ref['pit_coverage_68']:.3f})")  # fmt: skip
    if "probcat_coadd_weights_coadd_lanczos3" in b:  # weights for coadds: on Lanczos-3 coadds
        p = b["probcat_coadd_weights_coadd_lanczos3"]
        return (f"Lanczos-3 coadds: precision {p['precision']:.3f}, recall {p['recall']:.3f}, "
                f"F1 {p['f1']:.3f}")  # fmt: skip
    return ""


train_app = typer.Typer(
    no_args_is_help=True, help="Train encoders (reproduces the shipped weights)."
)
app.add_typer(train_app, name="train")


@train_app.command("detection")
def train_detection_cmd(
    config: Path = typer.Option(None, "--config", "-c", help="YAML training config"),
    out: Path = typer.Option(Path("runs/detection"), "--out", "-o", help="run directory"),
    steps: int = typer.Option(None, help="override the first phase's number of steps"),
    cache_dir: Path = typer.Option(None, help="source bank cache (default ~/.cache/probcat)"),
    device: str = typer.Option(
        None, help="where the training steps run: cpu, cuda, ... (default: a GPU when present)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Train the detection/classification encoder by FAVI (resumes from OUT/checkpoint.pt)."""
    from probcat.train.detection import load_config, train_detection

    cfg = load_config(config, steps=steps)
    manifest = train_detection(
        cfg, out, cache_dir=cache_dir, progress=not quiet, command=_command_line(),
        device=device,
    )  # fmt: skip
    typer.echo(
        f"wrote {out / 'detection.pt'} and {out / 'manifest.json'} "
        f"after {manifest['steps']} steps ({manifest['training_s']:.0f} s)"
    )


@train_app.command("deblend")
def train_deblend_cmd(
    config: Path = typer.Option(
        ..., "--config", "-c", help="YAML config (stage: autoencoder or deblender)"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="run directory"),
    steps: int = typer.Option(None, help="override the first phase's number of steps"),
    cache_dir: Path = typer.Option(None, help="source bank cache (default ~/.cache/probcat)"),
    device: str = typer.Option(
        None, help="where the training steps run: cpu, cuda, ... (default: a GPU when present)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Train the galaxy autoencoder or the deblending encoder (resumes from
    OUT/checkpoint.pt)."""
    from probcat.train.deblend import load_deblend_config, train_deblend

    cfg = load_deblend_config(config, steps=steps)
    manifest = train_deblend(
        cfg, out, cache_dir=cache_dir, progress=not quiet, command=_command_line(),
        device=device,
    )  # fmt: skip
    typer.echo(
        f"wrote {out / (cfg.stage + '.pt')} and {out / 'manifest.json'} "
        f"after {manifest['steps']} steps ({manifest['training_s']:.0f} s)"
    )


@train_app.command("photoz")
def train_photoz_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="YAML training config"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory"),
    steps: int = typer.Option(None, help="override the first phase's number of steps"),
    member: int = typer.Option(
        None, help="ensembles (members > 1): train only this member into OUT/member_<k>"
    ),
    cache_dir: Path = typer.Option(None, help="source bank cache (default ~/.cache/probcat)"),
    device: str = typer.Option(
        None, help="where the training steps run: cpu, cuda, ... (default: a GPU when present)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Train the photo-z mixture density network (resumes from OUT/checkpoint.pt); with
    ``members: M`` in the config, a deep ensemble: M nets (seeds seed..seed+M-1) trained in
    OUT/member_<k>, then pooled and width-calibrated into OUT."""
    from probcat.train.photoz import load_photoz_config, train_photoz

    cfg = load_photoz_config(config, steps=steps)
    if member is not None and cfg.members == 1:
        raise ProbcatValueError("--member applies to ensembles (members > 1 in the config)")
    manifest = train_photoz(
        cfg, out, cache_dir=cache_dir, progress=not quiet, command=_command_line(),
        member=member, device=device,
    )  # fmt: skip
    where = out if member is None else out / f"member_{member}"
    typer.echo(
        f"wrote {where / 'photoz.pt'} and {where / 'manifest.json'} "
        f"after {manifest['steps']} steps ({manifest['training_s']:.0f} s)"
    )


@train_app.command("calibrate")
def calibrate_cmd(
    run: Path = typer.Argument(..., help="run directory holding detection.pt and manifest.json"),
    scenes: int = typer.Option(
        None,
        min=1,
        help="validation scenes of the centroid calibration (default: the run's config)",
    ),
    reliability_scenes: int = typer.Option(
        None,
        min=1,
        help="validation scenes of the probability calibration (default: the run's config)",
    ),
    inside_fraction: float = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help="fraction of those scenes with every source inside the image, the rest with "
        "sources beyond the edges (default: the run's config)",
    ),
    cache_dir: Path = typer.Option(None, help="source bank cache (default ~/.cache/probcat)"),
    sky_offset_only: bool = typer.Option(
        False, "--sky-offset-only", help="only (re)fit the sky offset, into manifest.json"
    ),
    reliability_only: bool = typer.Option(
        False,
        "--reliability-only",
        help="only (re)fit the pair rule, the probability calibration and the ood_score density",
    ),
    population: str = typer.Option(
        None,
        help="galaxies of the validation scenes, e.g. morphology (default: the run's own)",
    ),
    seeing_only: bool = typer.Option(
        False,
        "--seeing-only",
        help="only (re)fit the probability calibrations under other seeing, keeping the rest",
    ),
    seeing_factors: str = typer.Option(
        None,
        help="PSF FWHM factors of those calibrations, e.g. 1.25,1.5; 'none' for none "
        "(default: the run's config)",
    ),
    depth_only: bool = typer.Option(
        False,
        "--depth-only",
        help="only (re)fit the probability calibrations at other depths, keeping the rest",
    ),
    depth_years: str = typer.Option(
        None,
        help="depths (years of the survey) of those calibrations, e.g. 1,2,20; 'none' for "
        "none (default: the run's config)",
    ),
    shapes_only: bool = typer.Option(
        False,
        "--real-shapes-only",
        help="only (re)fit the second probability calibration, for galaxies unlike the "
        "prior's, keeping the rest",
    ),
    real_shapes_population: str = typer.Option(
        None,
        help="galaxies of that calibration's validation scenes, e.g. hdf (default: the run's "
        "config)",
    ),
    centroid_only: bool = typer.Option(
        False,
        "--centroid-only",
        help="only (re)fit the centroid-interval calibrations, keeping the rest",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """(Re)fit the merge radius (weights with a location refiner), the centroid-interval
    calibration, the pair rule, the detection-probability calibration (at the survey's
    seeing, at other seeing and for galaxies unlike the prior's), the ood_score density and
    the sky offset of a trained run (training does them last)."""
    from probcat.train.detection import calibrate_run, record_sky_offset

    for name in ("detection.pt", "manifest.json"):
        if not (run / name).exists():
            raise ProbcatFileError(f"{run / name}: not found (is {run} a training run?)")
    only = (sky_offset_only, reliability_only, seeing_only, depth_only, shapes_only, centroid_only)
    if sum(only) > 1:
        raise ProbcatValueError(
            "--sky-offset-only, --reliability-only, --seeing-only, --depth-only, "
            "--real-shapes-only and --centroid-only exclude each other"
        )
    factors = _seeing_factors(seeing_factors)
    years = _seeing_factors(depth_years, "--depth-years")
    if sky_offset_only:
        rec = record_sky_offset(
            run / "detection.pt", run / "manifest.json", cache_dir=cache_dir, progress=not quiet
        )
        typer.echo(f"sky offset {rec['per_band']} noise sigma -> {run / 'manifest.json'}")
        return
    m = calibrate_run(
        run,
        n_scenes=scenes,
        reliability_scenes=reliability_scenes,
        inside_fraction=inside_fraction,
        cache_dir=cache_dir,
        progress=not quiet,
        reliability_only=reliability_only,
        population=population,
        seeing_only=seeing_only,
        seeing_factors=factors,
        depth_only=depth_only,
        depth_years=years,
        shapes_only=shapes_only,
        real_shapes_population=real_shapes_population,
        centroid_only=centroid_only,
    )
    for e in (
        () if shapes_only or centroid_only or depth_only else m.get("seeing_calibrations") or ()
    ):
        typer.echo(
            f"probability calibration at {e['factor']:g} x the seeing from {e['n']} detections"
        )
    for e in (
        () if shapes_only or centroid_only or seeing_only else m.get("depth_calibrations") or ()
    ):
        typer.echo(
            f"probability calibration at {e['years']:g} years' depth (noise {e['factor']:.3g}x) "
            f"from {e['n']} detections"
        )
    if seeing_only or depth_only:
        what = "seeing" if seeing_only else "depth"
        n = len(m.get(f"{what}_calibrations") or ())
        typer.echo(f"{n} {what} calibration(s) -> {run / 'detection.pt'}")
        return
    if centroid_only:
        if m["centroid_calibration"] is None:
            raise ProbcatValueError(f"{run}: too few matched detections to calibrate")
        typer.echo(_centroid_summary("centroid intervals", m["centroid_calibration"]))
        if m.get("real_shapes_centroid_calibration"):
            typer.echo(
                _centroid_summary(
                    "centroid intervals for galaxies unlike the prior's",
                    m["real_shapes_centroid_calibration"],
                )
            )
        typer.echo(f"-> {run / 'detection.pt'}")
        return
    cal = m.get("prob_calibration") or {}
    if cal.get("kind") == "shapes":
        typer.echo(
            f"second probability calibration, for galaxies like {cal['population']}, from "
            f"{cal['n']} detections"
        )
    real_cal = m.get("real_shapes_centroid_calibration")
    if real_cal:
        typer.echo(_centroid_summary("centroid intervals for those galaxies", real_cal))
    if shapes_only:
        typer.echo(f"-> {run / 'detection.pt'}")
        return
    rule = m.get("pair_rule")
    if rule and rule.get("check"):
        c = rule["check"]
        typer.echo(
            f"pair rule from {rule['n']} paired detections; on held-out validation scenes it "
            f"drops {c['dropped']} detections ({c['dropped_real']} real): precision "
            f"{c['precision_before']:.3f} -> {c['precision_after']:.3f}, recall "
            f"{c['recall_before']:.3f} -> {c['recall_after']:.3f}"
        )
    if reliability_only:
        cal = m["prob_calibration"]
        if cal is None:
            raise ProbcatValueError(f"{run}: too few detections to calibrate probabilities")
        typer.echo(f"probability calibration from {cal['n']} detections -> {run / 'detection.pt'}")
        return
    cal = m["centroid_calibration"]
    if cal is None:
        raise ProbcatValueError(f"{run}: too few matched detections to calibrate")
    if m.get("merge"):
        typer.echo(f"merge radius {m['merge']['radius_px']:.1f} px (highest validation MAP F1)")
    typer.echo(f"{_centroid_summary('centroid intervals', cal)} -> {run / 'detection.pt'}")


def _centroid_summary(what: str, cal: dict) -> str:
    """One line on a centroid calibration: its 68% / 95% half-widths (in sd), pooled and,
    for one binned by detection SNR, at its faintest and brightest bins."""
    from probcat.infer.calibration import CentroidCalibration

    c = CentroidCalibration.from_dict(cal)
    line = (
        f"{what} from {c.n} matched coordinates: 68% ±{c.factor(0.6827):.2f} sd, "
        f"95% ±{c.factor(0.9545):.2f} sd"
    )
    if c.binned:
        ends = [
            f"{c.at(s).factor(0.6827):.2f} / {c.at(s).factor(0.9545):.2f} at SNR "
            + (f"{s:.1f}" if s < 10 else f"{s:.0f}")
            for s in (c.snr[0], c.snr[-1])
        ]
        line += f" ({len(c.snr)} SNR bins: {' to '.join(ends)})"
    return line


def _evidence_note(ev: dict | None, real_shapes, cutout) -> str | None:
    """A line for ``probcat run`` where its images' evidence, pooled (the run summary's
    ``pooled_evidence``), gives weights that differ by 0.2 or more from what each image's
    own gave on average, for a weight not stated: how to read them with it."""
    if not ev or ev["images"] < 2:
        return None
    stated = {"real_shapes": real_shapes, "cutout": cutout}
    kinds = [k for k in ("real_shapes", "cutout") if ev.get(k) is not None and stated[k] is None]
    if not any(abs(ev[k] - ev["own"][k]) >= 0.2 for k in kinds):
        return None
    said = " and ".join(f"{k}_probability {ev[k]:.2f}" for k in kinds)
    own = " and ".join(f"{ev['own'][k]:.2f}" for k in kinds)
    opts = " ".join(f"--{k.replace('_', '-')} {round(ev[k], 2):g}" for k in kinds)
    return (
        f"read together, the {ev['images']} images' detections give {said} (each image "
        f"alone: {own} on average); a run with {opts} reads them so (docs/robustness.md, "
        "Evidence from many images)"
    )


def _evidence_options(real_shapes, cutout) -> dict:
    """``--real-shapes`` and ``--cutout`` checked before anything is loaded or run."""
    from probcat.infer.reliability import check_evidence

    out = {}
    for name, value in (("--real-shapes", real_shapes), ("--cutout", cutout)):
        if value is not None:
            out[name[2:].replace("-", "_")] = check_evidence(value, name, pooled=False)
    return out


def _seeing_factors(text: str | None, option: str = "--seeing-factors") -> tuple | None:
    """``--seeing-factors`` (or ``option``, e.g. ``--depth-years``): None (the run's own)
    when not given, () for "none", else the comma-separated numbers (the training config
    checks their range)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ProbcatValueError(
            f"{option} must be comma-separated numbers or 'none', got {text!r}"
        ) from None


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"probcat: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        rc = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return rc
    except BrokenPipeError:  # output piped to a reader that stopped (`probcat ... | head`)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to say
        return 1  # as click does for a command's own output
    finally:
        warnings.showwarning = previous


def _main(argv):
    try:
        rc = app(args=argv, prog_name="probcat", standalone_mode=False)
    except ProbcatError as e:  # one line, whatever the message (wcslib's hold newlines)
        print(f"probcat: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except MemoryError as e:  # numpy says how much it could not allocate, and for what
        detail = " ".join(str(e).split()) or "the allocation failed"
        print(f"probcat: error: out of memory ({detail}): use smaller or fewer images",
              file=sys.stderr)  # fmt: skip
        return 2
    except typer.Abort:
        print("probcat: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as e:  # usage errors: unknown option, bad value...
        if type(e).__name__ == "NoArgsIsHelpError":  # `probcat`, `probcat train`: the help
            print(e.ctx.get_help())
            return 0
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"probcat: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    if rc == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit status 130
        print("\nprobcat: interrupted", file=sys.stderr)  # after any unfinished bar line
    return rc if isinstance(rc, int) else 0  # typer.Exit(n) in a command: its status


if __name__ == "__main__":
    sys.exit(main())
