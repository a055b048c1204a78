"""Bright objects left without a detection (probcat.infer.bright): found by segmentation,
their tile decided by the network, their probability that of their core."""

import numpy as np
import pytest
import torch

from probcat.errors import ProbcatValueError
from probcat.infer.bright import (
    REACH_TILES,
    core_probability,
    decode_forced,
    force_mask,
    unclaimed,
)
from probcat.infer.detect import decode, map_catalog, tile_features, tile_image


def _image(seed=0, size=96):
    """Noise (sigma 1) with a bright extended blob at (40.3, 50.7) (sigma 4 px, flux 3000:
    SNR about 100 over 200+ px), a faint one at (70, 20) (flux 150) and a bright compact
    one at (20, 80) (sigma 0.8 px: a handful of pixels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(float)
    img = rng.standard_normal((size, size))
    for x0, y0, s, flux in ((40.3, 50.7, 4.0, 3000.0), (70.0, 20.0, 3.0, 150.0),
                            (20.0, 80.0, 0.8, 400.0)):  # fmt: skip
        img += flux * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)
    return img.astype(np.float32)


def test_only_a_bright_extended_object_without_a_detection_near_its_centre_is_unclaimed():
    img = _image()
    found = unclaimed(img, [], [])
    assert found.shape == (1, 3)
    assert abs(found[0, 0] - 40.3) < 0.3 and abs(found[0, 1] - 50.7) < 0.3
    assert found[0, 2] >= np.sqrt(100 / np.pi)  # its radius: 100 px or more
    # a detection near its centre claims it; one 20 px away does not
    assert len(unclaimed(img, [41.0], [51.5])) == 0
    assert len(unclaimed(img, [60.0], [50.7])) == 1
    # bands: summed in units of the sum's noise (two planes of independent noise)
    two = unclaimed(np.stack([img, _image(seed=1)]), [], [])
    assert two.shape == (1, 3) and np.hypot(two[0, 0] - 40.3, two[0, 1] - 50.7) < 0.3
    assert len(unclaimed(np.zeros((40, 40)), [], [])) == 0  # blank: nothing
    assert unclaimed(np.zeros((40, 40)), [3.0], [4.0]).shape == (0, 3)
    # a mask: an object whose box (one pixel wider) holds masked pixels is left alone (a
    # piece of a source the mask cuts); a mask elsewhere changes nothing
    strip = np.zeros(img.shape, bool)
    strip[:, 44:48] = True
    cut = np.where(strip, 0.0, img).astype(np.float32)  # masked pixels are 0 for the network
    assert len(unclaimed(cut, [], [], strip)) == 0
    assert len(unclaimed(cut, [], [])) >= 1  # without the mask: its pieces would be taken
    corner = np.zeros(img.shape, bool)
    corner[:3, :3] = True
    assert len(unclaimed(img, [], [], corner)) == 1
    # the nearest of many detections decides (brute force against the tree's answer)
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 96, 500), rng.uniform(0, 96, 500)
    far = np.hypot(x - 40.3, y - 50.7) > 6.0
    assert len(unclaimed(img, x[far], y[far])) == 1
    near = np.append(x[far], 41.5), np.append(y[far], 51.0)
    assert len(unclaimed(img, *near)) == 0


def test_force_mask_marks_the_tile_of_each_centre_and_core_probability_is_exact():
    mask, at = force_mask(
        np.array([[40.3, 50.7, 8.0], [2.4, 2.6, 6.0], [500.0, 1.0, 6.0]]), 5, (20, 20)
    )
    assert mask.shape == (1, 20, 20) and int(mask.sum()) == 2  # the third lies off the grid
    assert mask[0, 10, 8] and mask[0, 0, 0]  # pixel 40.3 -> tile 8 (pixels 37.5-42.5)
    # the centre within its tile, tile units: back to pixels by tile_to_pixel
    from probcat.tiles import tile_to_pixel

    x, y = tile_to_pixel(10, 8, at[0, 10, 8][None], 5)
    assert float(x[0]) == pytest.approx(40.3) and float(y[0]) == pytest.approx(50.7)
    prob = np.zeros((6, 6))
    prob[2, 2], prob[2, 3], prob[5, 5] = 0.3, 0.2, 0.9
    # tile centres at 5 k + 2: within max(0.4 r, 5) px of (12, 12): tiles (2, 2), (2, 3)...
    got = core_probability(prob, 12.0, 12.0, 10.0, 5)
    assert got == pytest.approx(1 - 0.7 * 0.8)
    # radius 60: 24 px reaches tile (5, 5), centred (27, 27), 21.2 px away; 40 (16 px) does not
    assert core_probability(prob, 12.0, 12.0, 60.0, 5) == pytest.approx(1 - 0.7 * 0.8 * 0.1)
    assert core_probability(prob, 12.0, 12.0, 40.0, 5) == pytest.approx(1 - 0.7 * 0.8)
    # read on a box of tiles around the centre: the same as over every tile of the grid
    rng = np.random.default_rng(0)
    for _ in range(300):
        nty, ntx = rng.integers(1, 30, 2)
        grid = rng.uniform(0.0, 1.0, (nty, ntx))
        (x, y), r, t = rng.uniform(-20, 160, 2), rng.uniform(0, 80), int(rng.integers(1, 8))
        cy, cx = (np.arange(nty) + 0.5) * t - 0.5, (np.arange(ntx) + 0.5) * t - 0.5
        near = np.hypot(cx[None, :] - x, cy[:, None] - y) <= max(0.4 * r, t)
        assert core_probability(grid, x, y, r, t) == pytest.approx(1 - np.prod(1 - grid[near]))


def test_a_forced_tile_is_decided(net):
    img = _image()[None]
    feats = tile_features(net, img, 1.0)
    nty, ntx = feats.shape[-2:]
    plain = decode(net, feats, threshold=0.999)
    force = torch.zeros(1, nty, ntx, dtype=torch.bool)
    force[0, 10, 8] = True
    forced = decode(net, feats, threshold=0.999, force=force)
    assert not plain.n[0, 10, 8] and forced.n[0, 10, 8]
    # every other tile is decided as before, or as its neighbour's source lets it
    assert int(forced.n.sum()) >= 1
    assert map_catalog(net, feats, (96, 96), threshold=0.999).image_shape == (96, 96)
    with pytest.raises(ProbcatValueError, match="force"):
        decode(net, feats, force=force[:, :3])
    with pytest.raises(ProbcatValueError, match="force_prob"):
        decode(net, feats, n_samples=2, force=force, force_prob=torch.ones(1, 3, 3))


def test_samples_hold_a_forced_tile_as_often_as_its_probability_says(net):
    """Posterior samples with a forced tile: probability 1, every sample holds its source
    at the proposed position; probability 0, as often as the network's own draws say;
    between, at least that often; the tiles out of the forced one's reach drawn as without
    it, to the bit."""
    with torch.no_grad():  # decisions that sway their neighbours' strongly
        net.detection_head.cond_in.weight.mul_(30.0)
    rng = np.random.default_rng(4)
    img = rng.standard_normal((1, 160, 160)).astype(np.float32)
    img[0, :96, :96] += _image(seed=1)
    feats = tile_features(net, img, 1.0)
    nty, ntx = feats.shape[-2:]
    at = (10, 8)
    force = torch.zeros(1, nty, ntx, dtype=torch.bool)
    force[(0, *at)] = True
    locs = torch.full((1, nty, ntx, 2), 0.3)
    n = 300

    def draw(p=None):
        prob = None if p is None else torch.where(force, torch.tensor(p), torch.tensor(0.0))
        return decode(
            net, feats, n_samples=n, generator=torch.Generator().manual_seed(7),
            force=None if p is None else force, force_locs=locs, force_prob=prob,
        )  # fmt: skip

    plain, never, always, half = draw(), draw(0.0), draw(1.0), draw(0.9)
    share = {k: float(d.n[:, at[0], at[1]].float().mean())
             for k, d in (("own", plain), ("0", never), ("0.9", half))}  # fmt: skip
    assert share["own"] < 0.7  # the network alone holds it less often (not vacuous)
    assert abs(share["0"] - share["own"]) < 0.1
    assert share["0.9"] >= 0.9 - 3 * np.sqrt(0.09 / n)
    assert bool(always.n[:, at[0], at[1]].all())
    torch.testing.assert_close(always.locs[:, at[0], at[1]], torch.full((n, 2), 0.3))
    yy, xx = torch.meshgrid(torch.arange(nty), torch.arange(ntx), indexing="ij")
    far = torch.maximum((yy - at[0]).abs(), (xx - at[1]).abs()) > REACH_TILES
    for d in (never, always, half):
        assert torch.equal(d.n[:, far], plain.n[:, far])
    assert not torch.equal(always.n, plain.n)


def _decisions_equal(a, b) -> None:
    """Two decodings: the same decisions, their numbers equal to float rounding."""
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        pairs = (
            [(getattr(x, f), getattr(y, f)) for f in x.__dataclass_fields__]
            if hasattr(x, "count_logit")
            else [(x, y)]
        )
        for u, v in pairs:
            if u is None:
                assert v is None
            elif u.dtype == torch.bool:
                assert torch.equal(u, v), name
            else:
                assert torch.equal(u.isnan(), v.isnan()), name
                torch.testing.assert_close(u.nan_to_num(), v.nan_to_num(), atol=1e-4, rtol=1e-4)


def test_decoding_around_the_forced_tiles_equals_decoding_the_whole_image_again():
    """decode_forced (windows around the forced tiles, spliced into the decoding without
    them) against the brute force: the whole image decoded again with them forced. A net
    with every conditioning the shipped weights have (proximity, refiner, stamps), an image
    larger than a window, forced tiles at corners, edges, odd tiles, in a cluster and far
    apart, in the second image of a batch."""
    from probcat.nets.detection import DetectionNet

    torch.manual_seed(0)
    net = DetectionNet(
        n_bands=1, stem_channels=4, channels=8, n_blocks=1, stem="patchify",
        classifier="stamp", proximity=True, loc_refine=True,
    ).eval()  # fmt: skip
    with torch.no_grad():  # decisions that sway their neighbours' strongly
        net.detection_head.cond_in.weight.mul_(30.0)
    rng = np.random.default_rng(4)
    imgs = np.stack([_image(seed=s, size=96) for s in (1, 2)])  # two images of one batch
    big = rng.standard_normal((2, 1, 213, 187)).astype(np.float32)  # 43 x 38 tiles
    big[:, :, :96, :96] += imgs[:, None] * 2
    feats = torch.cat([tile_features(net, b, 1.0) for b in big])
    pixels = torch.cat([tile_image(net, b, 1.0) for b in big])
    nty, ntx = feats.shape[-2:]
    base = decode(net, feats, image=pixels)
    force = torch.zeros(1, nty, ntx, dtype=torch.bool)
    for y, x in ((0, 0), (nty - 1, ntx - 1), (1, ntx - 2), (21, 19), (23, 22), (20, 30), (40, 3)):
        force[0, y, x] = True
    locs = torch.rand(1, nty, ntx, 2, generator=torch.Generator().manual_seed(1))
    for k in (0, 1):
        brute = decode(net, feats[k : k + 1], image=pixels[k : k + 1], force=force,
                       force_locs=locs)  # fmt: skip
        got = decode_forced(net, feats, pixels, base, k, force, locs, 0.5)
        _decisions_equal(got, brute)
        # and the forced decisions changed tiles beyond the forced ones (not a vacuous test),
        # all within reach of them
        changed = (brute.n[0] != base.n[k]) & ~force[0]
        assert int(changed.sum()) >= 3
        ys, xs = torch.nonzero(changed, as_tuple=True)
        fy, fx = torch.nonzero(force[0], as_tuple=True)
        reach = torch.maximum((ys[:, None] - fy).abs(), (xs[:, None] - fx).abs()).min(1).values
        assert int(reach.max()) <= REACH_TILES
    # the decoding without them is left as it was
    _decisions_equal(decode(net, feats, image=pixels), base)


def test_detect_rescues_the_bright_object_by_default_and_says_so(weights):
    import probcat

    det = probcat.load(str(weights), threads=1)
    img = _image()
    plain = det.detect(img[None], noise_sigma=[1.0], threshold=0.999, rescue_bright=False)
    plain = plain.catalog
    res = det.detect(img[None], noise_sigma=[1.0], threshold=0.999)  # the default: rescued
    cat = res.catalog
    rescued = np.asarray(cat["bright_rescue"], bool)
    assert "bright_rescue" not in plain.colnames and rescued.sum() == 1
    assert len(cat) == len(plain) + 1
    i = int(np.flatnonzero(rescued)[0])
    assert abs(cat["x"][i] - 40.3) < 5 and abs(cat["y"][i] - 50.7) < 5  # its tile, refined
    # its probability: its core's (the tiny weights carry no calibration map)
    ((ox, oy, r),) = unclaimed(img, plain["x"], plain["y"])
    core = core_probability(res.probability_map(), ox, oy, r, 5)
    assert "prob_raw" not in cat.colnames
    assert cat["prob"][i] == pytest.approx(max(core, res.probability_map()[10, 8]))
    assert core > res.probability_map()[10, 8]  # more than its tile's alone
    with pytest.raises(ProbcatValueError, match="rescue_bright"):
        det.detect(img[None], noise_sigma=[1.0], rescue_bright="yes")


def test_posterior_samples_hold_the_rescued_object_as_often_as_its_prob(weights):
    import probcat

    det = probcat.load(str(weights), threads=1)
    img = _image()[None]
    n = 200

    def run(rescue):
        return det.detect(img, noise_sigma=[1.0], threshold=0.999, samples=n, seed=3,
                          rescue_bright=rescue)  # fmt: skip

    res, plain = run(True), run(False)
    cat = res.catalog
    i = int(np.flatnonzero(np.asarray(cat["bright_rescue"]))[0])
    tile = (int(cat["tile_y"][i]), int(cat["tile_x"][i]))

    def share(draws):
        return np.mean([tile in set(zip(np.asarray(d["tile_y"]), np.asarray(d["tile_x"])))
                        for d in draws])  # fmt: skip

    p = float(cat["prob"][i])  # the tiny weights carry no calibration: the row's own
    assert share(res.samples) >= p - 3 * np.sqrt(p * (1 - p) / n)
    assert share(res.samples) > share(plain.samples) + 0.1
    # where a sample holds it, at the proposed centre (these weights refine no position)
    ((ox, oy, _),) = unclaimed(img[0], plain.catalog["x"], plain.catalog["y"])
    at = [(d["x"][j], d["y"][j]) for d in res.samples
          for j in np.flatnonzero((np.asarray(d["tile_y"]) == tile[0])
                                  & (np.asarray(d["tile_x"]) == tile[1]))]  # fmt: skip
    np.testing.assert_allclose(np.asarray(at), [(ox, oy)] * len(at), atol=1e-3)
    # Detector.sample (no MAP catalog asked for) runs the rescue too, at its threshold of
    # 0.5: the samples of detect(samples=) at that threshold, to the bit
    got = det.sample(img, 50, seed=3, noise_sigma=[1.0])
    ref = det.detect(img, noise_sigma=[1.0], samples=50, seed=3).samples
    assert all(np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
               for a, b in zip(got, ref))  # fmt: skip
    bare = det.sample(img, 50, seed=3, noise_sigma=[1.0], rescue_bright=False)
    assert share(got) > share(bare) + 0.1


def test_the_rescue_column_survives_the_reading_at_the_images_seeing(weights, monkeypatch):
    """An image whose measured seeing differs is decoded again for its classes at that
    seeing: the rescue's column and probabilities stay (as when that seeing is given), with
    or without a rescued object."""
    import probcat
    from probcat.api import Detector

    det = probcat.load(str(weights), threads=1)
    monkeypatch.setattr(Detector, "_seeing", lambda self, x, cat: ({}, 1.3))  # measured 1.3
    noise = np.random.default_rng(3).standard_normal((1, 64, 64)).astype(np.float32)
    for image, n in ((_image()[None], 1), (noise, 0)):
        kw = dict(noise_sigma=[1.0], threshold=0.999, rescue_bright=True)
        measured = det.detect(image, seeing="auto", **kw).catalog
        given = det.detect(image, seeing=1.3, **kw).catalog
        assert int(np.sum(measured["bright_rescue"])) == n
        np.testing.assert_array_equal(measured["bright_rescue"], given["bright_rescue"])
        np.testing.assert_allclose(measured["prob"], given["prob"])


def test_the_command_line_rescues_and_a_run_records_it(tmp_path, weights, capsys):
    """probcat detect writes the column (--no-rescue-bright: none); probcat run keeps the
    option in its run_options.json (a rerun without it is refused while its catalogs are
    there)."""
    from probcat.catalog import FullCatalog, make_wcs
    from probcat.cli import main
    from probcat.io import write_image
    from probcat.survey import Survey

    survey = Survey.lsst(bands="i")
    img = _image()[None] * survey.noise_sigma[0]
    path = write_image(tmp_path / "field.fits", img, survey, make_wcs((96, 96), 0.2, 56.0, -30.0))
    common = [
        "--weights",
        str(weights),
        "--threshold",
        "0.999",
        "--noise",
        str(survey.noise_sigma[0]),
    ]
    assert main(["detect", str(path), "-o", str(tmp_path / "c.fits"), *common]) == 0
    cat = FullCatalog.read(tmp_path / "c.fits")
    assert int(np.sum(cat["bright_rescue"])) == 1
    off = ["detect", str(path), "--no-rescue-bright", "-o", str(tmp_path / "n.fits"), *common]
    assert main(off) == 0
    assert "bright_rescue" not in FullCatalog.read(tmp_path / "n.fits").colnames
    run = ["run", str(path), "-o", str(tmp_path / "run"), "--workers", "0", "-q", *common]
    assert main(run) == 0
    assert FullCatalog.read(tmp_path / "run" / "field.parquet")["bright_rescue"].sum() == 1
    capsys.readouterr()
    assert main([*run, "--no-rescue-bright"]) == 2  # the same folder without it: refused
    assert "rescue_bright True -> False" in capsys.readouterr().err
    # a folder written before the option existed was made without the rescue: the default
    # is refused there, with the way to continue it, which then works
    import json

    options = tmp_path / "run" / "run_options.json"
    old = json.loads(options.read_text())
    del old["rescue_bright"]
    options.write_text(json.dumps(old))
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "rescue_bright False -> True" in err and "--no-rescue-bright" in err
    assert main([*run, "--no-rescue-bright"]) == 0


def test_a_segmentation_that_fails_is_said_and_rescues_nothing(monkeypatch):
    import sep

    def full(*a, **k):
        raise Exception("internal pixel buffer full")

    monkeypatch.setattr(sep, "extract", full)
    with pytest.warns(UserWarning, match="could not segment the image"):
        assert unclaimed(_image(), [], []).shape == (0, 3)


def test_a_large_image_is_segmented_core_by_core_as_it_is_whole(monkeypatch):
    """Cores of 64 px with 16 px around them (the 4096 and 256 of a real image, scaled
    down) on a 200x150 image of separate blobs, several across the cores' edges: the same
    objects as the whole image gives, each once, at the same positions and fluxes."""
    import probcat.infer.bright as B

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:150, :200].astype(float)
    img = rng.standard_normal((150, 200))
    centres = [(63.4, 20.0), (64.4, 70.0), (128.0, 127.5), (10.0, 140.0), (190.0, 64.0),
               (100.0, 100.0), (150.0, 30.0), (40.0, 63.4)]  # fmt: skip
    for x0, y0 in centres:
        img += 2000 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8) / (8 * np.pi)
    img = img.astype(np.float32)
    whole = B.segments(img)  # 200 px: under 4096 + 2 x 256, whole
    monkeypatch.setattr(B, "SEGMENT_CHUNK", 64)
    monkeypatch.setattr(B, "SEGMENT_MARGIN", 16)
    cores = B.segments(img)  # over 64 + 2 x 16: 4 x 3 cores
    assert len(whole["x"]) == len(cores["x"]) >= len(centres)
    a, b = np.lexsort((whole["y"], whole["x"])), np.lexsort((cores["y"], cores["x"]))
    for k in ("npix", "flux", "xmin", "xmax", "ymin", "ymax"):
        np.testing.assert_array_equal(whole[k][a], cores[k][b], err_msg=k)
    for k in ("x", "y"):  # the window's offset added: to rounding
        np.testing.assert_allclose(whole[k][a], cores[k][b], rtol=0, atol=1e-9)
    bright = whole["flux"] > 500
    for x0, y0 in centres:  # every blob found once
        near = np.hypot(whole["x"][bright] - x0, whole["y"][bright] - y0) < 1.0
        assert near.sum() == 1, (x0, y0)
