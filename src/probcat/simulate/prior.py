"""Source populations: galaxies (bulge + disk, or a morphology-rich mix) and stars.

A *population table* is an :class:`astropy.table.Table` with one row per galaxy and
these columns (a user-supplied FITS/Parquet catalog with the same columns replaces
the built-in prior, see :func:`read_population`):

==============  =========================================================================
``id``          int64, unique
``mag_<b>``     AB magnitude in band ``b`` (one column per band of the survey)
``disk_hlr``    half-light radius of the exponential disk, arcsec
``bulge_hlr``   half-light radius of the de Vaucouleurs bulge, arcsec
``disk_q``      disk minor/major axis ratio, (0, 1]
``bulge_q``     bulge minor/major axis ratio, (0, 1]
``beta``        position angle of both components, radians in [0, pi), from +x toward +y
``bulge_frac``  bulge-to-total flux ratio, [0, 1]
``redshift``    true redshift (NaN when the population has none)
==============  =========================================================================

A user catalog may also carry ``family`` (names of :data:`FAMILIES` or their indices) to
draw galaxies that are not bulge + disk; ``disk_hlr``, ``disk_q`` and ``beta`` then
describe the whole galaxy, ``sersic_n`` is required for Sérsic rows, and ``knot_frac``,
``n_knots``, ``arm_frac``, ``bar_frac``, ``morph_seed`` are optional (see
:func:`read_population`).

Built-in populations
--------------------
:func:`parametric_galaxies` (the single-band setting of paper 000): the CatSim catalog
the paper used cannot be downloaded here, so the population is built from published
distributions:

* *Number counts.* The LSST Science Book (2009, eq. 3.7) gives i-band counts
  ``N(<i) = 46 * 2**(i - 25) arcmin^-2``, i.e. a log-slope of 0.30 mag^-1. We keep the
  power-law form and fix its two anchors to the paper's numbers, 160 arcmin^-2 at
  i < 27 (paper 000, section 2.2/2.4) and the LSST gold sample 55 arcmin^-2 at
  i < 25.3, which gives a slope of log10(160/55)/1.7 = 0.273 mag^-1 (bright cut i = 18).
* *Sizes.* Disk scale length from the CFHTLenS size-magnitude relation of Miller et al.
  (2013, MNRAS 429, 2858): median ``ln(r_d / arcsec) = -1.145 - 0.269 (i - 23)``, with a
  log-normal scatter of 0.3; disk half-light radius = 1.678 r_d. Bulges are more compact:
  ``bulge_hlr = disk_hlr * LogNormal(ln 0.5, 0.3)``.
* *Bulge-to-total.* Loosely after the SDSS bulge+disk decompositions of Simard et al.
  (2011, ApJS 196, 11), where most galaxies are disk-dominated: 40% pure disks, the rest
  ``B/T ~ Beta(1.2, 2.5)``.
* *Axis ratios.* Disks: ``q ~ U(0.2, 1)``, the roughly flat distribution of disk
  galaxies of Padilla & Strauss (2008, MNRAS 388, 1321); bulges: ``q ~ N(0.7, 0.15)``
  clipped to [0.3, 1], near their elliptical-galaxy peak.

:func:`dc2_galaxies` (multi-band, for photo-z): ugrizy magnitudes and true redshifts of
the cosmoDC2 galaxies shipped in ``pz-rail-base`` (i < 25.3, the gold sample). Galaxies
fainter than that (25.3 < i < 27) are resampled DC2 galaxies from 24.5 < i < 25.3 with all
magnitudes shifted by the same amount, so that their colours and redshift stay
consistent with each other (colours of the faint tail are therefore those of slightly
brighter galaxies: documented limitation). DC2 magnitudes are observed (noisy) ones;
u/g non-detections (mag 99) are replaced by the median colour of galaxies at the same
redshift. Morphology follows the i-band relations above.

Stars (:func:`star_magnitudes`, :func:`star_colors`): 15.5 arcmin^-2 with 20 < i < 27
(paper 000, section 2.3), ``dN/di`` proportional to ``10**(0.1 i)`` (the shallow faint-end
slope of high-latitude star counts, Bahcall & Soneira 1980); colours of black bodies
with T ~ U(3500, 8000) K through GalSim's LSST bandpasses.

:func:`morphology_galaxies` (population ``"morphology"``, or ``"morphology:<f1>+<f2>..."`` for
a subset of families): the shapes real galaxies show at LSST resolution, in five families
(:data:`FAMILIES`), each with the counts and size-magnitude relation above. Extra columns:
``family`` (index into :data:`FAMILIES`), ``sersic_n``, ``knot_frac``, ``n_knots``,
``arm_frac``, ``bar_frac`` and ``morph_seed`` (seed of the random clump positions). For every
family but ``bulge_disk``, ``disk_hlr`` is the half-light radius of the *whole* galaxy
(circularised: the face-on profile's), ``disk_q`` its axis ratio and ``beta`` its position
angle. The families and their fractions (of the i < 27 population, where most galaxies are
faint, small, star-forming discs):

* ``bulge_disk`` (30%): the bulge + disk galaxies above.
* ``sersic`` (25%): single Sérsic profiles with ``0.5 <= n <= 6``, the range of the CANDELS
  GALFIT catalogue of van der Wel et al. (2012, ApJS 203, 24), drawn from its bimodal
  distribution: 70% discs with ``ln n ~ N(ln 1, 0.35)``, 30% spheroids with
  ``ln n ~ N(ln 3.5, 0.3)``; spheroids are 0.6 times smaller at fixed magnitude
  (van der Wel et al. 2014, ApJ 788, 28) with ``q ~ N(0.7, 0.15)``.
* ``clumpy`` (20%): star-forming discs with 5-40 compact clumps (GalSim ``RandomKnots``,
  each a Gaussian of FWHM a tenth of the half-light radius) that carry 5-40% of the light:
  clumpy galaxies are 15-55% of star-forming galaxies over 0.5 < z < 3 and their clumps
  5-20% (up to half) of the light (Guo et al. 2015, ApJ 800, 39).
* ``spiral`` (15%): exponential discs with two logarithmic arms traced by clumps (pitch
  angles 10-30 deg, Yu & Ho 2019, ApJ 871, 194; 10-30% of the light) and, in half of
  them, a bar (Sérsic n = 0.5, axis ratio 0.2-0.35, 5-15% of the light, Gadotti 2011,
  MNRAS 415, 3308); bars are in 20-65% of discs out to z ~ 0.8 (Sheth et al. 2008, ApJ
  675, 1141).
* ``irregular`` (10%): disturbed galaxies made of 2-4 offset, sheared exponential blobs
  plus clumps, recentred on their light: irregular and peculiar galaxies are about a
  third of I < 25 galaxies in the Hubble Deep Field (Abraham et al. 1996, MNRAS 279,
  L47) and mergers 5-10% out to z ~ 1.5 (Lotz et al. 2011, ApJ 742, 103).

The true position of a galaxy is its light-weighted centroid.

:func:`dc2_morphology_galaxies` (population ``"dc2:morphology"`` or
``"dc2:morphology:<f1>+<f2>..."``): the DC2 galaxies above (magnitudes, colours, redshifts)
with the shapes of the morphology families, assigned at random in the same fractions.

:func:`morphology_hdf_galaxies` (population ``"morphology+hdf"``, or
``"morphology:<f1>+<f2>...+hdf"``): the morphology families with a share
:data:`HDF_MIX_FRACTION` of the galaxies replaced by real galaxy shapes from the Hubble
Deep Field (:mod:`probcat.simulate.hubble`; same magnitudes and sizes), ``family`` =
:data:`HDF_FAMILY` and ``hdf_index`` >= 0 for those (-1 for the others).

:func:`morphology_bright_galaxies` (population ``"morphology+bright"``, or
``"morphology:<f1>+<f2>...+bright"``), for training: the morphology population plus a
supplement of :data:`BRIGHT_SHARE` as many bright galaxies again, i uniform in
:data:`BRIGHT_RANGE` (16-21; brighter than the counts' bright cut at 18), of the same
families, fractions and size-magnitude relation (sizes clipped at 4", as all). Scenes draw
the supplement as a whole with probability :data:`BRIGHT_DRAW_SHARE` per galaxy
(``draw_weight``): in a 100-px scene of about 28 galaxies, 0.6 bright ones on top of the
prior's 0.4 (i < 21). The prior holds too few bright galaxies for a network to learn their
shapes: in a bank of 20,000, 19 irregular and 31 clumpy galaxies brighter than i = 20, which
it then met again and again (as eight dihedral variants) but never new ones; on validation
galaxies unlike them the detector missed most bright clumpy and irregular galaxies (their
probability spread over several tiles, none above the threshold). The supplement's
galaxies have ids of their own and a seed of their own, so splits stay disjoint; the
scenes' number of galaxies is the prior's.

Train/validation/test galaxies are disjoint (paper 000, section 2.2): built-in
parametric galaxies are generated from different seeds per split with disjoint ids;
DC2 rows are permuted with the split seed and cut in thirds; ``val_to_train`` moves a
share of the validation third to training (the test third never changes).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.table import Table

from probcat.errors import ProbcatFileError, ProbcatValueError
from probcat.simulate.hubble import HDF_VERSION
from probcat.simulate.igm import madau_transmission

__all__ = [
    "GALAXY_DENSITY",
    "GOLD_DENSITY",
    "STAR_DENSITY",
    "SPLITS",
    "split_rows",
    "POPULATION_COLUMNS",
    "sample_galaxy_mags",
    "parametric_galaxies",
    "morphology_galaxies",
    "FAMILIES",
    "FAMILY_FRACTIONS",
    "FAMILY_COLUMNS",
    "parse_families",
    "parse_hdf_mix",
    "morphology_hdf_galaxies",
    "HDF_MIX_FRACTION",
    "HDF_FAMILY",
    "parse_bright_mix",
    "morphology_bright_galaxies",
    "BRIGHT_RANGE",
    "BRIGHT_SHARE",
    "BRIGHT_DRAW_SHARE",
    "prior_version",
    "dc2_galaxies",
    "cww_galaxies",
    "CWW_TEMPLATES",
    "dc2_morphology_galaxies",
    "is_builtin",
    "galaxy_population",
    "read_population",
    "star_magnitudes",
    "star_colors",
]

GALAXY_DENSITY = 160.0  # arcmin^-2, i < 27 (paper 000 section 2.4)
GOLD_DENSITY = 55.0  # arcmin^-2, i < 25.3 (LSST gold sample)
STAR_DENSITY = 15.5  # arcmin^-2, 20 < i < 27 (paper 000 section 2.3)
MAG_FAINT = 27.0
MAG_GOLD = 25.3
MAG_BRIGHT = 18.0
COUNT_SLOPE = math.log10(GALAXY_DENSITY / GOLD_DENSITY) / (MAG_FAINT - MAG_GOLD)
STAR_MAG_RANGE = (20.0, 27.0)
STAR_COUNT_SLOPE = 0.1
SPLITS = ("train", "val", "test")
MORPHOLOGY_COLUMNS = ("disk_hlr", "bulge_hlr", "disk_q", "bulge_q", "beta", "bulge_frac")
POPULATION_COLUMNS = ("id", *MORPHOLOGY_COLUMNS, "redshift")
_SPLIT_ID_STRIDE = 10**9
_FAMILY_ID_STRIDE = 10**8
FAMILIES = ("bulge_disk", "sersic", "clumpy", "spiral", "irregular")
FAMILY_FRACTIONS = {
    "bulge_disk": 0.30,
    "sersic": 0.25,
    "clumpy": 0.20,
    "spiral": 0.15,
    "irregular": 0.10,
}
FAMILY_COLUMNS = (
    "family",
    "sersic_n",
    "knot_frac",
    "n_knots",
    "arm_frac",
    "bar_frac",
    "morph_seed",
)
SERSIC_N_RANGE = (0.5, 6.0)
# Population "morphology+hdf": the share of galaxies with a real Hubble Deep Field shape,
# about one family's share (FAMILY_FRACTIONS); their family code, past the parametric ones;
# their ids, in a range no family uses.
HDF_MIX_FRACTION = 0.2
HDF_FAMILY = len(FAMILIES)
_HDF_ID_OFFSET = 9 * _FAMILY_ID_STRIDE
# Population "morphology+bright" (module docstring): the supplement's magnitudes, its size
# as a share of the population's, the share of scene draws that pick it, its ids' range.
BRIGHT_RANGE = (16.0, 21.0)
BRIGHT_SHARE = 0.25
BRIGHT_DRAW_SHARE = 0.02
_BRIGHT_ID_OFFSET = 8 * _FAMILY_ID_STRIDE


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float):
    """Draw magnitudes with dN/dm proportional to 10**(slope * m) on [lo, hi]."""
    u = rng.random(n)
    r = 10.0 ** (slope * (lo - hi))
    return hi + np.log10(r + u * (1.0 - r)) / slope


def sample_galaxy_mags(rng: np.random.Generator, n: int, lo=MAG_BRIGHT, hi=MAG_FAINT):
    """i-band magnitudes from the calibrated power-law counts (see module docstring)."""
    return _power_law_mags(rng, n, lo, hi, COUNT_SLOPE)


def _morphology(rng: np.random.Generator, mag_i: np.ndarray) -> dict[str, np.ndarray]:
    n = len(mag_i)
    r_d = np.exp(-1.145 - 0.269 * (mag_i - 23.0) + 0.3 * rng.standard_normal(n))
    disk_hlr = np.clip(1.678 * r_d, 0.05, 4.0)
    bulge_hlr = np.clip(disk_hlr * np.exp(math.log(0.5) + 0.3 * rng.standard_normal(n)), 0.03, 3.0)
    bulge_frac = np.where(rng.random(n) < 0.4, 0.0, rng.beta(1.2, 2.5, n))
    return {
        "disk_hlr": disk_hlr,
        "bulge_hlr": bulge_hlr,
        "disk_q": rng.uniform(0.2, 1.0, n),
        "bulge_q": np.clip(rng.normal(0.7, 0.15, n), 0.3, 1.0),
        "beta": rng.uniform(0.0, math.pi, n),
        "bulge_frac": bulge_frac,
    }


def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise ProbcatValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return SPLITS.index(split)


def split_rows(n: int, split: str, seed: int, val_to_train: float = 0.0) -> np.ndarray:
    """Sorted indices of ``split`` among ``n`` catalog rows: the rows are permuted with
    ``seed`` and cut in thirds (train, val, test); ``val_to_train`` (in [0, 1)) moves that
    share of the validation third (its first rows in permuted order) to training. The test
    third is the same for every ``val_to_train``, and no row is in two splits."""
    _split_index(split)  # validates the name
    if not 0.0 <= val_to_train < 1.0:
        raise ProbcatValueError(f"val_to_train must lie in [0, 1), got {val_to_train}")
    perm = np.random.default_rng([seed, 104729]).permutation(n)
    thirds = np.array_split(perm, 3)
    moved = int(round(val_to_train * len(thirds[1])))
    if split == "train":
        part = np.concatenate([thirds[0], thirds[1][:moved]])
    elif split == "val":
        part = thirds[1][moved:]
    else:
        part = thirds[2]
    return np.sort(part)


def parametric_galaxies(
    n: int, *, split: str = "train", seed: int = 0, bands: tuple[str, ...] = ("i",)
) -> Table:
    """Built-in bulge+disk population with i < 27 (module docstring has the references).

    Only ``i`` carries information here: other bands get the i magnitude (flat
    spectrum), use :func:`dc2_galaxies` for realistic colours.

    Args:
        n: number of galaxies.
        split: ``"train"``, ``"val"`` or ``"test"``; splits never share a galaxy.
        seed: catalog seed; the same (n, split, seed) always gives the same table.
    """
    k = _split_index(split)
    rng = np.random.default_rng([seed, k, 7919])
    mag_i = sample_galaxy_mags(rng, n)
    t = Table()
    t["id"] = np.arange(n, dtype=np.int64) + k * _SPLIT_ID_STRIDE
    for b in bands:
        t[f"mag_{b}"] = mag_i
    for name, col in _morphology(rng, mag_i).items():
        t[name] = col
    t["redshift"] = np.full(n, np.nan)
    t.meta["POPKIND"] = "parametric"
    return t


@lru_cache(maxsize=1)
def _dc2_rows() -> Table:
    """All DC2 galaxies shipped in pz-rail-base, u/g non-detections imputed."""
    import h5py
    import pyarrow.parquet as pq

    try:
        from rail.utils.path_utils import RAILDIR  # type: ignore
    except ImportError:  # older layouts
        import rail

        RAILDIR = str(Path(rail.__path__[0]))  # noqa: N806
    base = Path(RAILDIR) / "rail" / "examples_data" / "testdata"
    if not base.exists():
        base = Path(RAILDIR) / "examples_data" / "testdata"
    try:
        train = pq.read_table(base / "test_dc2_training_9816.pq").to_pydict()
        with h5py.File(base / "test_dc2_validation_9816.hdf5") as f:
            val = {k: f["photometry"][k][:] for k in f["photometry"]}
    except (OSError, FileNotFoundError) as e:
        raise ProbcatFileError(f"DC2 catalogs from pz-rail-base not found under {base}: {e}") from e
    cols = ["id", "redshift"] + [f"mag_{b}_lsst" for b in "ugrizy"]
    t = Table({c: np.concatenate([np.asarray(train[c]), np.asarray(val[c])]) for c in cols})
    z = np.asarray(t["redshift"], dtype=float)
    zbin = np.clip((z / 0.1).astype(int), 0, 40)
    # impute non-detections (99) band by band from the next redder band's colour
    for blue, red in (("g", "r"), ("u", "g")):
        mb, mr = np.asarray(t[f"mag_{blue}_lsst"], float), np.asarray(t[f"mag_{red}_lsst"], float)
        bad = mb > 50
        colour = mb - mr
        med = np.array(
            [
                np.median(colour[(zbin == k) & ~bad])
                if np.any((zbin == k) & ~bad)
                else np.median(colour[~bad])
                for k in range(41)
            ]
        )
        mb[bad] = mr[bad] + med[zbin[bad]]
        t[f"mag_{blue}_lsst"] = mb
    return t


def dc2_galaxies(
    *,
    split: str = "train",
    seed: int = 0,
    bands: tuple[str, ...] = tuple("ugrizy"),
    faint_per_gold: float | None = None,
    val_to_train: float = 0.0,
) -> Table:
    """Multi-band galaxies with true redshifts: DC2 gold sample plus a resampled faint tail.

    Args:
        split: which third of the DC2 rows (disjoint across splits for a given seed).
        seed: split/resampling seed.
        val_to_train: share of the validation third given to training (:func:`split_rows`).
        bands: bands whose magnitudes are returned (subset of ugrizy).
        faint_per_gold: number of 25.3 < i < 27 galaxies per gold galaxy; defaults to
            the count ratio of the built-in number counts ((160 - 55) / 55).
    """
    k = _split_index(split)
    rows = _dc2_rows()
    part = rows[split_rows(len(rows), split, seed, val_to_train)]
    rng = np.random.default_rng([seed, k, 15485863])
    if faint_per_gold is None:
        faint_per_gold = (GALAXY_DENSITY - GOLD_DENSITY) / GOLD_DENSITY
    n_faint = int(round(faint_per_gold * len(part)))
    mag_i_gold = np.asarray(part["mag_i_lsst"], float)
    donors = np.flatnonzero(mag_i_gold > 24.5)
    pick = rng.choice(donors, n_faint)
    new_i = _power_law_mags(rng, n_faint, MAG_GOLD, MAG_FAINT, COUNT_SLOPE)
    shift = np.concatenate([np.zeros(len(part)), new_i - mag_i_gold[pick]])
    src = np.concatenate([np.arange(len(part)), pick])
    t = Table()
    t["id"] = np.concatenate(
        [np.asarray(part["id"], np.int64), np.asarray(part["id"], np.int64)[pick] * 10 + 1]
    )
    for b in bands:
        if b not in "ugrizy":
            raise ProbcatValueError(f"DC2 has no band {b!r}")
        t[f"mag_{b}"] = np.asarray(part[f"mag_{b}_lsst"], float)[src] + shift
    mag_i = np.asarray(part["mag_i_lsst"], float)[src] + shift
    for name, col in _morphology(rng, mag_i).items():
        t[name] = col
    t["redshift"] = np.asarray(part["redshift"], float)[src]
    t.meta["POPKIND"] = "dc2"
    return t


# Galaxy colours unlike DC2's, for testing photo-z against a colour library it was not
# trained on: the four empirical templates of Coleman, Wu & Weedman (1980, ApJS 43, 393),
# E, Sbc, Scd and Im, extended below 1400 and beyond 10000 Angstrom by Bolzonella, Miralles
# & Pello (2000, A&A 363, 476), as GalSim ships them (share/SEDs/CWW_*_ext.sed), seen through
# the intergalactic medium's mean absorption (Madau 1995: probcat.simulate.igm).
CWW_TEMPLATES = ("E", "Sbc", "Scd", "Im")
CWW_Z_GRID = np.round(np.arange(0.0, 3.501, 0.01), 2)  # colours interpolated in z between
CWW_NO_FLUX = 8.0  # colour (mag) given where a template has no flux in a band at that z


def cww_galaxies(
    *,
    split: str = "train",
    seed: int = 0,
    bands: tuple[str, ...] = tuple("ugrizy"),
    val_to_train: float = 0.0,
) -> Table:
    """DC2 galaxies with the colours of the CWW templates: the rows, true redshifts, i
    magnitudes and shapes of :func:`dc2_galaxies` (same split, same seed), each galaxy's
    other magnitudes replaced by ``mag_i`` plus the colour ``m_b - m_i`` of one of
    :data:`CWW_TEMPLATES` (each as likely; drawn per row from ``seed`` and the split)
    redshifted to its true redshift, dimmed by the intergalactic medium's mean absorption
    (:func:`probcat.simulate.igm.madau_transmission`), through GalSim's LSST bandpasses.
    A test population for photo-z: colours made apart from the DC2 simulation the shipped
    weights learned (``benchmarks/photoz_colours.py``), not a model of the sky."""
    if "i" not in bands:
        raise ProbcatValueError("population cww anchors its magnitudes on band i: include it")
    t = dc2_galaxies(split=split, seed=seed, bands=tuple(bands), val_to_train=val_to_train)
    rng = np.random.default_rng([seed, _split_index(split), 2147483647])
    pick = rng.integers(0, len(CWW_TEMPLATES), len(t))
    z = np.clip(np.asarray(t["redshift"], float), CWW_Z_GRID[0], CWW_Z_GRID[-1])
    mag_i = np.asarray(t["mag_i"], float)
    grid = _cww_colour_grid(tuple(bands))  # (templates, z, bands)
    for j, b in enumerate(bands):
        colour = np.zeros(len(t))
        for k in range(len(CWW_TEMPLATES)):
            rows = pick == k
            colour[rows] = np.interp(z[rows], CWW_Z_GRID, grid[k, :, j])
        t[f"mag_{b}"] = mag_i + colour
    t["template"] = np.asarray(CWW_TEMPLATES)[pick]
    t.meta["POPKIND"] = "cww"
    return t


@lru_cache(maxsize=4)
def _cww_colour_grid(bands: tuple[str, ...]) -> np.ndarray:
    """``m_b - m_i`` of each CWW template at each redshift of :data:`CWW_Z_GRID`,
    ``(templates, z, bands)``; :data:`CWW_NO_FLUX` where the template has no flux there."""
    import galsim

    bps = {b: galsim.Bandpass(f"LSST_{b}.dat", wave_type="nm").withZeropoint("AB")
           for b in {*bands, "i"}}  # fmt: skip
    out = np.zeros((len(CWW_TEMPLATES), len(CWW_Z_GRID), len(bands)))
    for k, name in enumerate(CWW_TEMPLATES):
        sed = galsim.SED(f"CWW_{name}_ext.sed", wave_type="Ang", flux_type="flambda")
        for n, z in enumerate(CWW_Z_GRID):
            red = sed.atRedshift(float(z))
            if z > 0:  # through the intergalactic medium's mean absorption
                red = red * (lambda nm, z=float(z): madau_transmission(nm, z))
            ref = red.calculateMagnitude(bps["i"])
            with np.errstate(divide="ignore", invalid="ignore"):
                out[k, n] = [red.calculateMagnitude(bps[b]) - ref for b in bands]
    return np.nan_to_num(out, nan=CWW_NO_FLUX, posinf=CWW_NO_FLUX, neginf=-CWW_NO_FLUX)


PRIOR_VERSIONS = {
    "parametric": "bulge+disk v1",
    "dc2": "dc2 v1",
    "cww": "dc2 v1 rows, cww v2 colours (Madau 1995 IGM)",
    "morphology": "morphology v1",
    "hdf": HDF_VERSION,
}


def _morphology_with(kind: str, suffix: str) -> str | None:
    """The morphology population before ``suffix`` in ``kind`` (``"morphology+hdf"`` ->
    ``"morphology"``); None when ``kind`` does not end with it."""
    if not kind.endswith(suffix):
        return None
    base = kind[: -len(suffix)]
    if parse_families(base) is None:
        raise ProbcatValueError(
            f"population {kind!r}: '{suffix}' follows morphology or morphology:<families>"
        )
    return base


def parse_hdf_mix(kind: str) -> str | None:
    """The morphology population of a ``"<morphology population>+hdf"`` mixture
    (``"morphology+hdf"`` -> ``"morphology"``); None for any other population."""
    return _morphology_with(kind, "+hdf")


def parse_bright_mix(kind: str) -> str | None:
    """The morphology population of a ``"<morphology population>+bright"`` population
    (``"morphology+bright"`` -> ``"morphology"``); None for any other population."""
    return _morphology_with(kind, "+bright")


def prior_version(kind: str) -> str:
    """Version label of a built-in population (recorded in weight manifests); a catalog
    path is reported as itself."""
    bright = parse_bright_mix(kind)
    if bright is not None:
        lo, hi = BRIGHT_RANGE
        return (
            f"{prior_version(bright)} + bright supplement v1 ({BRIGHT_SHARE:g} of it, "
            f"{lo:g} < i < {hi:g}, drawn {BRIGHT_DRAW_SHARE:g})"
        )
    base = parse_hdf_mix(kind)
    if base is not None:
        return f"{prior_version(base)} + {PRIOR_VERSIONS['hdf']} ({HDF_MIX_FRACTION:g})"
    dc2_families = _dc2_families(kind)
    if dc2_families is not None:
        return f"{PRIOR_VERSIONS['dc2']} + {prior_version(kind[4:])}"
    families = parse_families(kind)
    if families is not None:
        label = PRIOR_VERSIONS["morphology"]
        return label if families == FAMILIES else f"{label} ({'+'.join(families)})"
    return PRIOR_VERSIONS.get(kind, f"catalog {kind}")


def parse_families(kind: str) -> tuple[str, ...] | None:
    """Families of a population name: ``"morphology"`` -> all of :data:`FAMILIES`,
    ``"morphology:sersic+clumpy"`` -> those; None for any other population."""
    if kind == "morphology":
        return FAMILIES
    if not kind.startswith("morphology:"):
        return None
    names = tuple(f for f in kind.split(":", 1)[1].split("+") if f)
    bad = [f for f in names if f not in FAMILIES]
    if bad or not names:
        raise ProbcatValueError(
            f"population {kind!r}: unknown family {bad or '(none)'}; choose from "
            f"{', '.join(FAMILIES)}"
        )
    return tuple(f for f in FAMILIES if f in names)


def _family_shapes(rng: np.random.Generator, family: str, mag_i: np.ndarray) -> dict:
    """Morphology columns of ``len(mag_i)`` galaxies of one family (module docstring)."""
    n = len(mag_i)
    base = _morphology(rng, mag_i)
    cols = {
        "sersic_n": np.full(n, np.nan),
        "knot_frac": np.zeros(n),
        "n_knots": np.zeros(n, np.int64),
        "arm_frac": np.zeros(n),
        "bar_frac": np.zeros(n),
        "morph_seed": rng.integers(1, 2**31 - 1, n),
    }
    if family == "bulge_disk":
        return {**base, **cols}
    # one-component sizes: the disk relation for the whole galaxy
    hlr = base["disk_hlr"]
    q = rng.uniform(0.2, 1.0, n)
    if family == "sersic":
        spheroid = rng.random(n) < 0.3
        ln_n = np.where(
            spheroid,
            math.log(3.5) + 0.3 * rng.standard_normal(n),
            0.35 * rng.standard_normal(n),
        )
        # quantised so that GalSim's per-index Sérsic tables are shared between galaxies
        cols["sersic_n"] = np.round(np.clip(np.exp(ln_n), *SERSIC_N_RANGE) / 0.05) * 0.05
        hlr = np.where(spheroid, np.clip(0.6 * hlr, 0.05, 4.0), hlr)
        q = np.where(spheroid, np.clip(rng.normal(0.7, 0.15, n), 0.3, 1.0), q)
    elif family == "clumpy":
        cols["knot_frac"] = rng.uniform(0.05, 0.4, n)
        cols["n_knots"] = rng.integers(5, 41, n)
    elif family == "spiral":
        cols["arm_frac"] = rng.uniform(0.1, 0.3, n)
        cols["bar_frac"] = np.where(rng.random(n) < 0.5, rng.uniform(0.05, 0.15, n), 0.0)
        cols["n_knots"] = rng.integers(20, 61, n)  # clumps along the two arms
    elif family == "irregular":
        cols["knot_frac"] = rng.uniform(0.1, 0.4, n)
        cols["n_knots"] = rng.integers(5, 31, n)
        q = rng.uniform(0.3, 1.0, n)
    base.update(disk_hlr=hlr, disk_q=q, bulge_frac=np.zeros(n))
    return {**base, **cols}


def _family_parts(n, families, bands, seed: list, draw_mags, id_base: int, id_stride: int):
    """One table per family of ``n`` galaxies split over ``families`` in proportion to
    :data:`FAMILY_FRACTIONS`: each family's magnitudes (``draw_mags(rng, m)``) and shapes
    from its own stream (``seed`` + its code), ids from ``id_base`` + code * ``id_stride``."""
    frac = np.array([FAMILY_FRACTIONS[f] for f in families])
    counts = np.floor(n * frac / frac.sum()).astype(int)
    counts[0] += n - counts.sum()
    parts = []
    for f, m in zip(families, counts):
        code = FAMILIES.index(f)
        rng = np.random.default_rng([*seed, code + 1])
        mag_i = draw_mags(rng, int(m))
        t = Table()
        t["id"] = np.arange(m, dtype=np.int64) + id_base + code * id_stride
        for b in bands:
            t[f"mag_{b}"] = mag_i
        for name, col in _family_shapes(rng, f, mag_i).items():
            t[name] = col
        t["family"] = np.full(int(m), code, np.int16)
        t["redshift"] = np.full(int(m), np.nan)
        parts.append(t)
    return parts


def morphology_galaxies(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    bands: tuple[str, ...] = ("i",),
    families: tuple[str, ...] = FAMILIES,
) -> Table:
    """Morphology-rich population (module docstring): ``n`` galaxies of the given families,
    in proportion to :data:`FAMILY_FRACTIONS` renormalised over them.

    A family's galaxies come from a seed of their own and carry ids in a range of their
    own, so that populations with different families never share a galaxy and splits stay
    disjoint."""
    k = _split_index(split)
    families = tuple(f for f in FAMILIES if f in families)
    if not families:
        raise ProbcatValueError("morphology_galaxies needs at least one family")
    parts = _family_parts(
        n, families, bands, [seed, k, 7919], sample_galaxy_mags,
        k * _SPLIT_ID_STRIDE, _FAMILY_ID_STRIDE,
    )  # fmt: skip
    from astropy.table import vstack

    out = vstack(parts, metadata_conflicts="silent")
    out = out[np.random.default_rng([seed, k, 50021]).permutation(len(out))]
    out.meta["POPKIND"] = "morphology"
    out.meta["FAMILIES"] = "+".join(families)
    return out[
        ["id", *(f"mag_{b}" for b in bands), *MORPHOLOGY_COLUMNS, *FAMILY_COLUMNS, "redshift"]
    ]


def dc2_morphology_galaxies(
    *,
    split: str = "train",
    seed: int = 0,
    bands: tuple[str, ...] = tuple("ugrizy"),
    families: tuple[str, ...] = FAMILIES,
    val_to_train: float = 0.0,
) -> Table:
    """DC2 magnitudes and redshifts (:func:`dc2_galaxies`, same rows for the same split,
    seed and ``val_to_train``) with the shapes of the morphology families (population
    ``"dc2:morphology"`` or ``"dc2:morphology:<f1>+<f2>..."``).

    Each galaxy is given a family at random, in proportion to :data:`FAMILY_FRACTIONS`
    renormalised over ``families``, and that family's shape at its i magnitude (module
    docstring). Shapes are achromatic: a clump has the colours of its galaxy (real
    star-forming clumps are bluer than their discs; documented limitation)."""
    k = _split_index(split)
    families = tuple(f for f in FAMILIES if f in families)
    if not families:
        raise ProbcatValueError("dc2_morphology_galaxies needs at least one family")
    t = dc2_galaxies(
        split=split,
        seed=seed,
        bands=tuple(dict.fromkeys((*bands, "i"))),
        val_to_train=val_to_train,
    )
    mag_i = np.asarray(t["mag_i"], float)
    codes = np.array([FAMILIES.index(f) for f in families])
    frac = np.array([FAMILY_FRACTIONS[f] for f in families])
    rng = np.random.default_rng([seed, k, 15485867])
    pick = rng.choice(codes, len(t), p=frac / frac.sum())
    cols: dict[str, np.ndarray] = {}
    for code in codes:
        rows = np.flatnonzero(pick == code)
        shape_rng = np.random.default_rng([seed, k, 15485867, int(code) + 1])
        for name, col in _family_shapes(shape_rng, FAMILIES[code], mag_i[rows]).items():
            col = np.asarray(col)
            cols.setdefault(name, np.zeros(len(t), col.dtype))[rows] = col
    for name, col in cols.items():
        t[name] = col
    t["family"] = pick.astype(np.int16)
    out = t[["id", *(f"mag_{b}" for b in bands), *MORPHOLOGY_COLUMNS, *FAMILY_COLUMNS, "redshift"]]
    out.meta["POPKIND"] = "dc2"
    out.meta["FAMILIES"] = "+".join(families)
    return out


def morphology_hdf_galaxies(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    bands: tuple[str, ...] = ("i",),
    families: tuple[str, ...] = FAMILIES,
    fraction: float = HDF_MIX_FRACTION,
    stamps=None,
) -> Table:
    """Population ``"morphology[:families]+hdf"`` (module docstring): ``n`` galaxies, a
    share ``fraction`` of them real Hubble Deep Field shapes
    (:func:`probcat.simulate.hubble.hdf_galaxies`, the stamps of the same split; ``stamps``
    as there), the rest :func:`morphology_galaxies` of ``families``. The two parts keep
    their own seeds, so that each part's galaxies are those of its own population; ids
    stay distinct."""
    from astropy.table import vstack

    from probcat.simulate.hubble import hdf_galaxies

    if not 0.0 < fraction < 1.0:
        raise ProbcatValueError(f"the Hubble Deep Field share must be in (0, 1), got {fraction}")
    n_real = int(round(n * fraction))
    base = morphology_galaxies(n - n_real, split=split, seed=seed, bands=bands, families=families)
    real = hdf_galaxies(n_real, split=split, seed=seed, bands=bands, stamps=stamps)
    base["hdf_index"] = np.full(len(base), -1, np.int64)
    base["flip"] = np.zeros(len(base), np.int16)
    real["id"] += _HDF_ID_OFFSET
    for c in FAMILY_COLUMNS:  # no parametric shape: no Sérsic index, no clumps or arms
        fill = HDF_FAMILY if c == "family" else np.nan if c == "sersic_n" else 0
        real[c] = np.full(len(real), fill, np.asarray(base[c]).dtype)
    real = real[base.colnames]
    out = vstack([base, real], metadata_conflicts="silent")
    out = out[np.random.default_rng([seed, _split_index(split), 50023]).permutation(len(out))]
    out.meta["POPKIND"] = "morphology+hdf"
    out.meta["FAMILIES"] = "+".join(f for f in FAMILIES if f in families) + "+hdf"
    return out


def morphology_bright_galaxies(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    bands: tuple[str, ...] = ("i",),
    families: tuple[str, ...] = FAMILIES,
) -> Table:
    """Population ``"morphology[:families]+bright"`` (module docstring): the ``n`` galaxies
    of :func:`morphology_galaxies` (the same ones) and ``round(n * BRIGHT_SHARE)`` bright
    ones, i uniform in :data:`BRIGHT_RANGE`, families in their fractions, ids and seed of
    their own; ``draw_weight`` makes scenes draw the bright ones as a whole with
    probability :data:`BRIGHT_DRAW_SHARE`."""
    from astropy.table import vstack

    k = _split_index(split)
    families = tuple(f for f in FAMILIES if f in families)
    base = morphology_galaxies(n, split=split, seed=seed, bands=bands, families=families)
    parts = _family_parts(
        int(round(n * BRIGHT_SHARE)), families, bands, [seed, k, 104729],
        lambda rng, m: rng.uniform(*BRIGHT_RANGE, m),
        k * _SPLIT_ID_STRIDE + _BRIGHT_ID_OFFSET, _FAMILY_ID_STRIDE // 10,
    )  # fmt: skip
    parts = [t[base.colnames] for t in parts]
    bright = vstack(parts, metadata_conflicts="silent")
    w = BRIGHT_DRAW_SHARE / (1.0 - BRIGHT_DRAW_SHARE) * len(base) / max(len(bright), 1)
    base["draw_weight"] = np.ones(len(base))
    bright["draw_weight"] = np.full(len(bright), w)
    out = vstack([base, bright], metadata_conflicts="silent")
    out = out[np.random.default_rng([seed, k, 50033]).permutation(len(out))]
    out.meta["POPKIND"] = "morphology+bright"
    out.meta["FAMILIES"] = "+".join(families)
    return out


def _dc2_families(kind: str) -> tuple[str, ...] | None:
    """Families of a ``"dc2:morphology[:families]"`` population; None for any other name."""
    if not kind.startswith("dc2:"):
        return None
    families = parse_families(kind[4:])
    if families is None:
        raise ProbcatValueError(
            f"population {kind!r}: after 'dc2:' give morphology or morphology:<families>"
        )
    return families


def is_builtin(kind: str) -> bool:
    """Whether ``kind`` names a built-in population (otherwise it is a catalog path)."""
    return (
        kind in ("parametric", "dc2", "cww", "hdf")
        or parse_hdf_mix(kind) is not None
        or parse_bright_mix(kind) is not None
        or parse_families(kind) is not None
        or _dc2_families(kind) is not None
    )


def galaxy_population(
    kind: str,
    *,
    split: str,
    seed: int,
    bands: tuple[str, ...],
    n: int = 20000,
    val_to_train: float = 0.0,
) -> Table:
    """Dispatch: ``"parametric"``, ``"morphology[:families]"``, ``"hdf"`` (real galaxy
    shapes, :mod:`probcat.simulate.hubble`) or ``"morphology[:families]+hdf"`` (n
    galaxies), ``"dc2"`` or
    ``"dc2:morphology[:families]"``, or a path to a FITS/Parquet table. ``val_to_train``
    (:func:`split_rows`) applies to the catalog populations (DC2 and files): generated ones
    have as many galaxies per split as asked for."""
    mixed = parse_hdf_mix(kind)
    bright = parse_bright_mix(kind)
    generated = (
        kind in ("parametric", "hdf")
        or mixed is not None
        or bright is not None
        or parse_families(kind) is not None
    )
    if generated and val_to_train:
        raise ProbcatValueError(
            f"val_to_train applies to catalog populations (dc2, a catalog file), not {kind!r}"
        )
    if kind == "parametric":
        return parametric_galaxies(n, split=split, seed=seed, bands=bands)
    if kind == "hdf":
        from probcat.simulate.hubble import hdf_galaxies

        return hdf_galaxies(n, split=split, seed=seed, bands=bands)
    if bright is not None:
        return morphology_bright_galaxies(
            n, split=split, seed=seed, bands=bands, families=parse_families(bright)
        )
    if mixed is not None:
        return morphology_hdf_galaxies(
            n, split=split, seed=seed, bands=bands, families=parse_families(mixed)
        )
    if kind == "dc2":
        return dc2_galaxies(split=split, seed=seed, bands=bands, val_to_train=val_to_train)
    if kind == "cww":
        return cww_galaxies(split=split, seed=seed, bands=bands, val_to_train=val_to_train)
    dc2_families = _dc2_families(kind)
    if dc2_families is not None:
        return dc2_morphology_galaxies(
            split=split, seed=seed, bands=bands, families=dc2_families, val_to_train=val_to_train
        )
    families = parse_families(kind)
    if families is not None:
        return morphology_galaxies(n, split=split, seed=seed, bands=bands, families=families)
    t = read_population(kind, bands=bands)
    return t[split_rows(len(t), split, seed, val_to_train)]


def read_population(path: str | Path, *, bands: tuple[str, ...]) -> Table:
    """Read a user galaxy catalog (FITS or Parquet) with the documented columns.

    Missing ``bulge_*`` columns mean pure disks; a missing ``redshift`` becomes NaN.
    """
    path = Path(path)
    if not path.exists():
        raise ProbcatFileError(f"{path}: population catalog not found")
    from probcat.catalog import read_table

    t = read_table(path, "population catalog")
    required = ["id", "disk_hlr", "disk_q", "beta", *(f"mag_{b}" for b in bands)]
    missing = [c for c in required if c not in t.colnames]
    if missing:
        raise ProbcatValueError(f"{path}: missing column(s) {missing}")
    n = len(t)
    defaults = {
        "bulge_hlr": np.full(n, 0.1),
        "bulge_q": np.ones(n),
        "bulge_frac": np.zeros(n),
        "redshift": np.full(n, np.nan),
    }
    for c, v in defaults.items():
        if c not in t.colnames:
            t[c] = v
    for c in ("disk_hlr", "bulge_hlr"):
        if not np.all(np.asarray(t[c]) > 0):
            raise ProbcatValueError(f"{path}: column {c} must be > 0 (arcsec)")
    for c in ("disk_q", "bulge_q"):
        q = np.asarray(t[c])
        if not np.all((q > 0) & (q <= 1)):
            raise ProbcatValueError(f"{path}: column {c} must lie in (0, 1]")
    keep = ["id", *(f"mag_{b}" for b in bands), *MORPHOLOGY_COLUMNS, "redshift"]
    if "family" not in t.colnames:
        return t[keep]
    return _with_family_columns(t, path)[[*keep, *FAMILY_COLUMNS]]


# defaults of a user catalog's family columns: the middle of the built-in prior's ranges
FAMILY_DEFAULTS = {
    "clumpy": {"knot_frac": 0.2, "n_knots": 20},
    "spiral": {"arm_frac": 0.2, "bar_frac": 0.0, "n_knots": 40},
    "irregular": {"knot_frac": 0.25, "n_knots": 15},
}


def _with_family_columns(t: Table, path: Path) -> Table:
    """A user catalog's ``family`` (names of :data:`FAMILIES` or their indices) as indices,
    and every column of :data:`FAMILY_COLUMNS`: ``sersic_n`` is required for Sérsic rows;
    the others default to :data:`FAMILY_DEFAULTS` (and ``morph_seed`` to one drawn from
    ``id``, so the same row always renders the same clumps)."""
    raw = np.asarray(t["family"])
    if raw.dtype.kind in "iu":
        code = raw.astype(np.int64)
        bad = sorted({int(v) for v in code if not 0 <= v < len(FAMILIES)})
        if bad:
            raise ProbcatValueError(f"{path}: family indices {bad} outside 0..{len(FAMILIES) - 1}")
    else:
        names = np.char.strip(np.char.lower(raw.astype(str)))
        bad = sorted(set(names.tolist()) - set(FAMILIES))
        if bad:
            raise ProbcatValueError(f"{path}: unknown family {bad}; known: {list(FAMILIES)}")
        code = np.array([FAMILIES.index(v) for v in names], np.int64)
    n = len(t)
    t["family"] = code
    sersic = code == FAMILIES.index("sersic")
    if sersic.any():
        if "sersic_n" not in t.colnames:
            raise ProbcatValueError(f"{path}: Sérsic rows need a sersic_n column")
        ns = np.asarray(t["sersic_n"], float)[sersic]
        if not np.all((ns >= 0.3) & (ns <= 6.2)):
            raise ProbcatValueError(f"{path}: sersic_n must lie in [0.3, 6.2] (GalSim's range)")
    if "sersic_n" not in t.colnames:
        t["sersic_n"] = np.full(n, np.nan)
    for c in ("knot_frac", "arm_frac", "bar_frac", "n_knots"):
        given = np.asarray(t[c], float) if c in t.colnames else np.full(n, np.nan)
        value = np.zeros(n)
        for fam, d in FAMILY_DEFAULTS.items():
            rows = code == FAMILIES.index(fam)
            if c in d:
                value[rows] = np.where(np.isfinite(given[rows]), given[rows], d[c])
        if c == "n_knots":
            if np.any(value < 0) or np.any(value != np.round(value)):
                raise ProbcatValueError(f"{path}: n_knots must be whole numbers >= 0")
            value = value.astype(np.int64)
        elif np.any((value < 0) | (value >= 1)):
            raise ProbcatValueError(f"{path}: column {c} must lie in [0, 1)")
        t[c] = value
    if np.any(np.asarray(t["arm_frac"]) + np.asarray(t["bar_frac"]) >= 1):
        raise ProbcatValueError(f"{path}: arm_frac + bar_frac must stay below 1")
    if "morph_seed" not in t.colnames:
        ids = np.asarray(t["id"], np.int64)
        t["morph_seed"] = np.array(
            [np.random.default_rng([abs(int(i)), 7919]).integers(1, 2**31 - 1) for i in ids],
            np.int64,
        )
    return t


def star_magnitudes(rng: np.random.Generator, n: int) -> np.ndarray:
    """i-band star magnitudes, 20 < i < 27, dN/di proportional to 10**(0.1 i)."""
    return _power_law_mags(rng, n, *STAR_MAG_RANGE, STAR_COUNT_SLOPE)


@lru_cache(maxsize=8)
def _blackbody_colour_grid(bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    import galsim

    temps = np.linspace(3500.0, 8000.0, 46)
    h, c, k = 6.62607015e-34, 2.99792458e8, 1.380649e-23
    out = np.zeros((len(temps), len(bands)))
    bps = {b: galsim.Bandpass(f"LSST_{b}.dat", wave_type="nm").withZeropoint("AB") for b in bands}
    for i, temp in enumerate(temps):

        def f_lambda(wave_nm, temp=temp):
            lam = wave_nm * 1e-9
            return 1.0 / lam**5 / np.expm1(h * c / (lam * k * temp))

        sed = galsim.SED(f_lambda, wave_type="nm", flux_type="flambda")
        mags = np.array([sed.calculateMagnitude(bps[b]) for b in bands])
        out[i] = mags - (
            sed.calculateMagnitude(
                galsim.Bandpass("LSST_i.dat", wave_type="nm").withZeropoint("AB")
            )
        )
    return temps, out


def star_colors(rng: np.random.Generator, n: int, bands: tuple[str, ...]) -> np.ndarray:
    """Offsets ``mag_b - mag_i`` for ``n`` stars, shape ``(n, len(bands))``."""
    if tuple(bands) == ("i",):
        return np.zeros((n, 1))
    temps, grid = _blackbody_colour_grid(tuple(bands))
    idx = rng.integers(0, len(temps), n)
    return grid[idx]
