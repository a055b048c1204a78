"""A bank of GalSim-rendered, PSF-convolved source stamps from which scenes are composed.

Direct GalSim rendering costs ~2-3 ms per galaxy per band (the de Vaucouleurs bulge's
FFT dominates), so fresh training scenes cannot be drawn on the fly. The bank renders
every galaxy of a population once per band, at a random sub-pixel offset (or exactly
centred), on a 255-px stamp trimmed to where it exceeds ``tol`` times the noise sigma,
and caches it on disk keyed by its configuration. Stars are unit-flux PSF stamps at
``n_star_phases`` random sub-pixel offsets, scaled by their flux.

Composition adds stamps at integer pixel positions, so a source's true centroid is its
integer pixel plus the stamp's exact sub-pixel offset. Each galaxy stamp is also used
in its 8 dihedral variants (rotations by 90 degrees and reflections: exact, because the
PSF is circular), with the offset and position angle transformed accordingly.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.table import Table

from probcat.errors import ProbcatFileError, ProbcatIOError, ProbcatValueError, warn_user
from probcat.runtime import check_memory
from probcat.simulate.cache import cache_root, default_cache_dir, touch
from probcat.simulate.prior import (
    MAG_GOLD,
    galaxy_population,
    is_builtin,
    parse_hdf_mix,
    prior_version,
)
from probcat.simulate.render import MAX_STAMP, MIN_STAMP, draw_stamp, galaxy_profile_for, snr_eq12
from probcat.survey import Band, Survey

__all__ = ["BankConfig", "SourceBank", "default_cache_dir", "dihedral"]

BANK_FORMAT = 1
# building a bank holds each stamp twice (rendered, then joined): 15-21 kB per galaxy and
# band on disk measured over this project's banks, so 2 x 20 kB
BUILD_BYTES_PER_STAMP = 40e3
# a drawn population's table: up to 340 bytes a row at its peak (morphology, 16 columns)
TABLE_BYTES_PER_ROW = 1000
STAR_REFERENCE_MAG = 19.0  # star stamps are trimmed for a star this bright


@dataclass(frozen=True)
class BankConfig:
    """What goes into a bank. Two banks with equal configs (and survey) are identical.

    Attributes:
        population: ``"parametric"``, ``"morphology"`` (or ``"morphology:f1+f2"``, a subset of
            its families), ``"dc2"``, ``"dc2:morphology[:f1+f2]"`` (DC2 colours and redshifts
            with those shapes) or a path to a FITS/Parquet catalog.
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint galaxies).
        n_galaxies: galaxies in the bank (a random subset for catalog populations).
        catalog_seed: seed of the population and of the split.
        render_seed: seed of the sub-pixel offsets.
        centered: stamps exactly centred (``single``, ``tiles`` redraws, ``central``).
        n_star_phases: star stamps at this many random sub-pixel offsets.
        tol: stamps are trimmed where the source is below ``tol`` x noise sigma.
        val_to_train: share of a catalog population's validation third moved to training
            (:func:`~probcat.simulate.prior.split_rows`).
        keep_gold: when the bank holds a random subset of a larger population, keep every
            gold galaxy (i < 25.3) and subsample the fainter ones only; scenes then draw
            each faint entry with the weight that restores the population's proportions
            (the table's ``draw_weight`` column), so a redshift network sees every gold
            galaxy at no change in the scenes' make-up.
    """

    population: str = "parametric"
    split: str = "train"
    n_galaxies: int = 20000
    catalog_seed: int = 0
    render_seed: int = 0
    centered: bool = False
    n_star_phases: int = 64
    tol: float = 2e-3
    val_to_train: float = 0.0
    keep_gold: bool = False

    def __post_init__(self):
        if self.n_galaxies < 1:
            raise ProbcatValueError(f"n_galaxies must be >= 1, got {self.n_galaxies}")
        if not 0.0 <= self.val_to_train < 1.0:
            raise ProbcatValueError(f"val_to_train must lie in [0, 1), got {self.val_to_train}")
        if not 0 < self.tol < 1:
            raise ProbcatValueError(f"tol must lie in (0, 1), got {self.tol}")


def _subsample(table: Table, config: BankConfig) -> Table:
    """``config.n_galaxies`` rows of ``table``: a random subset, or with ``keep_gold`` every
    gold galaxy plus a random subset of the others, weighted up (``draw_weight``)."""
    rng = np.random.default_rng([config.catalog_seed, 31])
    n = config.n_galaxies
    if not config.keep_gold:
        return table[np.sort(rng.choice(len(table), n, replace=False))]
    if "mag_i" not in table.colnames:
        raise ProbcatValueError("keep_gold needs the i band (the gold cut is i < 25.3)")
    gold = np.asarray(table["mag_i"], float) < MAG_GOLD
    faint = np.flatnonzero(~gold)
    n_faint = n - int(gold.sum())
    if n_faint < 1:
        raise ProbcatValueError(
            f"keep_gold: {int(gold.sum())} gold galaxies do not leave room for fainter ones "
            f"in a bank of {n}; raise n_galaxies"
        )
    pick = np.sort(
        np.concatenate([np.flatnonzero(gold), rng.choice(faint, n_faint, replace=False)])
    )
    out = table[pick]
    out["draw_weight"] = np.where(gold[pick], 1.0, len(faint) / n_faint)
    return out


def dihedral(stamp: np.ndarray, variant: int) -> np.ndarray:
    """View of ``stamp[..., y, x]`` transformed by variant 0-7 (bit 4: transpose, 2: flip
    y, 1: flip x, applied in that order)."""
    if variant & 4:
        stamp = stamp.swapaxes(-1, -2)
    if variant & 2:
        stamp = stamp[..., ::-1, :]
    if variant & 1:
        stamp = stamp[..., :, ::-1]
    return stamp


def dihedral_truth(dx, dy, beta, variant):
    """Offsets and position angle of a source after :func:`dihedral` (arrays broadcast)."""
    dx, dy, beta, variant = map(np.asarray, (dx, dy, beta, variant))
    t = (variant & 4) > 0
    dx, dy, beta = np.where(t, dy, dx), np.where(t, dx, dy), np.where(t, np.pi / 2 - beta, beta)
    f = (variant & 2) > 0
    dy, beta = np.where(f, -dy, dy), np.where(f, -beta, beta)
    f = (variant & 1) > 0
    dx, beta = np.where(f, -dx, dx), np.where(f, np.pi - beta, beta)
    return dx, dy, np.mod(beta, np.pi)


def _key_config(config: BankConfig) -> dict:
    """The config as hashed into the cache key; fields added later are left out at their
    defaults, so that banks cached before them keep their keys."""
    d = asdict(config)
    for name in ("val_to_train", "keep_gold"):
        if d[name] == BankConfig.__dataclass_fields__[name].default:
            del d[name]
    return d


@lru_cache(maxsize=16)
def _psf(band: Band):
    return band.psf()


def _trim_half(stamps: np.ndarray, thresholds: np.ndarray, max_lost: float = 5e-3) -> int:
    """Smallest half-width keeping every pixel above its band's threshold and all but
    ``max_lost`` of each band's flux."""
    n = stamps.shape[-1]
    c = n // 2
    yy, xx = np.mgrid[:n, :n]
    cheb = np.maximum(np.abs(yy - c), np.abs(xx - c))
    above = np.abs(stamps) > thresholds[:, None, None]
    h = int(cheb[above.any(0)].max()) if above.any() else 0
    for band in stamps:
        ring = np.bincount(cheb.ravel(), weights=band.ravel(), minlength=c + 1)
        outside = band.sum() - np.cumsum(ring)  # flux beyond half-width r
        h = max(h, int(np.argmax(np.abs(outside) <= max_lost * abs(band.sum()))))
    return max(h, MIN_STAMP // 2)


def _render_galaxy(args):
    row, bands, dx, dy, tol = args
    profile = galaxy_profile_for(row)
    flux = np.array([b.mag_to_flux(row[f"mag_{b.name}"]) for b in bands])
    full = np.stack([draw_stamp(profile, _psf(b), b.pixel_scale, MAX_STAMP, dx, dy) for b in bands])
    full *= flux[:, None, None]
    sigma = np.array([b.noise_sigma for b in bands])
    h = _trim_half(full, tol * sigma)
    c = MAX_STAMP // 2
    stamp = full[:, c - h : c + h + 1, c - h : c + h + 1]
    snr = np.array([snr_eq12(stamp[k], dx, dy, sigma[k]) for k in range(len(bands))])
    return stamp.astype(np.float32), flux, snr


class SourceBank:
    """Rendered stamps of a galaxy population plus unit-flux star (PSF) stamps.

    Attributes:
        survey: the survey (bands, PSFs) the stamps were rendered for.
        config: the :class:`BankConfig`.
        table: population table, row ``i`` is bank entry ``i``.
        flux: ``(N, bands)`` electrons; ``snr``: ``(N, bands)`` eq. 12 of paper 000.
        dx, dy: ``(N,)`` sub-pixel offset of each stamp's profile from its central pixel.
        half: ``(N,)`` half-width of each stamp (size ``2*half+1``).
        star_stamps: ``(P, bands, S, S)`` unit-flux PSF at offsets ``star_dx, star_dy``.
        star_snr1: ``(P, bands)`` eq. 12 SNR of a unit-flux star.
    """

    def __init__(self, survey: Survey, config: BankConfig, table: Table, arrays: dict):
        self.survey, self.config, self.table = survey, config, table
        self.flux = arrays["flux"]
        self.snr = arrays["snr"]
        self.dx, self.dy = arrays["dx"], arrays["dy"]
        self.half = arrays["half"]
        self.offsets = arrays["offsets"]
        self.pixels = arrays["pixels"]
        self.star_stamps = arrays["star_stamps"]
        self.star_dx, self.star_dy = arrays["star_dx"], arrays["star_dy"]
        self.star_snr1 = arrays["star_snr1"]
        self.mag_i = np.asarray(table[f"mag_{self._ref_band}"], float)

    @property
    def _ref_band(self) -> str:
        return "i" if "i" in self.survey.band_names else self.survey.band_names[0]

    def __len__(self) -> int:
        return len(self.flux)

    def draw(self, rng: np.random.Generator, n: int, pool: np.ndarray | None = None) -> np.ndarray:
        """``n`` random entries (of ``pool`` if given), each with probability proportional to
        its ``draw_weight`` when the table has one (:class:`BankConfig` ``keep_gold``),
        else uniform."""
        if "draw_weight" not in self.table.colnames:
            return rng.choice(pool, n) if pool is not None else rng.integers(0, len(self), n)
        w = np.asarray(self.table["draw_weight"], float)
        pool = np.arange(len(self)) if pool is None else np.asarray(pool)
        return rng.choice(pool, n, p=w[pool] / w[pool].sum())

    def stamp(self, i: int) -> np.ndarray:
        """Stamp of entry ``i``, ``(bands, 2h+1, 2h+1)`` float32 electrons."""
        n = 2 * int(self.half[i]) + 1
        o = int(self.offsets[i])
        return self.pixels[o : o + self.survey.n_bands * n * n].reshape(self.survey.n_bands, n, n)

    # ---- building, caching -----------------------------------------------------------------
    @classmethod
    def build(
        cls,
        survey: Survey,
        config: BankConfig,
        *,
        workers: int | None = None,
        progress: bool = True,
    ) -> SourceBank:
        from tqdm.auto import tqdm

        check_memory(  # a drawn population has as many rows as asked; a catalog, fewer
            config.n_galaxies * TABLE_BYTES_PER_ROW,
            f"a population table of {config.n_galaxies:,} galaxies",
            "use a smaller bank size",
        )
        table = galaxy_population(
            config.population,
            split=config.split,
            seed=config.catalog_seed,
            bands=survey.band_names,
            n=config.n_galaxies,
            val_to_train=config.val_to_train,
        )
        if len(table) > config.n_galaxies:
            table = _subsample(table, config)
        n = len(table)
        check_memory(
            n * survey.n_bands * BUILD_BYTES_PER_STAMP,
            f"a source bank of {n:,} galaxies in {survey.n_bands} band(s)",
            "use a smaller bank size",
        )
        rng = np.random.default_rng([config.render_seed, 2])
        if config.centered:
            dx = dy = np.zeros(n)
        else:
            dx, dy = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
        rows = [{c: table[c][i] for c in table.colnames} for i in range(n)]
        jobs = [(rows[i], survey.bands, float(dx[i]), float(dy[i]), config.tol) for i in range(n)]
        workers = workers or min(os.cpu_count() or 1, 8)
        bar = tqdm(total=n, desc=f"rendering {config.split} bank", unit="gal", disable=not progress)
        results = []
        # a pool's worker (daemonic) may not start processes of its own: render serially there
        if workers > 1 and n >= 64 and not mp.current_process().daemon:
            with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
                for r in pool.imap(_render_galaxy, jobs, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            for job in jobs:
                results.append(_render_galaxy(job))
                bar.update()
        bar.close()
        half = np.array([r[0].shape[-1] // 2 for r in results], dtype=np.int32)
        sizes = np.array([r[0].size for r in results], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        pixels = np.concatenate([r[0].ravel() for r in results], dtype=np.float32)
        arrays = {
            "flux": np.stack([r[1] for r in results]),
            "snr": np.stack([r[2] for r in results]),
            "dx": dx.astype(float),
            "dy": dy.astype(float),
            "half": half,
            "offsets": offsets,
            "pixels": pixels,
        }
        arrays.update(cls._star_arrays(survey, config, rng))
        return cls(survey, config, table, arrays)

    @staticmethod
    def _star_arrays(survey: Survey, config: BankConfig, rng) -> dict:
        import galsim

        p = config.n_star_phases
        sdx, sdy = rng.uniform(-0.5, 0.5, p), rng.uniform(-0.5, 0.5, p)
        sigma = survey.noise_sigma
        ref = np.array([b.mag_to_flux(STAR_REFERENCE_MAG) for b in survey.bands])
        full = np.stack(
            [
                np.stack(
                    [
                        draw_stamp(
                            galsim.DeltaFunction(),
                            _psf(b),
                            b.pixel_scale,
                            MAX_STAMP,
                            sdx[j],
                            sdy[j],
                        )
                        for b in survey.bands
                    ]
                )
                for j in range(p)
            ]
        )
        h = max(_trim_half(full[j] * ref[:, None, None], config.tol * sigma) for j in range(p))
        c = MAX_STAMP // 2
        stamps = full[:, :, c - h : c + h + 1, c - h : c + h + 1]
        snr1 = np.array(
            [
                [snr_eq12(stamps[j, k], sdx[j], sdy[j], sigma[k]) for k in range(survey.n_bands)]
                for j in range(p)
            ]
        )
        return {
            "star_stamps": stamps.astype(np.float32),
            "star_dx": sdx,
            "star_dy": sdy,
            "star_snr1": snr1,
        }

    @staticmethod
    def cache_key(survey: Survey, config: BankConfig) -> str:
        import galsim

        blob = json.dumps(
            {
                "format": BANK_FORMAT,
                "survey": survey.to_dict(),
                "config": _key_config(config),
                "galsim": galsim.__version__,
            },
            sort_keys=True,
        )
        if is_builtin(config.population):  # a built-in prior's new version: a new bank
            blob += prior_version(config.population)
        if config.population == "hdf" or parse_hdf_mix(config.population) is not None:
            # stamps cut from an image: the image too
            from probcat.simulate.hubble import hdf_path

            blob += hashlib.sha256(hdf_path().read_bytes()).hexdigest()
        if not is_builtin(config.population):
            path = Path(config.population)
            if not path.is_file():
                raise ProbcatFileError(
                    f"population {config.population!r}: neither a built-in population "
                    "(parametric, morphology[:families][+hdf], dc2, dc2:morphology, hdf) nor "
                    "a catalog file"
                )
            blob += hashlib.sha256(path.read_bytes()).hexdigest()
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def save(self, directory: str | Path) -> Path:
        """Write the bank atomically into ``directory`` (created; replaced if present)."""
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            for name in (
                "flux",
                "snr",
                "dx",
                "dy",
                "half",
                "offsets",
                "pixels",
                "star_stamps",
                "star_dx",
                "star_dy",
                "star_snr1",
            ):
                np.save(tmp / f"{name}.npy", getattr(self, name))
            self.table.write(tmp / "table.fits")
            (tmp / "bank.json").write_text(
                json.dumps(
                    {
                        "format": BANK_FORMAT,
                        "survey": self.survey.to_dict(),
                        "config": asdict(self.config),
                    },
                    indent=1,
                )
            )
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ProbcatIOError(f"{directory}: cannot write source bank ({e})") from e
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SourceBank:
        directory = Path(directory)
        try:
            meta = json.loads((directory / "bank.json").read_text())
            arrays = {
                p.stem: np.load(p, mmap_mode="r" if p.stem == "pixels" else None)
                for p in directory.glob("*.npy")
            }
            table = Table.read(directory / "table.fits")
        except (OSError, ValueError, KeyError) as e:
            raise ProbcatIOError(f"{directory}: corrupt or incomplete source bank ({e})") from e
        if meta.get("format") != BANK_FORMAT:
            raise ProbcatIOError(f"{directory}: bank format {meta.get('format')} != {BANK_FORMAT}")
        return cls(Survey.from_dict(meta["survey"]), BankConfig(**meta["config"]), table, arrays)

    @classmethod
    def load_or_build(
        cls,
        survey: Survey,
        config: BankConfig,
        *,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        progress: bool = True,
    ) -> SourceBank:
        """The cached bank for (survey, config), built and cached first if needed."""
        path = cache_root(cache_dir) / f"bank-{cls.cache_key(survey, config)}"
        if (path / "bank.json").exists():
            try:
                bank = cls.load(path)
            except ProbcatIOError:
                shutil.rmtree(path, ignore_errors=True)
            else:
                touch(path)  # last used now: `probcat cache` prunes the least recently used
                return bank
        bank = cls.build(survey, config, workers=workers, progress=progress)
        try:
            bank.save(path)
        except ProbcatIOError as e:  # an unwritable cache only costs a rebuild next time
            warn_user(f"the source bank is not cached ({e}); it is rebuilt next time")  # fmt: skip
        return bank


def paste(out: np.ndarray, stamp: np.ndarray, cx: int, cy: int, scale=1.0) -> None:
    """Add ``scale * stamp`` ``(bands, s, s)`` to ``out`` ``(bands, H, W)`` with the stamp's
    central pixel at ``(cx, cy)``, clipping at the image edges."""
    h = stamp.shape[-1] // 2
    H, W = out.shape[-2:]
    x0, x1 = max(cx - h, 0), min(cx + h + 1, W)
    y0, y1 = max(cy - h, 0), min(cy + h + 1, H)
    if x0 >= x1 or y0 >= y1:
        return
    sub = stamp[:, y0 - cy + h : y1 - cy + h, x0 - cx + h : x1 - cx + h]
    if np.ndim(scale):
        out[:, y0:y1, x0:x1] += sub * np.asarray(scale, dtype=out.dtype)[:, None, None]
    else:
        out[:, y0:y1, x0:x1] += sub


def overlap_dot(total: np.ndarray, stamp: np.ndarray, cx: int, cy: int, scale=None):
    """Per band ``(<s, s>, <s, total>)`` over the image pixels the stamp covers."""
    h = stamp.shape[-1] // 2
    H, W = total.shape[-2:]
    x0, x1 = max(cx - h, 0), min(cx + h + 1, W)
    y0, y1 = max(cy - h, 0), min(cy + h + 1, H)
    nb = stamp.shape[0]
    if x0 >= x1 or y0 >= y1:
        return np.zeros(nb), np.zeros(nb)
    sub = stamp[:, y0 - cy + h : y1 - cy + h, x0 - cx + h : x1 - cx + h].astype(np.float64)
    if scale is not None:
        sub = sub * np.asarray(scale)[:, None, None]
    tot = total[:, y0:y1, x0:x1]
    return (sub * sub).sum((1, 2)), (sub * tot).sum((1, 2))
