"""Catalogs of many images: one catalog per image on Dask, resumable, merged into a HATS
catalog that LSDB reads.

- :func:`run` processes a list of FITS images into ``out/<image stem>.parquet`` (or
  ``.fits``): serially in this process (``workers=0``), on a local Dask cluster (the
  default: one worker process per core, one torch thread each) or on any Dask scheduler
  (``scheduler="tcp://host:8786"``, e.g. started by dask-jobqueue on SLURM). A serial run
  uses a GPU when there is one; Dask workers use the CPU unless ``device`` names one (a
  process per core, each with its own GPU context on one card, would not pay). Weights load
  once per worker process (:func:`_detector` is cached in the worker), never shipped with
  the tasks. Each catalog is written atomically, so a rerun skips finished images: an
  interrupted run resumes without losing or duplicating rows. A failing image is recorded
  in the run summary (``run_summary.json``) and does not stop the others.
- :func:`build_hats` merges the per-image catalogs (Parquet, with ``ra``/``dec``) into a
  HATS catalog with hats-import. Sources of overlapping images are deduplicated by core
  region: a source is kept only from the image whose centre is nearest to it on the sky.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import types
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from probcat.catalog import atomic_write, check_writable_dir, new_output_dir, sky_positions
from probcat.errors import ProbcatError, ProbcatFileError, ProbcatIOError, ProbcatValueError

__all__ = [
    "Job",
    "read_list",
    "plan",
    "process_image",
    "run",
    "build_hats",
    "check_hats_target",
    "dedup_by_core",
]

SUFFIXES = (".parquet", ".fits")
SUMMARY = "run_summary.json"


@dataclass(frozen=True)
class Job:
    image: Path
    output: Path
    mask: Path | None = None  # a FITS mask of the image's pixels without data
    weight: Path | None = None  # a FITS weight map of the image (inverse variance)
    hdu: str | None = None  # the HDU of a file with several images (one CCD per HDU)
    bands: tuple = ()  # ((band, file), ...): an image of one file per band (image: the first)

    @property
    def label(self) -> str:
        """The image as the run summary names it: its file (``[hdu]``), or for one file per
        band, the catalog's name and the bands (``patch_9813_34 (u,g,r,i,z,y)``)."""
        from probcat.io import image_stem

        if self.bands:
            return f"{image_stem(self.output)} ({','.join(b for b, _ in self.bands)})"
        return str(self.image) if self.hdu is None else f"{self.image}[{self.hdu}]"


def read_list(path) -> list:
    """The images of a file list: one per line (``#`` comments and blank lines skipped),
    each an image path, or one file per band of an image (``u=PATH g=PATH ...``), then
    optionally, separated by white space, its mask file (a bare path or ``mask=PATH``), its
    weight map (``weight=PATH``) and the HDU to read of a file with several images
    (``hdu=3``, ``hdu=CCD12``, or ``hdu=all``: every image HDU, one catalog each); a line
    that names an existing file as a whole is an image alone, spaces and all. Entries: a
    path, or a tuple ``(image, mask, weight, hdu)`` (None where not given; ``image`` a dict
    ``{band: path}`` for one file per band)."""
    from probcat.io import band_and_path

    path = Path(path)
    if not path.is_file():
        raise ProbcatFileError(f"{path}: no such file list")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ProbcatIOError(f"{path}: not a readable text file list ({e})") from None
    entries = []
    usage = (
        "a line is an image (PATH, or one file per band: u=PATH g=PATH ...), then its mask "
        "(PATH, or mask=PATH after files per band), weight map (weight=PATH) and HDU (hdu=N, "
        "hdu=NAME or hdu=all), each at most once"
    )
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if Path(text).is_file() or (len(parts) == 1 and band_and_path(text)[0] is None):
            entries.append(Path(text))
            continue
        extra: dict = {}
        bands: dict = {}
        image = None
        for part in parts:
            key, eq, value = part.partition("=")
            band, file = band_and_path(part)
            if eq and key.lower() in ("mask", "weight", "hdu"):
                key = key.lower()
            elif band is not None:  # BAND=FILE: the image's files come first
                if image is not None or extra or band in bands:
                    raise ProbcatValueError(f"{path}: {text!r}: {usage}")
                bands[band] = Path(file)
                continue
            elif image is None and not bands and not extra:
                image = Path(part)
                continue
            elif image is not None and not (eq and not value):  # a bare path: its mask
                key, value = "mask", part
            else:  # after files per band, a mask is mask=PATH (a bare one may be a band)
                raise ProbcatValueError(f"{path}: {text!r}: {usage}")
            if key in extra or not value:
                raise ProbcatValueError(f"{path}: {text!r}: {usage}")
            extra[key] = value if key == "hdu" else Path(value)
        if image is None and not bands:
            raise ProbcatValueError(f"{path}: {text!r}: {usage}")
        entries.append((image or bands, extra.get("mask"), extra.get("weight"), extra.get("hdu")))
    return entries


def plan(images, out, suffix: str = ".parquet", progress: bool = False) -> list[Job]:
    """One :class:`Job` per image (``out/<stem><suffix>``, the stem without FITS suffixes:
    ``field`` of ``field.fits.fz``); an image may come as a tuple
    ``(image, mask)``, ``(image, mask, weight)`` or ``(image, mask, weight, hdu)`` (None
    where there is none). An ``hdu`` (an index or an ``EXTNAME``) of a file with several
    images makes ``out/<stem>_<hdu><suffix>``; ``"all"``, one job per image HDU of the
    file, named by ``EXTNAME`` (or index).

    An image of one file per band is a dict ``{band: file}`` (in the tuple's first place,
    or alone), or is found among the files given alone (:func:`group_bands`: files whose
    headers name their bands, named alike but for the band, on one pixel grid, such as an
    LSST patch's six coadds); its catalog is named after the files less the band
    (``patch_9813_34`` of ``patch_9813_34_u.fits``...). One-line errors for missing images,
    masks or weight maps, two jobs with one catalog name, or an output that would be an
    input. ``progress``: a progress bar while many files' headers are read."""
    from probcat.io import image_stem

    if suffix not in SUFFIXES:
        raise ProbcatValueError(f"catalog format must be one of {', '.join(SUFFIXES)}")
    out = Path(out)
    rows = [_entry(x) for x in images]
    if not rows:
        raise ProbcatValueError("no images given")
    for p, m, w, _ in rows:
        for what, f in (("mask", m), ("weight map", w)):
            if f is not None and not f.is_file():
                raise ProbcatValueError(f"{f}: no such {what} file (for {_said(p)})")
        for f in p.values() if isinstance(p, dict) else [p]:
            if f.is_dir():
                raise ProbcatValueError(
                    f"{f}: a directory; give its images ({f / '*.fits'}) or a file listing them"
                )
            if not f.is_file():
                raise ProbcatValueError(f"{f}: no such image file")
    jobs, seen = [], {}
    for p, m, w, hdu, stem in group_bands(rows, progress):
        bands = tuple(p.items()) if isinstance(p, dict) else ()
        first = bands[0][1] if bands else p
        stem = stem or image_stem(first)
        if bands and hdu is not None and hdu.lower() == "all":
            raise ProbcatValueError(
                f"{_said(p)}: hdu=all reads each image of one file; of one file per band, "
                "name the HDU to read in each (hdu=N or hdu=NAME)"
            )
        if hdu is None:
            names = [(hdu, stem)]
        else:
            from probcat.io import image_hdu_names

            hdus = image_hdu_names(p) if hdu.lower() == "all" else [hdu]
            names = [(h, f"{stem}_{re.sub(r'[^A-Za-z0-9_.+-]', '_', h)}") for h in hdus]
        for h, name in names:
            if name in seen:
                raise ProbcatValueError(
                    f"{_said(p)} and {_said(seen[name])} share the name {name!r}: their "
                    "catalogs would collide"
                )
            seen[name] = p
            jobs.append(Job(first, out / f"{name}{suffix}", m, w, h, bands))
    inputs = {f.resolve() for p, m, w, _ in rows for f in _files(p, m, w)}
    for j in jobs:
        if j.output.resolve() in inputs:
            raise ProbcatValueError(f"{j.output}: the catalog would overwrite an input image")
    return jobs


def _files(image, mask, weight) -> list[Path]:
    """Every file of an entry: its image file (or files, one per band), mask and weight."""
    files = list(image.values()) if isinstance(image, dict) else [image]
    return files + [f for f in (mask, weight) if f is not None]


def _said(image) -> str:
    """An entry's image as messages name it: its file, or its files (one per band)."""
    if isinstance(image, dict):
        return " ".join(f"{b}={f}" for b, f in image.items())
    return str(image)


def group_bands(rows: list, progress: bool = False) -> list:
    """``(image, mask, weight, hdu, stem)`` of each :func:`plan` entry ``(image, mask,
    weight, hdu)``, the files given alone (no mask, weight map or HDU) that are one image in
    several bands gathered into one entry (``image`` a dict ``{band: file}``, ugrizy in
    their order; ``stem`` the catalog's name; None: the image file's stem).

    Files are one image when each holds one plane whose header names its band
    (:func:`probcat.io.band_of_file`: ``BAND``, ``FILTER``...), their paths are the same
    but for that band's letter, a word of the file name (``patch_u.fits``,
    ``calexp-HSC-I-9813.fits``) or a whole directory name (``i/patch.fits``), the bands
    differ, and they share one pixel grid (size, and WCSs within 0.05 px). Anything else is
    read file by file, as before: an image of one band, a multi-band file, files whose names
    differ otherwise or that name no band. Only files with a one-letter word in their path
    have their headers read (about 2 ms each; ``progress``: a bar where they are over a
    thousand)."""
    from probcat.io import band_of_file, files_stem, image_stem, same_grid, without_band

    groups: dict = {}  # key: the path with its band's letter taken out
    found: dict = {}  # row index -> (band, (H, W), wcs, stem without the band)
    candidates = []
    for k, (p, m, w, hdu) in enumerate(rows):
        if isinstance(p, dict) or (m, w, hdu) != (None, None, None):
            continue
        words = [*_words(image_stem(p)), *p.parent.parts]
        if any(len(word) == 1 and word.isalpha() for word in words):
            candidates.append(k)  # a band letter in its path: its header is read
    from tqdm.auto import tqdm

    bar = tqdm(
        candidates, desc="bands", unit="file", disable=not progress or len(candidates) < 1000
    )
    for k in bar:
        p = rows[k][0]
        got = band_of_file(p)
        if got is None:
            continue
        band, shape, wcs = got
        key, stem = without_band(p, band)
        if key is None:
            continue
        found[k] = (band, shape, wcs, stem)
        groups.setdefault(key, []).append(k)
    gathered: dict = {}  # the first row of each group -> the group's rows
    for members in groups.values():
        bands = [found[k][0] for k in members]
        grids = [found[k][1:3] for k in members]
        if (
            len(members) > 1
            and len(set(bands)) == len(bands)
            and all(same_grid(grids[0], g) for g in grids[1:])
        ):
            gathered[members[0]] = members
    inside = {k for members in gathered.values() for k in members}
    out = []
    for k, (p, m, w, hdu) in enumerate(rows):
        if k in gathered:
            members = sorted(gathered[k], key=lambda j: _band_order(found[j][0]))
            files = {found[j][0]: rows[j][0] for j in members}
            out.append((files, None, None, None, found[k][3] or "".join(files)))
        elif k not in inside:
            out.append((p, m, w, hdu, files_stem(p) if isinstance(p, dict) else None))
    return out


def _band_order(band: str) -> int:
    """ugrizy first, in their order (files found in a folder's alphabetical order: g, i,
    r, u... are then read u, g, r...); any other band after them."""
    return "ugrizy".find(band) % 7


def _words(name: str) -> list[str]:
    from probcat.io import SEPARATORS

    return [w for w in re.split(SEPARATORS, name) if w]


def _entry(x) -> tuple:
    """``(image, mask, weight, hdu)`` of a :func:`plan` entry (a path, a dict ``{band:
    file}``, or a tuple of them); a dict's bands are checked (one letter each, once)."""
    if isinstance(x, dict):
        x = (x,)
    if not isinstance(x, (tuple, list)):
        return Path(x), None, None, None
    if not 1 <= len(x) <= 4:
        raise ProbcatValueError(
            f"an image entry is a path or (image, mask, weight, hdu), got {x!r}"
        )
    x = [*x, None, None, None][:4]
    image = _band_files(x[0]) if isinstance(x[0], dict) else Path(x[0])
    paths = tuple(None if v is None else Path(v) for v in x[1:3])
    hdu = x[3]
    if hdu is not None and (isinstance(hdu, bool) or not isinstance(hdu, (str, int))):
        raise ProbcatValueError(f"an entry's hdu is an index, an EXTNAME or 'all', got {hdu!r}")
    return (image, *paths, None if hdu is None else str(hdu).strip())


def _band_files(files: dict) -> dict:
    """``{band: Path}`` of an image's files, one per band; a one-line error for a band that
    is not one (a single letter, or a filter name that ends in one: ``HSC-I``), or twice."""
    from probcat.io import band_letter

    out: dict = {}
    for band, f in files.items():
        letter = band_letter(band)
        if letter is None or letter in out:
            why = f"band {letter} given twice" if letter in out else "not a band (u, g, r...)"
            raise ProbcatValueError(f"{band}={f}: {why}")
        out[letter] = Path(f)
    if not out:
        raise ProbcatValueError("an image of one file per band names no file")
    return out


@lru_cache(maxsize=2)
def _detector(weights: str | None, threads="auto", device=None):
    """The detector, loaded once per (worker) process."""
    from probcat.api import load

    return load(weights, threads=threads, kind="detection", device=device)


@lru_cache(maxsize=2)
def _estimator(weights: str, threads="auto", device=None):
    """The photo-z estimator, loaded once per (worker) process."""
    from probcat.api import load

    return load(weights, threads=threads, kind="photoz", device=device)


@lru_cache(maxsize=2)
def _deblender(weights: str, threads="auto", device=None):
    """The deblender, loaded once per (worker) process."""
    from probcat.api import load

    return load(weights, threads=threads, kind="deblender", device=device)


def run_device(device, serial: bool):
    """The device a run's images are processed on: ``device`` when given; else probcat's
    default (a GPU when present) for a serial run, and the CPU for Dask workers."""
    if device is not None:
        return str(device)
    return None if serial else "cpu"


def process_image(
    image: str,
    output: str,
    mask: str | None,
    weight: str | None,
    options: dict,
    hdu: str | None = None,
    bands: list | None = None,
) -> dict:
    """Detect one image (with its ``mask`` file and ``weight`` map, if any; its HDU ``hdu``
    of a file with several; ``bands``: ``[(band, file), ...]`` for an image of one file per
    band, of which a detection-only run reads the detector's bands alone) and write its
    catalog atomically; with ``options["photoz"]``
    (photo-z weights), estimate the galaxies' redshift PDFs too (:func:`probcat.photoz`):
    the catalog gets their columns and the PDFs go to
    :func:`probcat.redshift.pdf.pdf_path`, written before the
    catalog, whose presence marks the image done; with ``options["deblend"]`` (deblender
    weights), deblend and measure every source, with flux posteriors from
    ``options["samples"]`` posterior samples (:func:`probcat.deblend`: the catalog gets
    its columns; no model or residual image). Never raises: the result says what
    happened (``rows``, ``seconds``, ``warnings``, ``error``)."""
    t0 = time.perf_counter()
    job = Job(Path(image), Path(output), hdu=hdu, bands=tuple(bands or ()))
    result = {"image": job.label, "output": str(output), "rows": 0, "error": None}
    try:
        from probcat.io import check_planes_found, read_bands, read_image

        threads, device = options.get("threads", 1), options.get("device")
        det = _detector(options.get("weights"), threads, device)
        pz_weights = options.get("photoz")
        est = _estimator(pz_weights, threads, device) if pz_weights else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            files = dict(job.bands)
            if est is None and mask is weight is None and set(det.bands) <= set(files):
                # the detector's bands alone (a mask or weight map may hold every band's)
                files = {b: files[b] for b in det.bands}
            read = partial(read_bands, files) if files else partial(read_image, image)
            data = read(
                mask_planes=options.get("mask_planes"), weight=weight,
                weight_type=options.get("weight_type", "weight"), hdu=hdu,
            )  # fmt: skip
            check_planes_found(files or [image], options.get("mask_planes"), mask)
            if mask is not None:
                from probcat.masking import read_mask

                mask = read_mask(mask, options.get("mask_planes"), hdu)
            common = dict(
                mask=mask,
                threshold=options.get("threshold", 0.5),
                background=options.get("background", "auto"),
                gain=options.get("gain"),
                noise_sigma=options.get("noise_sigma"),
                seeing=options.get("seeing", "auto"),
                rescue_bright=options.get("rescue_bright", False),
                real_shapes=options.get("real_shapes"),
                cutout=options.get("cutout"),
            )
            if options.get("deblend"):
                from probcat.api import deblend

                dbl = _deblender(options["deblend"], threads, device)
                res = deblend(data, weights=det, deblender=dbl, samples=options["samples"],
                              method=options["method"], **common)  # fmt: skip
            elif est is None:
                res = det.detect(data, **common)
            else:
                from probcat.api import photoz
                from probcat.redshift.pdf import pdf_path, write_ensemble

                scale = options.get("width_scale", 1.0)
                res = photoz(data, estimator=est, detector=det, width_scale=scale, **common)
                if res.ensemble is not None:
                    write_ensemble(res.ensemble, pdf_path(output))
                else:  # no galaxy: no PDFs (nor those of an earlier, killed run)
                    pdf_path(output).unlink(missing_ok=True)
        cat = res.catalog
        cat.meta["image"] = (
            ", ".join(f"{b}={Path(f).name}" for b, f in files.items())
            if files
            else Path(image).name
        ) + ("" if hdu is None else f"[{hdu}]")
        h, w = data.image.shape[1:]
        centre = sky_positions(res.wcs, [(w - 1) / 2], [(h - 1) / 2], warn=False)
        if centre is not None:
            cat.meta["centre"] = [float(centre[0][0]), float(centre[1][0])]
        cat.write(output, wcs=res.wcs)
        result["rows"] = len(cat)
        result["evidence"] = cat.meta.get("calibration_evidence")  # pooled by run()
        result["warnings"] = sorted({str(w.message) for w in caught})
    except ProbcatError as e:
        result["error"] = str(e)
    except Exception as e:  # a worker must report, not die: the run summary lists it
        result["error"] = f"{type(e).__name__}: {e}"
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def run(
    images,
    out,
    *,
    weights: str | None = None,
    threshold: float = 0.5,
    background: str = "auto",
    gain=None,
    noise_sigma=None,
    seeing="auto",
    rescue_bright: bool = True,
    real_shapes: float | None = None,
    cutout: float | None = None,
    mask_planes=None,
    weight_type: str = "weight",
    suffix: str = ".parquet",
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
    photoz: str | None = None,
    width_scale: float = 1.0,
    device=None,
    deblend: str | None = None,
    samples: int | None = None,
    method: str | None = None,
) -> dict:
    """Catalogs of ``images`` into ``out`` (see the module docstring); returns the run
    summary (also written to ``out/run_summary.json``): images, processed, skipped
    (finished before), failed (with the errors), rows, seconds. ``mask_planes``: of LSST
    image files, the mask planes read as no data; ``weight_type``: what the entries' weight
    maps hold (:func:`probcat.io.read_image`). ``photoz``: photo-z weights (a name or a
    file; ``"default"``: ``photoz_lsst_ugrizy``): each catalog gets its galaxies' redshift
    PDFs as :func:`probcat.photoz` gives them (the detector then defaults to its
    ``detection_lsst_ugrizy``), the PDFs written beside it
    (:func:`probcat.redshift.pdf.pdf_path`); ``width_scale``: a factor on their widths
    (:meth:`probcat.redshift.estimator.PhotozEstimator.fit_widths`). ``device``: where the
    networks run (:func:`run_device`: default a GPU when present for a serial run, the CPU
    for Dask workers). ``rescue_bright``, ``real_shapes``, ``cutout``: as
    :func:`probcat.detect`'s (stated probabilities: ``"pooled"`` over a run's images is
    :func:`probcat.pooled_evidence` of a first run's catalogs). ``deblend``:
    deblender weights (``"default"``: ``deblender_lsst_i``): each catalog gets every
    source's deblended measurements and flux posteriors as :func:`probcat.deblend` gives
    them, from ``samples`` posterior samples (default 100; 0: point measurements only),
    the deblended light by ``method`` (default ``"conserve"``); no model or residual
    images are written."""
    from probcat.api import seeing_option
    from probcat.background import check_mode, wants_measured_noise

    check_mode(background)
    if not 0.0 <= threshold < 1.0:
        raise ProbcatValueError(f"threshold must lie in [0, 1), got {threshold}")
    check_workers(workers)
    if threads is not None:  # the bound of every command (4 per core), before any work
        from probcat.runtime import threads_for

        threads_for(threads, 0)
    wants_measured_noise(noise_sigma)  # bad values fail here, before any work
    from probcat.io import check_weight_type

    check_weight_type(weight_type)
    seeing_option(seeing)
    from probcat.infer.reliability import check_evidence

    real_shapes = check_evidence(real_shapes, "real_shapes", pooled=False)
    cutout = check_evidence(cutout, "cutout", pooled=False)
    from probcat.redshift.estimator import check_width_scale

    width_scale = check_width_scale(width_scale)
    if width_scale != 1.0 and photoz is None:
        raise ProbcatValueError("width_scale applies to photo-z PDFs: it needs photoz")
    if device is not None:
        from probcat.runtime import choose_device

        choose_device(device)  # a device that is not there: an error before any work
    deblend, samples, method = _deblend_options(deblend, samples, method, photoz)
    jobs = plan(images, out, suffix, progress)
    todo = [j for j in jobs if not j.output.exists()]
    summary = {"images": len(jobs), "to_process": len(todo), "skipped": len(jobs) - len(todo),
               # images of one file per band (found among the files given, or given so)
               "band_file_images": sum(1 for j in jobs if j.bands)}  # fmt: skip
    serial = workers == 0 and scheduler is None
    # serially: this process's threads (auto); on Dask: one torch thread per worker process
    if threads is not None and not serial:
        raise ProbcatValueError("threads applies to serial runs (workers=0); a Dask worker "
                                "runs one torch thread")  # fmt: skip
    if photoz is not None:
        from probcat.api import DEFAULT_PHOTOZ, DEFAULT_PHOTOZ_DETECTOR

        photoz = DEFAULT_PHOTOZ if photoz == "default" else photoz
        weights = weights or DEFAULT_PHOTOZ_DETECTOR
    options = {"weights": weights, "threshold": threshold, "background": background,
               "gain": gain, "noise_sigma": noise_sigma, "seeing": seeing,
               "rescue_bright": bool(rescue_bright), "real_shapes": real_shapes,
               "cutout": cutout,
               "mask_planes": mask_planes, "weight_type": weight_type,
               "threads": (threads or "auto") if serial else 1, "photoz": photoz,
               "width_scale": width_scale, "deblend": deblend, "samples": samples,
               "method": method, "device": run_device(device, serial)}  # fmt: skip
    if dry_run:
        _same_options(out, options, summary["skipped"], write=False)
        return {**summary, "dry_run": True, "outputs": [str(j.output) for j in todo],
                "band_file_labels": [j.label for j in todo if j.bands]}  # fmt: skip
    if not serial and scheduler is None and todo:
        _start_forkserver()  # its imports overlap with the weights loading below
    # bad weights fail here, in one line, before anything is written
    det = _detector(weights, options["threads"], options["device"])
    if photoz is not None:
        from probcat.api import check_photoz_detector

        check_photoz_detector(det, _estimator(photoz, options["threads"], options["device"]))
    if deblend is not None:
        from probcat.api import check_deblender_bands

        check_deblender_bands(_deblender(deblend, options["threads"], options["device"]), det)
    t0 = time.perf_counter()
    timing: dict = {}
    fresh = not (Path(out) / OPTIONS).exists()
    with new_output_dir(out):  # a run that fails before its first catalog leaves nothing
        _same_options(out, options, summary["skipped"])
        try:
            _remove_temporaries(out)  # of a killed run
            results = list(_execute(todo, options, workers, scheduler, progress, timing))
        except BaseException:  # e.g. no Dask scheduler at that address, or Ctrl-C
            if fresh and not any(p.suffix in SUFFIXES for p in Path(out).iterdir()):
                (Path(out) / OPTIONS).unlink(missing_ok=True)
            raise
    order = {str(j.output): k for k, j in enumerate(todo)}  # finished in any order on Dask
    results.sort(key=lambda r: order.get(r["output"], len(order)))  # reported in the list's
    seconds = time.perf_counter() - t0
    _remove_temporaries(out)  # of a worker killed midway (its task ran again elsewhere)
    failed = [{"image": r["image"], "error": r["error"]} for r in results if r["error"]]
    from probcat.infer.reliability import pool_records

    summary.update(
        processed=len(results) - len(failed),
        failed=failed,
        rows=int(sum(r["rows"] for r in results)),
        seconds=round(seconds, 2),
        images_per_hour=round(3600 * len(results) / seconds, 1) if results else None,
        # one image's own time (read, detect, write) on its worker, median over the images
        image_seconds_median=(
            round(float(np.median([r["seconds"] for r in results])), 3) if results else None
        ),
        mode="serial" if serial else "dask",
        # starting the local cluster (worker processes importing torch, loading weights)
        cluster_start_s=round(timing.get("cluster_start_s", 0.0), 2),
        warnings={r["image"]: r["warnings"] for r in results if r.get("warnings")},
        # what the images' detections say together of their galaxies and layout (the
        # probability calibration's weights; each image was read by its own, unless stated)
        pooled_evidence=pool_records([r.get("evidence") for r in results]),
    )
    text = json.dumps(summary, indent=1)
    atomic_write(Path(out) / SUMMARY, lambda tmp: Path(tmp).write_text(text))
    return summary


OPTIONS = "run_options.json"  # in the output directory: the options its catalogs were made with
# the options that change a catalog (not where or how fast it is made)
_CATALOG_OPTIONS = ("weights", "threshold", "background", "gain", "noise_sigma", "seeing",
                    "mask_planes", "weight_type", "photoz", "width_scale",
                    "rescue_bright", "deblend", "samples", "method", "real_shapes",
                    "cutout")  # fmt: skip
# later options, as the catalogs of a folder written before them were made
_ADDED_OPTIONS = {"rescue_bright": False, "deblend": None, "samples": 0, "method": None,
                  "real_shapes": None, "cutout": None}  # fmt: skip


def _deblend_options(deblend, samples, method, photoz) -> tuple:
    """``(deblend, samples, method)`` of :func:`run` checked, with their defaults: without
    ``deblend``, ``(None, 0, None)`` (``samples`` and ``method`` need it)."""
    if deblend is None:
        if samples or method is not None:
            raise ProbcatValueError("samples and method apply to deblending: they need deblend")
        return None, 0, None
    if photoz is not None:
        raise ProbcatValueError(
            "deblend and photoz: the deblender reads one band, photo-z six; run them "
            "separately (two output directories)"
        )
    from probcat.api import DEFAULT_DEBLENDER, check_samples
    from probcat.infer.deblend import check_method
    from probcat.measure import DEFAULT_METHOD

    samples = check_samples(100 if samples is None else samples)
    method = check_method(DEFAULT_METHOD if method is None else method)
    return (DEFAULT_DEBLENDER if deblend == "default" else str(deblend)), samples, method


def _same_options(out, options: dict, done: int, write: bool = True) -> None:
    """Record in ``out/run_options.json`` the options that change a catalog (``write``); a
    one-line error, before any work, when the ``done`` catalogs a rerun would skip, or any
    other catalog of the folder, were made with other options (they would not be what was
    asked for, and a HATS catalog of the folder would mix them)."""
    from probcat.weights import DEFAULT_DETECTION

    want = {k: options[k] for k in _CATALOG_OPTIONS}
    want["weights"] = want["weights"] or DEFAULT_DETECTION
    want = json.loads(json.dumps(want, default=str))  # as it reads back (tuples as lists)
    path = Path(out) / OPTIONS
    try:
        have = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        have = None  # unreadable: as for a run before the file was written
    if isinstance(have, dict):  # options added since the file was written: their defaults
        have = {**_ADDED_OPTIONS, **have}
    if isinstance(have, dict) and have != want:
        # the folder's catalogs make one HATS catalog: those of other images count too
        done = max(done, sum(1 for p in Path(out).glob("*") if p.suffix in SUFFIXES))
    if done and isinstance(have, dict) and have != want:
        changed = [f"{k} {have.get(k)!r} -> {want[k]!r}" for k in want if have.get(k) != want[k]]
        hint = ""
        if have.get("rescue_bright") is False and want["rescue_bright"] is True:
            hint = ", or continue without the rescue of bright objects (--no-rescue-bright)"
        raise ProbcatValueError(
            f"{out}: its {done} finished catalogs were made with other options "
            f"({'; '.join(changed)}); a rerun skips them: give another output directory, or "
            f"remove them to remake them{hint}"
        )
    if write:
        text = json.dumps(want, indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _remove_temporaries(out) -> None:
    """The temporary files of atomic writes that never finished (``.<name>.<random>``)."""
    for pattern in (".*.parquet*", ".*.fits*"):
        for tmp in Path(out).glob(pattern):
            tmp.unlink(missing_ok=True)


def check_workers(workers) -> None:
    """A clear error for a local worker count that is not an integer from 0 to
    :func:`probcat.runtime.max_threads` (4 per core, at least 8): each worker is a process
    of its own, holding its own copy of torch and the networks (a third of a GB or more), so a typo
    such as 1000 would start processes until the machine ran out of memory."""
    if workers is None:
        return
    from probcat.runtime import max_threads

    top = max_threads()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= top:
        raise ProbcatValueError(
            f"workers must be an integer from 0 to {top} (4 per core here, at least 8; 0 runs "
            f"serially), got {workers!r}"
        )


def _local_cluster(n: int):
    """A local Dask cluster of ``n`` one-thread worker processes."""
    import dask
    from dask.distributed import LocalCluster

    method = "spawn" if sys.platform == "win32" else "forkserver"
    try:
        with dask.config.set({"distributed.worker.multiprocessing-method": method}):
            with _main_script_hidden():
                return LocalCluster(  # forked from the server run() started
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
                )
    except Exception as e:
        raise ProbcatError(
            f"the local Dask cluster did not start ({type(e).__name__}: {e}); run serially "
            "(workers=0, --workers 0) or on a running Dask scheduler (scheduler=, --scheduler)"
        ) from e


@contextlib.contextmanager
def _main_script_hidden():
    """While the local workers start, a ``__main__`` module without a file: Python's
    ``multiprocessing`` has each new process import the calling script (its ``__main__``),
    which runs the script again there, the run included, unless the script starts it under
    ``if __name__ == "__main__":``. probcat's tasks need nothing from that script (their
    functions are probcat's), so the workers do without it and a script that starts a run at
    its top level works as the same run serially does. A worker that Dask restarts later
    (after a crash) imports the script as usual."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _start_forkserver() -> None:
    """Start the server process the local cluster's workers are forked from, importing
    probcat and torch there once (while this process loads its own weights), so that the
    workers start with them imported. Forking this process instead is not safe: its other
    threads (Dask's event loop, the progress bar) may hold a lock, of a logger or a file, at
    the moment of the fork, and the worker then waits on it forever. No-op where the server
    already runs, on Windows (spawned workers) and in a child process."""
    import multiprocessing
    from multiprocessing import forkserver

    if sys.platform == "win32" or multiprocessing.parent_process() is not None:
        return

    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["distributed", "torch", "probcat.scale", "probcat.api", "probcat.io", "probcat.weights",
         "probcat.infer.detect", "galsim", "sep", "pyarrow.parquet"]
    )  # fmt: skip
    forkserver.ensure_running()  # returns at once; the server imports in the background


def _name(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _band_names(job: Job) -> list | None:
    """``[(band, file), ...]`` of a job's image of one file per band (None: one file)."""
    return [(b, str(f)) for b, f in job.bands] or None


def _execute(jobs: list[Job], options: dict, workers, scheduler, progress, timing=None):
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="images", unit="img", disable=not progress)
    if not jobs:
        bar.close()
        return
    if workers == 0 and scheduler is None:
        for j in jobs:
            yield process_image(
                str(j.image), str(j.output), _name(j.mask), _name(j.weight), options, j.hdu,
                _band_names(j),
            )  # fmt: skip
            bar.update()
        bar.close()
        return
    from dask.distributed import Client, as_completed

    cluster = None
    t0 = time.perf_counter()
    try:
        if scheduler is None:  # no more workers than images: each would start for nothing
            cluster = _local_cluster(min(workers or os.cpu_count() or 1, len(jobs)))
        if timing is not None:
            timing["cluster_start_s"] = time.perf_counter() - t0
        try:
            client = Client(scheduler or cluster)
        except (OSError, ValueError) as e:  # a scheduler address that answers nothing
            if scheduler is None:
                raise
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ProbcatIOError(f"cannot reach the Dask scheduler {scheduler}: {msg}") from None
        with client:
            futures = client.map(
                process_image,
                [str(j.image) for j in jobs],
                [str(j.output) for j in jobs],
                [_name(j.mask) for j in jobs],
                [_name(j.weight) for j in jobs],
                [options] * len(jobs),
                [j.hdu for j in jobs],
                [_band_names(j) for j in jobs],
                pure=False,
            )
            for fut in as_completed(futures):
                yield fut.result()
                bar.update()
    finally:
        bar.close()
        if cluster is not None:
            cluster.close()


# ---- the HATS catalog ---------------------------------------------------------------------
def _unit(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)


def dedup_by_core(ra, dec, own: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Which sources to keep: those whose own image (index ``own``) has the nearest centre
    ``centres`` ``(n_images, 2)`` (ra, dec in degrees) among all images."""
    if len(ra) == 0:
        return np.zeros(0, bool)
    nearest = np.argmax(_unit(ra, dec) @ _unit(centres[:, 0], centres[:, 1]).T, axis=1)
    return nearest == np.asarray(own)


def _is_hats(folder: Path) -> bool:
    return (folder / "hats.properties").is_file() or (
        (folder / "properties").is_file() and (folder / "partition_info.csv").is_file()
    )


def check_hats_target(out) -> Path:
    """Before any work: ``out`` can take a HATS catalog: a new path, an empty directory or
    an earlier HATS catalog (replaced whole), in a place where files can be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ProbcatValueError(f"{out}: exists and is not a directory; give a new path for "
                                "the HATS catalog")  # fmt: skip
    if out.is_dir() and any(out.iterdir()) and not _is_hats(out):
        raise ProbcatValueError(f"{out}: a directory of other files, not a HATS catalog; give "
                                "a new path for the HATS catalog")  # fmt: skip
    check_writable_dir(out.parent)
    return out


def build_hats(catalog_dir, out, *, dedup: bool = True, client=None) -> int:
    """A HATS catalog ``out`` (a directory, whose name is the catalog's)
    from the per-image Parquet catalogs in ``catalog_dir``, with columns ``image`` (the
    image file) and ``row`` (its catalog row) added; returns the number of rows written.
    An earlier HATS catalog at ``out`` is replaced once the new one is complete; any other
    file or non-empty directory there is refused (:func:`check_hats_target`)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from probcat.catalog import FullCatalog

    out = check_hats_target(out)
    files = sorted(Path(catalog_dir).glob("*.parquet"))
    if not files:
        raise ProbcatValueError(f"{catalog_dir}: no Parquet catalogs to merge")
    cats = [FullCatalog.read(f) for f in files]
    for f, c in zip(files, cats):
        if "ra" not in c.colnames or "centre" not in c.meta:
            raise ProbcatValueError(f"{f}: no ra/dec (its image has no celestial WCS)")
    centres = np.array([c.meta["centre"] for c in cats])
    staging = out.parent / f".{out.name}.staging"
    new, old = out.parent / f".{out.name}.new", out.parent / f".{out.name}.old"
    for d in (staging, new, old):  # of a killed run
        shutil.rmtree(d, ignore_errors=True)
    staging.mkdir(parents=True)
    total = 0
    try:
        inputs = []
        for k, (f, c) in enumerate(zip(files, cats)):
            keep = np.ones(len(c), bool)
            if dedup:
                keep = dedup_by_core(np.asarray(c["ra"]), np.asarray(c["dec"]), k, centres)
            cols = {n: np.asarray(c[n])[keep] for n in c.colnames}
            cols["image"] = np.full(int(keep.sum()), c.meta.get("image", f.stem), dtype=object)
            cols["row"] = np.flatnonzero(keep).astype(np.int64)
            arrays = {}
            for n, v in cols.items():
                if v.ndim > 1:
                    width = int(np.prod(v.shape[1:]))
                    arrays[n] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), width)
                else:
                    arrays[n] = pa.array(v)
            path = staging / f"{k:06d}.parquet"
            pq.write_table(pa.table(arrays), path)
            inputs.append(str(path))
            total += int(keep.sum())
        new.mkdir()
        _import(inputs, new / out.name, client)  # the catalog keeps its name
        if out.exists():  # an earlier catalog (or an empty directory) goes once this is done
            out.rename(old)
        (new / out.name).rename(out)
    finally:
        for d in (staging, new, old):
            shutil.rmtree(d, ignore_errors=True)
    return total


def _import(inputs: list[str], out: Path, client) -> None:
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    args = ImportArguments(
        output_artifact_name=out.name,
        input_file_list=inputs,
        file_reader="parquet",
        ra_column="ra",
        dec_column="dec",
        output_path=str(out.parent),
        tmp_dir=str(out.parent / f".{out.name}.tmp"),
        resume=False,
        progress_bar=False,
    )
    if client is not None:
        pipeline_with_client(args, client)
        return
    from dask.distributed import Client

    with Client(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        pipeline_with_client(args, c)
