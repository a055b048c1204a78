"""The datasets of paper 000 (section 2.4) as named recipes, and writing them to disk.

=========  ==========  =========================================================================
recipe     size (px)   content
=========  ==========  =========================================================================
blend      98 x 98     galaxies (160 arcmin^-2) + stars (15.5 arcmin^-2), uniform positions
single     53 x 53     one isolated galaxy, exactly centred
tiles      53 x 53     blend-like scene whose central 5x5 region holds exactly one galaxy
                       (centroid uniform there); extra image ``centered``: that galaxy alone,
                       exactly centred, same noise realisation
central    73 x 73     galaxies only; central galaxy (i < 25.3) exactly centred, none other
                       in the central tile
pair       103 x 103   Table 1 pair of exponential galaxies, separation 0.1 px steps from 0,
                       one shared noise realisation (section 4.5)
=========  ==========  =========================================================================

Every recipe works for any band set (multi-band with ``population="dc2"``). Image ``i``
of a dataset depends only on ``(seed, i)`` and the bank configuration.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from probcat.catalog import (
    FullCatalog,
    atomic_write,
    concat_catalogs,
    make_wcs,
    new_output_dir,
)
from probcat.errors import ProbcatFileError, ProbcatValueError
from probcat.runtime import check_memory
from probcat.simulate.bank import BankConfig, SourceBank
from probcat.simulate.prior import GALAXY_DENSITY, MAG_GOLD, STAR_DENSITY, is_builtin
from probcat.simulate.scene import Scene, SceneConfig, SceneSimulator
from probcat.survey import Survey

__all__ = ["RECIPES", "SimulationConfig", "Simulation", "write_dataset", "PAIR_GALAXIES"]

RECIPES = ("blend", "single", "tiles", "central", "pair")
RECIPE_SHAPES = {"blend": 98, "single": 53, "tiles": 53, "central": 73, "pair": 103}
TILE = 5
PAIR_STEP = 0.1
PAIR_MAX_SEPARATION = 20.0
# paper 000 Table 1: flux (electrons), disk semi-major half-light radius a_d (arcsec),
# axis ratio q, angle beta (rad)
PAIR_GALAXIES = (
    {"flux": 2e5, "a_d": 1.5, "q": 0.7, "beta": math.pi / 4},
    {"flux": 1e5, "a_d": 1.0, "q": 0.7, "beta": 6 * math.pi / 4},
)
# peak memory of simulating an image, per pixel and band: 18-27 bytes measured here
# (8000x8000 i, 4000x4000 i and ugrizy), so 32
IMAGE_BYTES_PER_PIXEL = 32
FIELD_CENTER = (56.0, -30.0)  # deg, a DC2-like field: images are laid out around it


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines a simulated dataset (stored beside its outputs).

    Attributes:
        recipe: one of ``blend, single, tiles, central, pair``.
        n: number of images (``pair``: separations 0, 0.1, ... px, at most 201).
        seed: image seed (positions, counts, noise).
        bands: band names, e.g. ``"i"`` or ``"ugrizy"``.
        population: ``"parametric"``, ``"morphology[:families]"``, ``"dc2"``,
            ``"dc2:morphology[:families]"`` or a catalog path (see ``prior``).
        split: galaxies from ``"train"``, ``"val"`` or ``"test"``.
        years: coadd depth in years (exposure scales with it).
        bank_size: galaxies rendered into the source bank.
        catalog_seed: seed of the population and its split.
        noise: ``"gaussian"`` or ``"poisson"``.
        size: image side in pixels (0: the recipe's paper size).
        val_to_train: share of a catalog population's validation third moved to
            training (:func:`~probcat.simulate.prior.split_rows`).
        keep_gold: the bank keeps every gold galaxy (:class:`~probcat.simulate.bank.
            BankConfig`).
        seeing: the atmospheric PSF FWHM over the survey's (one factor for every band).
        psf_beta: None: a Kolmogorov atmosphere; a number: a Moffat one of that index and
            the same FWHM (:meth:`~probcat.survey.Survey.with_psf_beta`).
    """

    recipe: str = "blend"
    n: int = 100
    seed: int = 0
    bands: str = "i"
    population: str = "parametric"
    split: str = "train"
    years: float = 10.0
    bank_size: int = 20000
    catalog_seed: int = 0
    noise: str = "gaussian"
    size: int = 0
    val_to_train: float = 0.0
    keep_gold: bool = False
    seeing: float = 1.0
    psf_beta: float | None = None

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ProbcatValueError(
                f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}"
            )
        if self.n < 1:
            raise ProbcatValueError(f"n must be >= 1, got {self.n}")
        for name in ("seed", "catalog_seed"):
            if not 0 <= getattr(self, name) < 2**63:  # stored as a 64-bit FITS keyword
                raise ProbcatValueError(
                    f"{name} must be >= 0 and < 2^63, got {getattr(self, name)}"
                )
        if not (self.years > 0 and math.isfinite(self.years)):
            raise ProbcatValueError(f"years must be a positive finite number, got {self.years}")
        if not is_builtin(self.population) and not Path(self.population).is_file():
            raise ProbcatFileError(f"{self.population}: population catalog not found")
        max_pairs = int(round(PAIR_MAX_SEPARATION / PAIR_STEP)) + 1
        if self.recipe == "pair" and self.n > max_pairs:
            raise ProbcatValueError(
                f"the pair recipe has at most {max_pairs} separations, got n={self.n}"
            )
        if self.size < 0 or (0 < self.size < 2 * TILE + 1):
            raise ProbcatValueError(f"size must be 0 (recipe default) or >= {2 * TILE + 1}")
        if self.bank_size < 1:
            raise ProbcatValueError(f"bank size must be >= 1, got {self.bank_size}")
        if not 0.0 <= self.val_to_train < 1.0:
            raise ProbcatValueError(f"val_to_train must lie in [0, 1), got {self.val_to_train}")
        if not (math.isfinite(self.seeing) and 0.1 <= self.seeing <= 10):
            raise ProbcatValueError(f"seeing must be a factor from 0.1 to 10, got {self.seeing}")
        self.survey()  # checks psf_beta

    @property
    def shape(self) -> tuple[int, int]:
        s = self.size or RECIPE_SHAPES[self.recipe]
        return (s, s)

    def survey(self) -> Survey:
        survey = Survey.lsst(bands=self.bands, years=self.years)
        return survey.with_psf_scale(self.seeing).with_psf_beta(self.psf_beta)

    def bank_config(self, centered: bool = False) -> BankConfig:
        return BankConfig(
            population=self.population,
            split=self.split,
            n_galaxies=self.bank_size,
            catalog_seed=self.catalog_seed,
            centered=centered,
            val_to_train=self.val_to_train,
            keep_gold=self.keep_gold,
        )


class Simulation:
    """Generates the images of a :class:`SimulationConfig` one at a time. ``psf_scale``:
    other seeing (:meth:`~probcat.survey.Survey.with_psf_scale`: one factor, or one per
    band), for training data; datasets written to disk keep the survey's own.

    Example:
        >>> sim = Simulation(SimulationConfig(recipe="single", n=2, bank_size=16))  # doctest: +SKIP
        >>> scene = sim.scene(0)                                                   # doctest: +SKIP
    """

    def __init__(
        self,
        config: SimulationConfig,
        *,
        cache_dir=None,
        workers=None,
        progress: bool = True,
        psf_scale=None,
    ):
        self.config = config
        self.survey = config.survey()
        if psf_scale is not None:
            self.survey = self.survey.with_psf_scale(psf_scale)
        h, w = config.shape
        check_memory(
            IMAGE_BYTES_PER_PIXEL * h * w * self.survey.n_bands,
            f"a {h}x{w} image in {self.survey.n_bands} band(s)",
            "use a smaller image size",
        )
        needs_offset = config.recipe in ("blend", "tiles", "central")
        needs_centered = config.recipe in ("single", "tiles", "central")
        load = lambda centered: SourceBank.load_or_build(  # noqa: E731
            self.survey,
            config.bank_config(centered),
            cache_dir=cache_dir,
            workers=workers,
            progress=progress,
        )
        self.bank = load(False) if needs_offset else None
        self.centered_bank = load(True) if needs_centered else None
        stars = STAR_DENSITY if config.recipe in ("blend", "tiles") else 0.0
        galaxies = GALAXY_DENSITY if config.recipe != "single" else 0.0
        scene_cfg = SceneConfig(h, w, galaxies, stars, noise=config.noise)
        self.sim = SceneSimulator(self.bank, scene_cfg) if self.bank is not None else None
        self.csim = (
            SceneSimulator(self.centered_bank, scene_cfg)
            if self.centered_bank is not None
            else None
        )
        self._pair_noise = None

    def __len__(self) -> int:
        return self.config.n

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, i])

    def wcs(self, i: int):
        h, w = self.config.shape
        ra0, dec0 = FIELD_CENTER
        step_ra = w * self.survey.pixel_scale / 3600.0 / math.cos(math.radians(dec0))
        step_dec = h * self.survey.pixel_scale / 3600.0
        rows = int((90.0 - dec0) // step_dec) + 1  # rows of 100 images up to the pole, then again
        return make_wcs(
            (h, w),
            self.survey.pixel_scale,
            ra0 + (i % 100) * step_ra,
            dec0 + (i // 100 % rows) * step_dec,
        )

    def scene(self, i: int) -> tuple[Scene, dict[str, np.ndarray]]:
        """Image ``i`` and its extra images (``{"centered": ...}`` for ``tiles``)."""
        return getattr(self, f"_{self.config.recipe}")(self.rng(i), i)

    def draw(self, rng: np.random.Generator, *, targets: bool = False):
        """A fresh image of the recipe drawn with ``rng`` (training data, not a dataset
        index). ``targets``: the scene keeps its noiseless image and ``tiles`` adds the
        noiseless centred redraw as extra ``"centered_noiseless"``."""
        if self.config.recipe == "pair":
            raise ProbcatValueError("the pair recipe is a fixed sequence; use scene(i)")
        return getattr(self, f"_{self.config.recipe}")(rng, 0, targets)

    # ---- recipes -----------------------------------------------------------------------------
    def _blend(self, rng, i, targets=False):
        return self.sim.sample(rng, keep_noiseless=targets), {}

    def _centre(self):
        h, w = self.config.shape
        return w // 2, h // 2

    def _finish(self, sim, rng, parts):
        cat = sim.make_catalog(parts)
        noiseless = sim.compose(cat)
        noise = (
            sim.add_noise(rng, np.zeros_like(noiseless)) if sim.config.noise == "gaussian" else None
        )
        image = noiseless + noise if noise is not None else sim.add_noise(rng, noiseless)
        return Scene(image, sim.truth(cat, noiseless), noiseless), noise

    def _single(self, rng, i, targets=False):
        cx, cy = self._centre()
        entry = rng.integers(0, len(self.centered_bank))
        part = self.csim.galaxy_columns([entry], [rng.integers(0, 8)], [cx], [cy])
        scene, _ = self._finish(self.csim, rng, [part])
        return (scene if targets else replace(scene, noiseless=None)), {}

    def _others(self, rng, gal_only: bool):
        """A scene catalog with nothing in the central tile."""
        cat = self.sim.sample_catalog(rng)
        cx, cy = self._centre()
        lo_x, lo_y = cx - TILE // 2 - 0.5, cy - TILE // 2 - 0.5
        inside = (
            (cat["x"] >= lo_x)
            & (cat["x"] < lo_x + TILE)
            & (cat["y"] >= lo_y)
            & (cat["y"] < lo_y + TILE)
        )
        keep = ~inside & (cat["galaxy"] if gal_only else True)
        return {k: v[keep] for k, v in cat.columns.items() if k != "mag"}

    def _tiles(self, rng, i, targets=False):
        cx, cy = self._centre()
        entry, variant = int(self.bank.draw(rng, 1)[0]), rng.integers(0, 8)
        sx, sy = rng.integers(cx - TILE // 2, cx + TILE // 2 + 1, 2)
        central = self.sim.galaxy_columns([entry], [variant], [sx], [sy])
        scene, noise = self._finish(self.sim, rng, [central, self._others(rng, False)])
        if noise is None:  # poisson: the redraw gets its own sky noise
            noise = self.sim.add_noise(rng, np.zeros_like(scene.image))
        redraw = self.csim.make_catalog([self.csim.galaxy_columns([entry], [variant], [cx], [cy])])
        clean = self.csim.compose(redraw)
        if not targets:
            return replace(scene, noiseless=None), {"centered": clean + noise}
        return scene, {"centered": clean + noise, "centered_noiseless": clean}

    def _central(self, rng, i, targets=False):
        cx, cy = self._centre()
        gold = np.flatnonzero(self.centered_bank.mag_i < MAG_GOLD)
        if len(gold) == 0:
            raise ProbcatValueError("no galaxy with i < 25.3 in the bank: increase bank_size")
        entry = rng.choice(gold)
        central = self.csim.galaxy_columns([entry], [rng.integers(0, 8)], [cx], [cy])
        central_cat = self.csim.make_catalog([central])
        others = self.sim.make_catalog([self._others(rng, True)])
        noiseless = self.csim.compose(central_cat) + self.sim.compose(others)
        cols = {k: np.concatenate([central_cat[k], others[k]]) for k in central_cat.colnames}
        cols["from_centered_bank"] = np.r_[True, np.zeros(len(others), bool)]
        cat = FullCatalog(cols, central_cat.image_shape, central_cat.bands)
        truth = _truth_mixed(self.csim, self.sim, cat, noiseless)
        image = self.sim.add_noise(rng, noiseless)
        return Scene(image, truth, noiseless if targets else None), {}

    def _pair(self, rng, i, targets=False):
        from probcat.simulate.render import render_direct

        h, w = self.config.shape
        cx, cy = self._centre()
        sep = round(i * PAIR_STEP, 10)
        nb = self.survey.n_bands
        cols = {
            "x": np.array([cx, cx + sep], float),
            "y": np.array([cy, cy], float),
            "galaxy": np.ones(2, bool),
            "flux": np.array([[g["flux"]] * nb for g in PAIR_GALAXIES]),
            "disk_hlr": np.array([g["a_d"] * math.sqrt(g["q"]) for g in PAIR_GALAXIES]),
            "bulge_hlr": np.full(2, 0.1),
            "disk_q": np.array([g["q"] for g in PAIR_GALAXIES]),
            "bulge_q": np.ones(2),
            "beta": np.array([g["beta"] % math.pi for g in PAIR_GALAXIES]),
            "bulge_frac": np.zeros(2),
            "redshift": np.full(2, np.nan),
            "source_id": np.array([1, 2]),
            "separation": np.full(2, sep),
        }
        cat = FullCatalog(cols, (h, w), self.survey.band_names)
        isolated = np.stack([render_direct(cat.select([k]), self.survey, (h, w)) for k in range(2)])
        if self._pair_noise is None:  # one noise realisation shared by every separation
            self._pair_noise = (
                np.random.default_rng([self.config.seed, 10**6])
                .standard_normal((nb, h, w))
                .astype(np.float32)
                * self.survey.noise_sigma.astype(np.float32)[:, None, None]
            )
        noiseless = isolated.sum(0).astype(np.float32)
        mags = np.stack(
            [b.flux_to_mag(cat["flux"][:, k]) for k, b in enumerate(self.survey.bands)], 1
        )
        cat = cat.with_columns(
            mag=mags, **truth_from_isolated(isolated, cat["x"], cat["y"], self.survey.noise_sigma)
        )
        return Scene(noiseless + self._pair_noise, cat, noiseless), {}


def truth_from_isolated(isolated: np.ndarray, x, y, sigma, radius: float = 5.0) -> dict:
    """``snr`` and ``blendedness`` ``(n, bands)`` from isolated noiseless images
    ``(n, bands, H, W)`` (paper 000 eqs. 12-14)."""
    n, nb, h, w = isolated.shape
    total = isolated.sum(0)
    yy, xx = np.mgrid[:h, :w]
    snr, blend = np.zeros((n, nb)), np.zeros((n, nb))
    for i in range(n):
        m = (xx - x[i]) ** 2 + (yy - y[i]) ** 2 <= radius**2
        for k in range(nb):
            snr[i, k] = math.sqrt(float(np.sum(isolated[i, k][m] ** 2))) / sigma[k]
            it = float(np.sum(isolated[i, k] * total[k]))
            blend[i, k] = 1.0 - float(np.sum(isolated[i, k] ** 2)) / it if it > 0 else 0.0
    return {"snr": snr, "blendedness": np.clip(blend, 0, 1)}


def _truth_mixed(csim, sim, cat: FullCatalog, noiseless):
    """Truth for a catalog whose first source comes from the centred bank."""
    first = cat.select([0])
    rest = cat.select(slice(1, None))
    t1 = csim.truth(first, noiseless)
    t2 = sim.truth(rest, noiseless)
    return cat.with_columns(
        snr=np.concatenate([t1["snr"], t2["snr"]]),
        blendedness=np.concatenate([t1["blendedness"], t2["blendedness"]]),
    )


RUN_STATE = ".probcat_simulate.json"  # the settings of a dataset being written


def _psf_cards(survey: Survey) -> dict:
    """Header cards of the simulated PSF: its atmosphere's FWHM per band (arcsec) and, for a
    Moffat atmosphere, its index."""
    cards = {f"PSFFWHM{k}": (b.psf_fwhm, f"band {b.name} atmospheric PSF FWHM, arcsec")
             for k, b in enumerate(survey.bands)}  # fmt: skip
    beta = survey.bands[0].psf_beta
    cards["PSFPROF"] = ("kolmogorov" if beta is None else "moffat", "atmospheric PSF profile")
    if beta is not None:
        cards["PSFBETA"] = (beta, "Moffat index of the atmospheric PSF")
    return cards


def claim_directory(config: SimulationConfig, out: Path, overwrite: bool = False) -> int:
    """Make ``out`` ready for ``config``'s dataset and return how many of its images are
    already there. A directory written with the same settings resumes (any ``-n`` at least
    as large as what it holds: image ``i`` is the same for every ``n``); one written with
    other settings, or holding images beyond ``config.n``, is refused unless ``overwrite``,
    which removes probcat's files (images, truth, config) first. Temporary files left by a
    killed run are removed."""
    images = out / "images"
    for tmp in images.glob(".image_*.fits*"):  # atomic_write's temporary files
        tmp.unlink(missing_ok=True)
    settings = json.loads(json.dumps(asdict(config), default=str))  # as stored
    want = {k: v for k, v in settings.items() if k != "n"}
    have = None
    state, record = out / RUN_STATE, out / "config.yaml"
    if state.exists():
        have = json.loads(state.read_text())
    elif record.exists():
        import yaml

        have = (yaml.safe_load(record.read_text()) or {}).get("config")
    present = sorted(images.glob("image_*.fits"))
    if overwrite:
        for f in [*present, out / "truth.fits", record, state]:
            f.unlink(missing_ok=True)
        present, have = [], None
    elif have is not None:
        have = {k: v for k, v in have.items() if k != "n"}
        defaults = json.loads(json.dumps(asdict(SimulationConfig()), default=str))
        # a field added after the dataset was written reads as its default
        diff = [k for k in want if have.get(k, defaults[k]) != want[k]]
        if diff:
            what = ", ".join(f"{k} {have.get(k)!r} (now {want[k]!r})" for k in diff)
            raise ProbcatValueError(
                f"{out}: holds a dataset written with other settings: {what}; "
                "use another --out, or --overwrite to replace it"
            )
    elif present:
        raise ProbcatValueError(
            f"{out}: holds images of unknown settings; use another --out, or --overwrite"
        )
    beyond = [f.name for f in present if int(f.stem.split("_")[1]) >= config.n]
    if beyond:
        raise ProbcatValueError(
            f"{out}: holds {len(present)} images, more than -n {config.n} (e.g. {beyond[0]}): "
            "use a larger -n, another --out, or --overwrite"
        )
    text = json.dumps(settings, sort_keys=True)
    atomic_write(state, lambda tmp: Path(tmp).write_text(text))
    return len(present)


def write_dataset(
    config: SimulationConfig,
    out: str | Path,
    *,
    cache_dir=None,
    workers=None,
    progress: bool = True,
    command: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write images (FITS with WCS), ``truth.fits`` and ``config.yaml`` into ``out``.

    Returns a summary dict. Files are written atomically; the config is stored beside them.
    An interrupted run resumes: rerun with the same settings and only the missing images
    are written (see :func:`claim_directory`; ``overwrite`` starts afresh).
    """
    from tqdm.auto import tqdm

    from probcat.io import write_image
    from probcat.provenance import provenance, write_record

    out = Path(out)
    with new_output_dir(out):  # a catalog that cannot be read, or a Ctrl-C, leaves no folder
        sim = Simulation(config, cache_dir=cache_dir, workers=workers, progress=progress)
        done = claim_directory(config, out, overwrite)  # after every check of the settings
    cats = []
    desc = f"simulating {config.recipe}" + (f" ({done} already written)" if done else "")
    for i in tqdm(range(config.n), desc=desc, unit="img", disable=not progress):
        scene, extras = sim.scene(i)  # cheap next to writing: truth of every image
        wcs = sim.wcs(i)
        path = out / "images" / f"image_{i:05d}.fits"
        if not path.exists():
            write_image(
                path,
                scene.image,
                sim.survey,
                wcs,
                extras,
                header={
                    "RECIPE": config.recipe,
                    "SEED": config.seed,
                    "IMAGEIDX": i,
                    **_psf_cards(sim.survey),
                },
            )
        t = scene.catalog.to_table(wcs)
        cat = scene.catalog.with_columns(ra=np.asarray(t["ra"]), dec=np.asarray(t["dec"]))
        cats.append(cat)
    truth = concat_catalogs(cats)
    truth = FullCatalog(
        truth.columns,
        truth.image_shape,
        truth.bands,
        {"recipe": config.recipe, "seed": config.seed},
    )
    truth.write(out / "truth.fits")
    summary = {
        "images": config.n,
        "resumed_from": done,
        "sources": len(truth),
        "galaxies": int(np.sum(truth["galaxy"])),
        "tile_collisions": truth_collisions(cats),
    }
    record = {
        "config": asdict(config),
        "survey": sim.survey.to_dict(),
        "summary": summary,
        **provenance(command),
    }
    write_record(out / "config.yaml", record)
    return summary


def truth_collisions(cats: list[FullCatalog], tile_size: int = TILE) -> int:
    """Sources that share a tile with a brighter one (dropped by the tile catalog)."""
    return sum(c.to_tiles(tile_size).n_collisions for c in cats)
