import numpy as np
import pytest
import torch
from helpers import random_catalog

from probcat.catalog import FullCatalog
from probcat.tiles import (
    TileCatalog,
    cut_stamps,
    grid_shape,
    pad_to_tiles,
    pixel_to_tile,
    tile_to_pixel,
)


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
    cats = [random_catalog(8, s) for s in range(3)]
    batch = TileCatalog.from_full(cats, 5)
    for i, c in enumerate(cats):
        single = c.to_tiles(5)
        assert torch.equal(batch.n_sources[i], single.n_sources[0])
        assert torch.allclose(batch.locs[i], single.locs[0])


def test_pixel_tile_conversions_invert_each_other_and_follow_the_convention():
    # tile (ty, tx) covers x in [tx t - 0.5, (tx + 1) t - 0.5)
    x = np.array([-0.5, 4.49, 4.5, 12.0])
    y = np.array([0.0, 9.5, -0.5, 14.49])
    tx, ty, lx, ly = pixel_to_tile(x, y, 5)
    assert tx.tolist() == [0, 0, 1, 2] and ty.tolist() == [0, 2, 0, 2]
    assert lx[0] == 0.0 and lx[2] == 0.0 and 0.99 < lx[1] < 1.0
    bx, by = tile_to_pixel(ty, tx, np.stack([lx, ly], 1), 5)
    assert np.allclose(bx, x) and np.allclose(by, y)
    assert grid_shape((11, 10), 5) == (3, 2)


def test_pad_to_tiles_places_the_image_inside_the_halo():
    x = np.arange(2 * 7 * 8, dtype=np.float32).reshape(2, 7, 8)
    p = pad_to_tiles(x, 5, halo=1)
    assert p.shape == (2, 20, 20)
    assert np.array_equal(p[:, 5:12, 5:13], x) and p.sum() == x.sum()


def test_cut_stamps_matches_brute_force_slicing():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 20, 25, generator=gen)  # 3 bands
    b = torch.tensor([0, 1, 1])
    ty, tx = torch.tensor([0, 2, 3]), torch.tensor([4, 1, 0])
    locs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.02, 0.98]])
    st, off = cut_stamps(image, b, ty, tx, locs, 5, 7)
    padded = torch.nn.functional.pad(image, (3, 3, 3, 3))
    for i in range(3):
        x = (tx[i] + locs[i, 0]) * 5 - 0.5
        y = (ty[i] + locs[i, 1]) * 5 - 0.5
        cx, cy = int(torch.round(x)), int(torch.round(y))
        want = padded[b[i], :, cy : cy + 7, cx : cx + 7]
        assert torch.equal(st[i], want)
        assert off[i].tolist() == pytest.approx([float(x) - cx, float(y) - cy], abs=1e-6)
