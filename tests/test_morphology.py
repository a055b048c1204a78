"""Morphology-rich prior: families render with the requested flux and half-light radius,
the bank's dihedral stamps equal direct rendering, family splits stay disjoint."""

import numpy as np
import pytest

from probcat.errors import ProbcatValueError
from probcat.simulate import prior
from probcat.simulate.bank import BankConfig, SourceBank, dihedral, dihedral_truth
from probcat.simulate.render import draw_stamp, galaxy_profile_for, render_direct
from probcat.simulate.scene import SceneConfig, SceneSimulator


def _row(family, **over):
    t = prior.morphology_galaxies(400, split="val", seed=5, families=(family,))
    row = {c: t[c][0] for c in t.colnames}
    row.update(over)
    return row


def _brute_force_hlr(img: np.ndarray, scale: float) -> tuple[float, float]:
    """(total flux, radius about the light centroid holding half of it), by sorting pixels."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    tot = img.sum()
    cx, cy = (img * xx).sum() / tot, (img * yy).sum() / tot
    r = np.hypot(xx - cx, yy - cy).ravel()
    order = np.argsort(r)
    cum = np.cumsum(img.ravel()[order])
    return float(tot), float(r[order][np.searchsorted(cum, 0.5 * tot)] * scale)


@pytest.mark.parametrize(
    "family,over",
    [
        ("sersic", {"sersic_n": 0.5}),
        ("sersic", {"sersic_n": 4.0}),
        ("clumpy", {}),
        ("spiral", {"bar_frac": 0.1}),
        ("irregular", {}),
    ],
)
def test_family_renders_requested_flux_and_half_light_radius(family, over):
    hlr = 0.6
    row = _row(family, disk_hlr=hlr, disk_q=1.0, **over)
    prof = galaxy_profile_for(row)
    scale, size = 0.02, 1200
    img = prof.drawImage(nx=size, ny=size, scale=scale, method="no_pixel").array
    flux, got = _brute_force_hlr(img, scale)
    expected_flux = 1.0 if family != "sersic" or over["sersic_n"] < 1 else 0.99
    assert flux == pytest.approx(expected_flux, abs=0.01)
    assert got == pytest.approx(hlr, rel=0.03)
    # and the light-weighted centroid is the source position
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    assert (img * xx).sum() / img.sum() - c == pytest.approx(0.0, abs=0.05)
    assert (img * yy).sum() / img.sum() - c == pytest.approx(0.0, abs=0.05)


def test_families_differ_from_bulge_disk_and_axis_ratio_shears():
    row = _row("spiral", disk_q=0.4, beta=0.0)
    img = galaxy_profile_for(row).drawImage(nx=200, ny=200, scale=0.02).array
    yy, xx = np.mgrid[:200, :200]
    w = img / img.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    ixx, iyy = (w * (xx - mx) ** 2).sum(), (w * (yy - my) ** 2).sum()
    assert iyy < 0.5 * ixx  # elongated along x (beta = 0), q = 0.4


def test_family_split_keeps_galaxies_disjoint():
    train = prior.galaxy_population(
        "morphology:bulge_disk+sersic+spiral+irregular", split="train", seed=0, bands=("i",), n=900
    )
    held = prior.galaxy_population("morphology:clumpy", split="test", seed=0, bands=("i",), n=300)
    same_split = prior.galaxy_population(
        "morphology:clumpy", split="train", seed=0, bands=("i",), n=300
    )
    assert prior.FAMILIES.index("clumpy") not in set(np.asarray(train["family"]))
    assert set(np.asarray(held["family"])) == {prior.FAMILIES.index("clumpy")}
    assert len(np.intersect1d(train["id"], held["id"])) == 0
    assert len(np.intersect1d(train["id"], same_split["id"])) == 0
    assert len(np.unique(train["id"])) == len(train)
    full = prior.galaxy_population("morphology", split="train", seed=0, bands=("i",), n=10000)
    frac = np.bincount(np.asarray(full["family"]), minlength=5) / len(full)
    assert frac == pytest.approx([prior.FAMILY_FRACTIONS[f] for f in prior.FAMILIES], abs=1e-3)
    with pytest.raises(ProbcatValueError, match="unknown family"):
        prior.parse_families("morphology:spirals")


def test_dc2_morphology_keeps_dc2_rows_and_colours_with_family_shapes():
    dc2 = prior.dc2_galaxies(split="test", seed=0, bands=("g", "r"))
    t = prior.galaxy_population("dc2:morphology", split="test", seed=0, bands=("g", "r"))
    for c in ("id", "mag_g", "mag_r", "redshift"):
        assert np.array_equal(np.asarray(t[c]), np.asarray(dc2[c]), equal_nan=True), c
    assert "mag_i" not in t.colnames and t.meta["POPKIND"] == "dc2"
    fam = np.asarray(t["family"])
    frac = np.bincount(fam, minlength=5) / len(t)
    assert frac == pytest.approx([prior.FAMILY_FRACTIONS[f] for f in prior.FAMILIES], abs=0.01)
    sersic = fam == prior.FAMILIES.index("sersic")
    n = np.asarray(t["sersic_n"])
    assert np.all((n[sersic] >= 0.5) & (n[sersic] <= 6.0)) and np.all(np.isnan(n[~sersic]))
    knots = np.asarray(t["knot_frac"])
    for name in ("clumpy", "irregular"):
        assert np.all(knots[fam == prior.FAMILIES.index(name)] >= 0.05), name
    assert np.all(knots[fam == prior.FAMILIES.index("bulge_disk")] == 0)
    only = prior.galaxy_population("dc2:morphology:spiral", split="test", seed=0, bands=("i",))
    assert set(np.asarray(only["family"])) == {prior.FAMILIES.index("spiral")}
    assert np.all(np.asarray(only["arm_frac"]) >= 0.1)
    assert prior.prior_version("dc2:morphology:spiral") == "dc2 v1 + morphology v1 (spiral)"
    assert prior.is_builtin("dc2:morphology") and not prior.is_builtin("cat.fits")
    with pytest.raises(ProbcatValueError, match="after 'dc2:'"):
        prior.galaxy_population("dc2:bulge", split="test", seed=0, bands=("i",))


@pytest.mark.slow
def test_dc2_morphology_scene_has_the_dc2_scene_sources(tmp_path):
    from probcat.simulate.datasets import Simulation, SimulationConfig

    scenes = {}
    for pop in ("dc2", "dc2:morphology"):
        cfg = SimulationConfig(
            recipe="blend", bands="gi", population=pop, bank_size=12, n=1, size=32, split="test"
        )
        sim = Simulation(cfg, cache_dir=tmp_path, workers=1, progress=False)
        scenes[pop] = sim.scene(0)[0].catalog
    a, b = scenes["dc2"], scenes["dc2:morphology"]
    assert np.array_equal(a["source_id"], b["source_id"])
    gal = np.asarray(a["galaxy"], bool)
    assert np.array_equal(np.asarray(a["redshift"])[gal], np.asarray(b["redshift"])[gal])
    assert np.allclose(np.asarray(a["x"])[~gal], np.asarray(b["x"])[~gal])


@pytest.fixture(scope="module")
def morph_bank(tmp_path_factory):
    from probcat.survey import Survey

    cfg = BankConfig(population="morphology", n_galaxies=30, n_star_phases=2, split="val")
    return SourceBank.load_or_build(
        Survey.lsst(bands="i"),
        cfg,
        cache_dir=tmp_path_factory.mktemp("bank"),
        workers=1,
        progress=False,
    )


@pytest.mark.parametrize("variant", [0, 3, 5, 6])
def test_morphology_bank_dihedral_stamps_equal_direct_rendering(morph_bank, variant):
    b = morph_bank
    band = b.survey["i"]
    for family in ("clumpy", "spiral", "irregular"):
        code = prior.FAMILIES.index(family)
        idx = np.flatnonzero((np.asarray(b.table["family"]) == code) & (b.half < 40))
        i = int(idx[np.argmax(b.flux[idx, 0])])
        row = {c: b.table[c][i] for c in b.table.colnames}
        dx, dy, _ = dihedral_truth(b.dx[i], b.dy[i], row["beta"], variant)
        n = b.stamp(i).shape[-1]
        prof = galaxy_profile_for(row, variant)
        direct = (
            draw_stamp(prof, band.psf(), band.pixel_scale, n, float(dx), float(dy)) * b.flux[i, 0]
        )
        got = dihedral(b.stamp(i), variant)[0]
        assert np.abs(got - direct).max() < 1e-3 * band.noise_sigma, family


def test_morphology_scene_composition_equals_direct_rendering(morph_bank):
    sim = SceneSimulator(morph_bank, SceneConfig(40, 40, galaxy_density=400.0, margin=4))
    cat = sim.sample_catalog(np.random.default_rng(3))
    assert "family" in cat.colnames and len(cat) > 3
    fast = sim.compose(cat)
    slow = render_direct(cat, sim.survey, (40, 40))
    assert np.abs(fast - slow).max() < 0.02 * sim.survey.noise_sigma[0]


def test_sersic_index_range_and_unit_flux_profiles():
    t = prior.morphology_galaxies(3000, split="train", seed=1, families=("sersic",))
    n = np.asarray(t["sersic_n"])
    assert n.min() >= 0.5 and n.max() <= 6.0 and np.mean(n > 2.5) == pytest.approx(0.3, abs=0.1)
    for fam in prior.FAMILIES:
        assert galaxy_profile_for(_row(fam)).flux == pytest.approx(1.0, rel=1e-9)


def _user_catalog(tmp_path, **cols):
    from astropy.table import Table

    base = {
        "id": [11, 12, 13, 14, 15],
        "mag_i": [21.0, 21.5, 22.0, 22.5, 23.0],
        "disk_hlr": [0.6, 0.5, 0.7, 0.4, 0.5],
        "disk_q": [0.6, 0.9, 0.5, 0.8, 0.7],
        "beta": [0.1, 0.5, 1.0, 1.5, 2.0],
        "family": ["sersic", "Clumpy", "spiral", "irregular", "bulge_disk"],
        "sersic_n": [4.0, np.nan, np.nan, np.nan, np.nan],
    }
    base.update(cols)
    p = tmp_path / "user.parquet"
    Table(base).write(p, overwrite=True)
    return p


def test_user_catalog_with_families_renders_them(tmp_path):
    t = prior.read_population(_user_catalog(tmp_path), bands=("i",))
    assert np.asarray(t["family"]).tolist() == [1, 2, 3, 4, 0]
    assert set(prior.FAMILY_COLUMNS) <= set(t.colnames)
    # the prior's defaults where the catalog is silent; the same seed on every read
    assert t["n_knots"][1] == prior.FAMILY_DEFAULTS["clumpy"]["n_knots"]
    assert t["arm_frac"][2] == prior.FAMILY_DEFAULTS["spiral"]["arm_frac"]
    again = prior.read_population(_user_catalog(tmp_path), bands=("i",))
    assert np.array_equal(t["morph_seed"], again["morph_seed"])
    for i in range(5):
        row = {c: t[c][i] for c in t.colnames}
        prof = galaxy_profile_for(row)
        assert prof.flux == pytest.approx(1.0, abs=1e-6)
        assert float(prof.centroid.x) == pytest.approx(0.0, abs=1e-6)
    # the clumpy row is the exponential plus its clumps, not a smooth disc
    import galsim

    smooth = galsim.Exponential(half_light_radius=0.5).shear(q=0.9, beta=0.5 * galsim.radians)
    img = galaxy_profile_for({c: t[c][1] for c in t.colnames}).drawImage(nx=33, ny=33, scale=0.2)
    assert np.abs(img.array - smooth.drawImage(nx=33, ny=33, scale=0.2).array).max() > 1e-3


@pytest.mark.parametrize(
    "cols, message",
    [
        ({"family": ["sersic", "clumpy", "spiral", "irregular", "elliptical"]}, "unknown family"),
        ({"family": [1, 2, 3, 4, 7]}, "outside"),
        ({"sersic_n": [9.0, np.nan, np.nan, np.nan, np.nan]}, "sersic_n must lie"),
        ({"knot_frac": [0.0, 1.5, 0.1, 0.1, 0.0]}, "knot_frac must lie"),
        ({"n_knots": [0, 2.5, 3, 4, 0]}, "whole numbers"),
    ],
)
def test_user_catalog_family_errors_are_clear(tmp_path, cols, message):
    with pytest.raises(ProbcatValueError, match=message):
        prior.read_population(_user_catalog(tmp_path, **cols), bands=("i",))


def test_user_catalog_sersic_rows_need_an_index(tmp_path):
    from astropy.table import Table

    p = _user_catalog(tmp_path)
    t = Table.read(p)
    del t["sersic_n"]
    t.write(p, overwrite=True)
    with pytest.raises(ProbcatValueError, match="need a sersic_n"):
        prior.read_population(p, bands=("i",))


def test_bright_supplement_adds_bright_galaxies_drawn_at_their_share():
    """population morphology+bright: the morphology galaxies unchanged, plus a quarter as
    many of i in [16, 21] (families in their fractions, ids of their own, disjoint across
    splits), which scenes draw, as a whole, with probability BRIGHT_DRAW_SHARE."""
    base = prior.galaxy_population("morphology", split="train", seed=0, bands=("i",), n=2000)
    t = prior.galaxy_population("morphology+bright", split="train", seed=0, bands=("i",), n=2000)
    val = prior.galaxy_population("morphology+bright", split="val", seed=0, bands=("i",), n=2000)
    ids = np.asarray(t["id"])
    old = np.isin(ids, np.asarray(base["id"]))
    assert old.sum() == len(base) and (~old).sum() == round(2000 * prior.BRIGHT_SHARE)
    mags = np.asarray(t["mag_i"])[~old]
    lo, hi = prior.BRIGHT_RANGE
    assert mags.min() >= lo and mags.max() <= hi and mags.min() < lo + 0.5  # uniform: it reaches
    frac = np.bincount(np.asarray(t["family"])[~old], minlength=5) / (~old).sum()
    assert frac == pytest.approx([prior.FAMILY_FRACTIONS[f] for f in prior.FAMILIES], abs=0.01)
    assert len(np.unique(ids)) == len(t) and len(np.intersect1d(ids, val["id"])) == 0
    w = np.asarray(t["draw_weight"])
    assert np.all(w[old] == 1.0)
    assert w[~old].sum() / w.sum() == pytest.approx(prior.BRIGHT_DRAW_SHARE)
    # the same base rows (every column) as the morphology population's
    by_id = {int(i): k for k, i in enumerate(ids)}
    rows = [by_id[int(i)] for i in base["id"]]
    for c in ("mag_i", "disk_hlr", "family", "morph_seed"):
        np.testing.assert_array_equal(np.asarray(t[c])[rows], np.asarray(base[c]))
    assert "bright supplement" in prior.prior_version("morphology+bright")
    assert prior.is_builtin("morphology:clumpy+bright")
    with pytest.raises(ProbcatValueError, match="'\\+bright' follows morphology"):
        prior.parse_bright_mix("dc2+bright")
