import numpy as np
import pytest
import torch

from probcat.catalog import FullCatalog, TileCatalog, make_wcs
from probcat.errors import ProbcatIOError, ProbcatValueError


def _cat(n=6, seed=0, shape=(20, 30)):
    rng = np.random.default_rng(seed)
    return FullCatalog(
        {
            "x": rng.uniform(-0.5, shape[1] - 0.5, n),
            "y": rng.uniform(-0.5, shape[0] - 0.5, n),
            "galaxy": rng.random(n) < 0.5,
            "flux": rng.uniform(1e3, 1e5, (n, 2)),
            "source_id": np.arange(n, dtype=np.int64),
        },
        shape,
        ("g", "i"),
        {"seed": seed},
    )


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_file_round_trip_is_lossless(tmp_path, suffix):
    c = _cat()
    wcs = make_wcs(c.image_shape, 0.2, 150.0, 2.0)
    c.write(tmp_path / f"cat{suffix}", wcs=wcs)
    back = FullCatalog.read(tmp_path / f"cat{suffix}")
    assert back.image_shape == c.image_shape and back.bands == c.bands and back.meta == c.meta
    for k in c.colnames:
        assert np.array_equal(back[k], c[k]), k
        assert back[k].dtype == c[k].dtype, k


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        FullCatalog.read(tmp_path / "missing.fits")
    bad = tmp_path / "bad.fits"
    bad.write_text("not fits")
    with pytest.raises(ProbcatIOError):
        FullCatalog.read(bad)
    with pytest.raises(ProbcatValueError):
        _cat().write(tmp_path / "cat.txt")


def test_wcs_pixel_sky_round_trip():
    c = _cat()
    wcs = make_wcs(c.image_shape, 0.2, 150.0, 2.0)
    t = c.to_table(wcs)
    x, y = wcs.world_to_pixel_values(t["ra"], t["dec"])
    assert np.allclose(x, c["x"], atol=1e-6) and np.allclose(y, c["y"], atol=1e-6)
    # the reference pixel (1-indexed crpix) maps to crval; pixel scale 0.2"
    ra, dec = wcs.pixel_to_world_values((30 - 1) / 2, (20 - 1) / 2)
    assert ra == pytest.approx(150.0) and dec == pytest.approx(2.0)
    ra2, dec2 = wcs.pixel_to_world_values((30 - 1) / 2, (20 - 1) / 2 + 1)
    assert (dec2 - dec) * 3600 == pytest.approx(0.2, rel=1e-4)


def test_tile_round_trip_one_source_per_tile():
    # one source in each of a few tiles, at arbitrary positions inside them
    xs = np.array([0.1, 7.3, 13.9, 24.49])
    ys = np.array([-0.4, 11.2, 3.3, 19.4])
    c = FullCatalog(
        {"x": xs, "y": ys, "flux": np.ones((4, 1)), "galaxy": np.array([1, 0, 1, 1], bool)},
        (20, 25),
    )
    t = c.to_tiles(5)
    assert t.n_sources.shape == (1, 4, 5) and t.n_sources.sum() == 4 and t.n_collisions == 0
    assert torch.all((t.locs >= 0) & (t.locs < 1))
    back = t.to_full()[0]
    order = np.argsort(back["y"] * 100 + back["x"])
    ref = np.argsort(ys * 100 + xs)
    assert np.allclose(back["x"][order], xs[ref], atol=1e-5)
    assert np.allclose(back["y"][order], ys[ref], atol=1e-5)
    assert np.array_equal(back["galaxy"][order].astype(bool), c["galaxy"][ref])


def test_tile_keeps_brightest_and_counts_collisions():
    c = FullCatalog(
        {
            "x": np.array([1.0, 2.0, 3.0, 12.0]),
            "y": np.array([1.0, 2.0, 0.0, 12.0]),
            "flux": np.array([[5.0], [50.0], [1.0], [3.0]]),
        },
        (15, 15),
    )
    t = c.to_tiles(5)
    assert t.n_collisions == 2
    assert t.n_sources[0, 0, 0] == 1
    assert t.params["flux"][0, 0, 0, 0] == 50.0
    assert t.locs[0, 0, 0].tolist() == pytest.approx([(2.0 + 0.5) / 5, (2.0 + 0.5) / 5])


def test_batched_tiling_matches_per_image():
    cats = [_cat(8, s) for s in range(3)]
    batch = TileCatalog.from_full(cats, 5)
    for i, c in enumerate(cats):
        single = c.to_tiles(5)
        assert torch.equal(batch.n_sources[i], single.n_sources[0])
        assert torch.allclose(batch.locs[i], single.locs[0])


def test_catalog_validation():
    with pytest.raises(ProbcatValueError):
        FullCatalog({"x": np.zeros(2)}, (5, 5))
    with pytest.raises(ProbcatValueError):
        FullCatalog({"x": np.zeros(2), "y": np.zeros(3)}, (5, 5))
