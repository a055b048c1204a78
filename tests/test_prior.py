import numpy as np
import pytest
from astropy.table import Table

from probcat.errors import ProbcatValueError
from probcat.simulate import prior


def test_galaxy_number_counts_match_targets_within_10_percent():
    m = prior.sample_galaxy_mags(np.random.default_rng(0), 400_000)
    assert m.min() >= 18 and m.max() <= 27
    assert prior.GALAXY_DENSITY == 160.0
    gold = prior.GALAXY_DENSITY * np.mean(m < 25.3)
    assert gold == pytest.approx(55.0, rel=0.1)


def test_star_magnitudes_in_range():
    m = prior.star_magnitudes(np.random.default_rng(0), 10_000)
    assert m.min() >= 20 and m.max() <= 27
    # shallow counts: more faint than bright stars, but not by much
    assert 1 < np.mean(m > 23.5) / np.mean(m < 23.5) < 3


def test_parametric_splits_are_disjoint_and_reproducible():
    a = prior.parametric_galaxies(500, split="train", seed=3)
    b = prior.parametric_galaxies(500, split="test", seed=3)
    again = prior.parametric_galaxies(500, split="train", seed=3)
    assert len(np.intersect1d(a["id"], b["id"])) == 0
    assert not np.allclose(a["disk_hlr"], b["disk_hlr"])
    assert np.array_equal(a["disk_hlr"], again["disk_hlr"])
    for c in prior.POPULATION_COLUMNS:
        assert c in a.colnames
    assert np.all((a["disk_q"] > 0) & (a["disk_q"] <= 1))
    assert np.all((a["bulge_frac"] >= 0) & (a["bulge_frac"] <= 1))
    # fainter galaxies are smaller (Miller et al. 2013 size-magnitude relation)
    m = np.asarray(a["mag_i"])
    assert np.median(a["disk_hlr"][m < 24]) > np.median(a["disk_hlr"][m > 26])


def test_dc2_population_has_redshifts_colours_and_disjoint_splits():
    tr = prior.dc2_galaxies(split="train", seed=0)
    te = prior.dc2_galaxies(split="test", seed=0)
    assert len(np.intersect1d(tr["id"], te["id"])) == 0
    z = np.asarray(tr["redshift"])
    assert np.all(np.isfinite(z)) and 0.0 < np.median(z) < 2.0
    mi = np.asarray(tr["mag_i"])
    gold = mi < 25.3
    assert 0.2 < gold.mean() < 0.5  # the rest is the resampled faint tail
    assert mi.max() <= 27.0 + 1e-9
    for b in "ugrizy":
        assert np.all(np.asarray(tr[f"mag_{b}"]) < 40)  # non-detections imputed
    # colours carry redshift information: g - i reddens with z at low redshift
    gi = np.asarray(tr["mag_g"]) - mi
    low, high = (z < 0.3) & gold, (z > 0.6) & (z < 1.0) & gold
    assert np.median(gi[high]) > np.median(gi[low])


def test_cww_population_is_dc2_with_the_templates_colours():
    import galsim

    from probcat.simulate.igm import madau_transmission

    d = prior.dc2_galaxies(split="val", seed=3, bands=tuple("griz"))
    c = prior.galaxy_population("cww", split="val", seed=3, bands=tuple("griz"))
    for col in ("id", "redshift", "mag_i", "disk_hlr", "disk_q", "beta", "bulge_frac"):
        np.testing.assert_array_equal(c[col], d[col])  # the same galaxies, i kept
    assert set(c["template"]) == set(prior.CWW_TEMPLATES)
    assert prior.is_builtin("cww") and "cww" in prior.prior_version("cww")
    # colours against GalSim's own magnitudes of the redshifted template (brute force;
    # the table interpolates between redshifts 0.01 apart)
    bp = {b: galsim.Bandpass(f"LSST_{b}.dat", "nm").withZeropoint("AB") for b in "griz"}
    rows = np.random.default_rng(0).choice(len(c), 12, replace=False)
    for r in rows:
        sed = galsim.SED(f"CWW_{c['template'][r]}_ext.sed", "Ang", "flambda")
        z = float(c["redshift"][r])
        red = sed.atRedshift(z) * (lambda nm, z=z: madau_transmission(nm, z))
        for b in "grz":
            want = red.calculateMagnitude(bp[b]) - red.calculateMagnitude(bp["i"])
            got = c[f"mag_{b}"][r] - c["mag_i"][r]
            assert abs(got - want) < 0.02, (r, b, got, want)
    # the templates' colours differ from DC2's: an elliptical is redder in g - i than
    # an irregular at every redshift below 1.5
    gi = np.asarray(c["mag_g"]) - np.asarray(c["mag_i"])
    z = np.asarray(c["redshift"])
    for lo in (0.1, 0.5, 1.0):
        sel = (z > lo) & (z < lo + 0.3)
        e, im = sel & (c["template"] == "E"), sel & (c["template"] == "Im")
        assert np.median(gi[e]) > np.median(gi[im]) + 0.5
    with pytest.raises(ProbcatValueError, match="band i"):
        prior.cww_galaxies(split="val", bands=("g", "r"))


def test_user_catalog_replaces_prior(tmp_path):
    t = Table(
        {
            "id": [1, 2],
            "mag_i": [22.0, 24.0],
            "disk_hlr": [0.5, 0.3],
            "disk_q": [0.5, 0.9],
            "beta": [0.1, 1.0],
        }
    )
    p = tmp_path / "cat.fits"
    t.write(p)
    out = prior.read_population(p, bands=("i",))
    assert np.all(out["bulge_frac"] == 0) and np.all(np.isnan(out["redshift"]))
    bad = tmp_path / "bad.parquet"
    Table({"id": [1], "mag_i": [22.0]}).write(bad)
    with pytest.raises(ProbcatValueError, match="missing column"):
        prior.read_population(bad, bands=("i",))


def test_star_colours_are_ordered_with_temperature():
    c = prior.star_colors(np.random.default_rng(1), 200, tuple("ugrizy"))
    assert c.shape == (200, 6)
    assert np.allclose(c[:, 3], 0.0)  # relative to i
    assert np.all(c[:, 0] > c[:, 2])  # stars in this range are redder in u than r


@pytest.mark.parametrize("f", [0.0, 0.3, 0.75])
def test_split_rows_moves_validation_rows_only(f):
    n = 1000
    parts = {s: prior.split_rows(n, s, 4, f) for s in prior.SPLITS}
    everything = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(everything), np.arange(n))  # disjoint and complete
    base = {s: prior.split_rows(n, s, 4) for s in prior.SPLITS}
    assert np.array_equal(parts["test"], base["test"])  # the test third never changes
    moved = int(round(f * len(base["val"])))
    assert len(parts["train"]) == len(base["train"]) + moved
    assert set(base["train"]) <= set(parts["train"]) and set(parts["val"]) <= set(base["val"])
    with pytest.raises(ProbcatValueError, match="val_to_train"):
        prior.split_rows(n, "train", 4, 1.0)


def test_val_to_train_applies_to_catalog_populations_only():
    tr = prior.galaxy_population("dc2", split="train", seed=0, bands=("i",), val_to_train=0.5)
    va = prior.galaxy_population("dc2", split="val", seed=0, bands=("i",), val_to_train=0.5)
    te = prior.galaxy_population("dc2", split="test", seed=0, bands=("i",), val_to_train=0.5)
    gold = {k: int((np.asarray(t["mag_i"]) < 25.3).sum()) for k, t in dict(tr=tr, va=va).items()}
    assert gold["tr"] == pytest.approx(3 * gold["va"], rel=0.01)  # a third plus half a third
    ids = [set(np.asarray(t["id"])) for t in (tr, va, te)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    with pytest.raises(ProbcatValueError, match="catalog populations"):
        prior.galaxy_population("parametric", split="train", seed=0, bands=("i",), val_to_train=0.5)
