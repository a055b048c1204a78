"""Population "hdf": galaxy stamps cut from a colour image, their rendering and splits."""

import math

import galsim
import numpy as np
import pytest

from probcat.errors import ProbcatValueError
from probcat.simulate import hubble
from probcat.simulate.prior import galaxy_population, is_builtin, prior_version
from probcat.simulate.render import galaxy_profile_for


def _srgb(linear: np.ndarray) -> np.ndarray:
    """Linear intensity in [0, 1] to 8-bit sRGB (the inverse of hubble._linear)."""
    v = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(np.round(255 * v), 0, 255).astype(np.uint8)


def _gauss(shape, x, y, sigma, amp):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def _scene():
    """A 120x160 colour image: a round galaxy (sigma 4 px) and an elongated one, a
    galaxy cut by the border and a saturated star, on a faint noisy sky."""
    rng = np.random.default_rng(0)
    lin = 0.002 + 0.0004 * rng.standard_normal((120, 160))
    lin += _gauss(lin.shape, 40.3, 60.6, 4.0, 0.25)
    yy, xx = np.mgrid[:120, :160]
    lin += 0.2 * np.exp(-(((xx - 110) / 7.0) ** 2 + ((yy - 40) / 2.5) ** 2) / 2)
    lin += _gauss(lin.shape, 157.0, 100.0, 4.0, 0.25)  # touches the right border
    lin += _gauss(lin.shape, 110.0, 95.0, 2.0, 3.0)  # saturated core
    return np.repeat(_srgb(np.clip(lin, 0, 1))[..., None], 3, axis=-1)


def test_extract_stamps_keeps_whole_unsaturated_galaxies_at_unit_flux():
    stamps, radii = hubble.extract_stamps(_scene())
    assert len(stamps) == 2  # the border galaxy and the saturated star are left out
    for s in stamps:
        assert s.sum() == pytest.approx(1.0) and s.min() >= 0
    # the round galaxy: half-light radius of a Gaussian, sigma sqrt(2 ln 2); the 3-sigma
    # isophote and 8-bit steps cut a little of its wings
    round_ = int(np.argmin([abs(s.shape[0] - s.shape[1]) for s in stamps]))
    assert radii[round_] == pytest.approx(4.0 * math.sqrt(2 * math.log(2)), rel=0.08)
    elongated = stamps[1 - round_]
    assert elongated.shape[1] > 2 * elongated.shape[0]


def test_extract_stamps_refuses_a_grey_image():
    with pytest.raises(ProbcatValueError, match="colour image"):
        hubble.extract_stamps(np.zeros((50, 50)))


def _library(n=30):
    """Synthetic stamps: asymmetric pairs of Gaussians of growing size."""
    stamps, radii = [], []
    for k in range(n):
        s = 1.5 + 0.2 * k
        m = int(8 * s) | 1
        img = _gauss((m, m), m / 2, m / 2, s, 1.0) + _gauss(
            (m, m), m / 2 + 1.5 * s, m / 2, s / 2, 0.6
        )
        img /= img.sum()
        stamps.append(img)
        radii.append(hubble._half_light_radius(img))
    return stamps, np.asarray(radii)


def test_hdf_splits_are_disjoint_and_sizes_matched_by_rank():
    lib = _library()
    used = {}
    for split in ("train", "val", "test"):
        t = hubble.hdf_galaxies(400, split=split, seed=3, stamps=lib)
        used[split] = set(np.asarray(t["hdf_index"]).tolist())
        assert used[split] <= set(hubble._split_stamps(len(lib[0]), split).tolist())
        rank = np.corrcoef(np.argsort(np.argsort(t["disk_hlr"])), lib[1][t["hdf_index"]])[0, 1]
        assert rank > 0.8
    assert not used["train"] & used["test"] and not used["val"] & used["test"]
    assert not used["train"] & used["val"]


def test_hdf_profile_has_the_requested_flux_size_centroid_and_mirror():
    lib = _library()
    row = {"hdf_index": 12, "disk_hlr": 0.7, "beta": 0.0, "flip": 0}
    prof = hubble.hdf_profile(row, stamps=lib)
    assert prof.flux == pytest.approx(1.0)
    hlr = prof.calculateHLR(size=400, scale=0.01, centroid=galsim.PositionD(0, 0))
    assert hlr == pytest.approx(0.7, rel=0.01)
    assert abs(prof.centroid.x) < 1e-6 and abs(prof.centroid.y) < 1e-6
    a = prof.drawImage(nx=81, ny=81, scale=0.05).array
    b = hubble.hdf_profile({**row, "flip": 1}, stamps=lib).drawImage(nx=81, ny=81, scale=0.05)
    assert np.abs(b.array - a[:, ::-1]).max() < 1e-3 * a.max()  # mirrored in x
    assert np.abs(b.array - a).max() > 0.05 * a.max()  # the stamp is not symmetric
    turned = hubble.hdf_profile({**row, "beta": math.pi / 2}, stamps=lib)
    c = turned.drawImage(nx=81, ny=81, scale=0.05).array
    assert np.abs(c - np.rot90(a, k=-1)).max() < 1e-3 * a.max()  # +x to +y (y = row index)


def test_population_hdf_dispatches_and_renders(monkeypatch):
    lib = _library()
    monkeypatch.setattr(hubble, "hdf_stamps", lambda: (tuple(lib[0]), lib[1]))
    hubble._native_hdf.cache_clear()
    try:
        assert is_builtin("hdf") and prior_version("hdf") == hubble.HDF_VERSION
        t = galaxy_population("hdf", split="test", seed=0, bands=("i",), n=20)
        assert len(t) == 20 and "hdf_index" in t.colnames
        prof = galaxy_profile_for(t[0])
        hlr = prof.calculateHLR(size=600, scale=0.01, centroid=galsim.PositionD(0, 0))
        assert hlr == pytest.approx(float(t["disk_hlr"][0]), rel=0.02)
    finally:
        hubble._native_hdf.cache_clear()


def test_missing_image_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(hubble.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ProbcatValueError, match=r"pip install -e \"\.\[hubble\]\""):
        hubble.hdf_path()


def test_morphology_hdf_mix_shares_splits_ids_and_renders_each_part(monkeypatch):
    from probcat.simulate.prior import HDF_FAMILY, HDF_MIX_FRACTION, morphology_galaxies
    from probcat.simulate.scene import SceneConfig, SceneSimulator

    lib = _library()
    monkeypatch.setattr(hubble, "hdf_stamps", lambda: (tuple(lib[0]), lib[1]))
    hubble._native_hdf.cache_clear()
    try:
        assert is_builtin("morphology+hdf") and is_builtin("morphology:sersic+hdf")
        assert prior_version("morphology+hdf").endswith(f"hdf v1 ({HDF_MIX_FRACTION:g})")
        with pytest.raises(ProbcatValueError, match="'\\+hdf' follows morphology"):
            galaxy_population("parametric+hdf", split="train", seed=0, bands=("i",), n=10)
        tabs = {
            s: galaxy_population("morphology+hdf", split=s, seed=0, bands=("i",), n=200)
            for s in ("train", "val", "test")
        }
        t = tabs["train"]
        real = np.asarray(t["hdf_index"]) >= 0
        assert real.sum() == round(200 * HDF_MIX_FRACTION)
        assert (np.asarray(t["family"])[real] == HDF_FAMILY).all()
        assert (np.asarray(t["family"])[~real] < HDF_FAMILY).all()
        # the parametric part is the morphology population's own galaxies
        own = morphology_galaxies(200 - real.sum(), split="train", seed=0)
        assert set(np.asarray(t["id"])[~real]) == set(np.asarray(own["id"]))
        ids = [set(np.asarray(v["id"]).tolist()) for v in tabs.values()]
        assert len(ids[0]) == 200 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        stamps = [set(np.asarray(v["hdf_index"])[np.asarray(v["hdf_index"]) >= 0].tolist())
                  for v in tabs.values()]  # fmt: skip
        assert not (stamps[0] & stamps[1] or stamps[0] & stamps[2] or stamps[1] & stamps[2])
        # each row renders as its own kind: a real stamp, or its family's profile
        i_real, i_par = int(np.flatnonzero(real)[0]), int(np.flatnonzero(~real)[0])
        row = t[i_real]
        want = hubble.hdf_profile(row).drawImage(nx=41, ny=41, scale=0.1).array
        got = galaxy_profile_for(row).drawImage(nx=41, ny=41, scale=0.1).array
        assert np.allclose(got, want)
        row = {c: t[i_par][c] for c in t.colnames if c not in ("hdf_index", "flip")}
        psf = galsim.Gaussian(sigma=0.3)
        want = galsim.Convolve(galaxy_profile_for(row), psf).drawImage(nx=41, ny=41, scale=0.1)
        got = galsim.Convolve(galaxy_profile_for(t[i_par]), psf).drawImage(nx=41, ny=41, scale=0.1)
        want, got = want.array, got.array
        assert np.allclose(got, want)
        # a scene catalog keeps which galaxies are real, and stars are not
        from probcat.simulate.bank import BankConfig, SourceBank
        from probcat.survey import Survey

        bank = SourceBank.build(
            Survey.lsst(bands="i"),
            BankConfig(population="morphology+hdf", split="train", n_galaxies=40),
        )
        sim = SceneSimulator(bank, SceneConfig(32, 32, galaxy_density=2000.0))
        cat = sim.sample(np.random.default_rng(1)).catalog
        gal = np.asarray(cat["galaxy"], bool)
        idx = np.asarray(cat["hdf_index"])
        assert (idx[~gal] == -1).all()
        assert (idx[gal] >= 0).any() and (idx[gal] == -1).any()
        assert np.array_equal(idx[gal], np.asarray(bank.table["hdf_index"])[cat["bank_index"][gal]])
        # ... so that GalSim, drawing each source on the whole image, gives the same pixels
        from probcat.simulate.render import render_direct

        slow = render_direct(cat, sim.survey, (32, 32))
        assert np.abs(sim.compose(cat) - slow).max() < 0.02 * sim.survey.noise_sigma[0]
    finally:
        hubble._native_hdf.cache_clear()
