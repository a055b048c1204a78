"""Pixels without data: NaN, inf and masks (probcat.masking), through reading, the sky and
noise estimates, detection, deblending, photo-z, SEP and the command line."""

import warnings

import numpy as np
import pytest

from probcat.api import read_input
from probcat.errors import ProbcatValueError
from probcat.masking import aperture_fraction, fill_masked, masked_pixels, read_mask
from probcat.survey import Survey


def _psf_star(img, x, y, flux, fwhm_px=4.0):
    """Add a Gaussian star of ``flux`` at integer pixel ``(x, y)`` to ``img`` (H, W)."""
    s = fwhm_px / 2.3548
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    img += flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)


def test_masked_pixels_joins_nan_inf_and_the_mask_and_checks_it():
    img = np.zeros((2, 8, 10), np.float32)
    img[0, 1, 2] = np.nan
    img[1, 3, 4] = np.inf
    m = np.zeros((8, 10), bool)
    m[5, 6] = True
    with pytest.warns(UserWarning, match="^2 pixel"):
        bad = masked_pixels(img, m)
    assert bad.shape == img.shape
    assert set(zip(*np.nonzero(bad))) == {(0, 1, 2), (1, 3, 4), (0, 5, 6), (1, 5, 6)}
    per_band = np.zeros((2, 8, 10), np.uint8)
    per_band[1, 0, 0] = 7  # nonzero masks; only its own band
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the NaN inside the mask is not reported
        inside = img.copy()
        inside[1, 3, 4] = 0.0
        got = masked_pixels(inside, np.stack([bad[0], per_band[1] > 0]))
    assert got[1, 0, 0] and not got[0, 0, 0] and got[0, 1, 2]
    assert masked_pixels(np.zeros((1, 8, 10))) is None
    with pytest.raises(ProbcatValueError, match=r"mask of shape \(8, 9\) does not match"):
        masked_pixels(img, np.zeros((8, 9)))
    with pytest.raises(ProbcatValueError, match="mask of shape"):
        masked_pixels(img, np.zeros((3, 8, 10)))
    with pytest.raises(ProbcatValueError, match="^every pixel of band 1 is masked"):
        masked_pixels(img, np.stack([np.zeros((8, 10)), np.ones((8, 10))]))
    with pytest.raises(ProbcatValueError, match="boolean or numeric"):
        masked_pixels(img, np.full((8, 10), "x"))


def test_fill_masked_is_sky_like_and_leaves_the_data_alone():
    rng = np.random.default_rng(3)
    img = (1000.0 + 20.0 * rng.standard_normal((1, 200, 200))).astype(np.float32)
    bad = np.zeros(img.shape, bool)
    bad[0, 50:150, 20:120] = True
    img[bad] = np.nan
    out = fill_masked(img, bad)
    np.testing.assert_array_equal(out[~bad], img[~bad].astype(np.float64))
    filled = out[bad]
    assert abs(filled.mean() - 1000.0) < 0.5  # 10^4 draws: the level to 0.2 sigma
    assert abs(filled.std() - 20.0) < 0.5
    np.testing.assert_array_equal(fill_masked(img, bad), out)  # a fixed seed


def test_aperture_fraction_matches_a_brute_force_count():
    rng = np.random.default_rng(1)
    masked = rng.random((30, 40)) < 0.3
    x = np.concatenate([rng.uniform(-2, 41, 40), [0.0, 39.0, 12.49, 12.51]])
    y = np.concatenate([rng.uniform(-2, 31, 40), [0.0, 29.0, 7.5, 7.5]])
    got = aperture_fraction(masked, x, y)
    for k in range(len(x)):
        cx, cy = int(np.round(x[k])), int(np.round(y[k]))
        hit = n = 0
        for yy in range(30):
            for xx in range(40):
                near = abs(xx - cx) <= 6 and abs(yy - cy) <= 6  # the nearest pixel's box
                if near and (xx - x[k]) ** 2 + (yy - y[k]) ** 2 <= 25.0:
                    n += 1
                    hit += masked[yy, xx]
        assert got[k] == pytest.approx(hit / n if n else 1.0), k
    np.testing.assert_array_equal(aperture_fraction(None, x, y), 0.0)


def test_sky_and_noise_are_read_from_the_data_pixels():
    """A third of the image NaN: the sky subtracted and the measured noise are those of the
    same image without the hole; the hole is 0 in noise units."""
    rng = np.random.default_rng(7)
    survey = Survey.lsst(bands="i")
    sigma = 60.0
    sky = 3000.0 + 0.5 * np.arange(240)[None, :]  # a sloped sky
    img = (sky + sigma * rng.standard_normal((240, 240)))[None].astype(np.float32)
    holed = img.copy()
    holed[0, :, 160:] = np.nan
    x0, _, s0, info0, m0 = read_input(img, survey, "measured")
    with pytest.warns(UserWarning, match="^19200 pixel"):
        x1, _, s1, info1, m1 = read_input(holed, survey, "measured")
    assert m0 is None and "masked_pixels" not in info0
    assert m1.shape == (240, 240) and m1.sum() == info1["masked_pixels"] == 240 * 80
    assert s1[0] == pytest.approx(s0[0], rel=0.03) and s0[0] == pytest.approx(sigma, rel=0.03)
    assert np.all(x1[0][m1] == 0.0)
    # the data pixels come out as without the hole: the sky to a small fraction of the noise
    assert np.abs(x1[0][~m1] * s1[0] - x0[0][~m1] * s0[0]).mean() < 0.1 * sigma
    assert abs(float(np.mean(x1[0][~m1]))) < 0.05


def test_a_masked_source_is_not_detected_and_a_cut_one_says_so():
    import probcat

    rng = np.random.default_rng(2)
    det = probcat.load("detection_lsst_i", threads=1)
    sigma = float(det.survey.noise_sigma[0])
    img = sigma * rng.standard_normal((96, 96))
    for x, y in ((24, 24), (70, 70), (24, 70)):
        _psf_star(img, x, y, 300 * sigma)
    img = img[None].astype(np.float32)
    plain = det.catalog(img, background="none")
    mask = np.zeros((96, 96), bool)
    mask[60:80, 60:80] = True  # covers the star at (70, 70)
    mask[:, 26:30] = True  # a bad strip 2 px from the star at x = 24
    got = det.catalog(img, background="none", mask=mask)
    near = lambda c, x, y: np.hypot(c["x"] - x, c["y"] - y).min(initial=99) < 1.5  # noqa: E731
    assert near(plain, 70, 70) and near(plain, 24, 24) and near(plain, 24, 70)
    assert not near(got, 70, 70)  # under the mask: no data, no detection
    assert near(got, 24, 24) and near(got, 24, 70)
    assert np.all(plain["mask_fraction"] == 0.0)
    k = np.argmin(np.hypot(got["x"] - 24, got["y"] - 24))
    want = aperture_fraction(mask, got["x"][k : k + 1], got["y"][k : k + 1])[0]
    assert 0.1 < got["mask_fraction"][k] == pytest.approx(want)
    assert got.meta["input"]["masked_pixels"] == int(mask.sum())
    nan = img.copy()
    nan[0][mask] = np.nan  # NaN reads as the same mask
    with pytest.warns(UserWarning, match="read as masked"):
        again = det.catalog(nan, background="none")
    np.testing.assert_array_equal(again["x"], got["x"])
    np.testing.assert_array_equal(again["mask_fraction"], got["mask_fraction"])
    draws = det.sample(img, 2, background="none", mask=mask)
    assert all("mask_fraction" in d.colnames for d in draws)
    with pytest.raises(ProbcatValueError, match="one per image"):
        det.catalog([img, img], mask=mask)
    two = det.catalog([img, img], background="none", mask=[mask, None])
    assert two[0]["mask_fraction"].max() > 0 and two[1]["mask_fraction"].max() == 0
    # a numpy masked array carries its own mask: the same catalog as mask=
    ma = np.ma.array(img[0], mask=mask)
    for masked in (det.catalog(ma, background="none"), det.catalog(ma[None], background="none")):
        np.testing.assert_array_equal(masked["x"], got["x"])
        np.testing.assert_array_equal(masked["mask_fraction"], got["mask_fraction"])
    half = np.zeros_like(mask)
    half[:, 26:30] = True  # its mask and a mask= given beside it are both read
    both = det.catalog(np.ma.array(img, mask=half[None]), background="none", mask=mask & ~half)
    np.testing.assert_array_equal(both["x"], got["x"])
    unmasked = det.catalog(np.ma.array(img), background="none")  # nomask: as plain
    np.testing.assert_array_equal(unmasked["x"], plain["x"])


def test_sep_reads_nan_as_masked():
    from probcat.baselines.sep import sep_detect

    rng = np.random.default_rng(4)
    img = 10.0 * rng.standard_normal((80, 80))
    _psf_star(img, 20, 20, 5000.0)
    _psf_star(img, 60, 60, 5000.0)
    img[50:70, 50:70] = np.nan
    cat = sep_detect(img, 10.0)
    assert len(cat) == 1 and abs(cat["x"][0] - 20) < 0.5 and abs(cat["y"][0] - 20) < 0.5


def test_cli_mask_file_and_its_errors(tmp_path, capsys, weights):
    from astropy.io import fits
    from astropy.table import Table

    from probcat.cli import main

    rng = np.random.default_rng(0)
    data = (400.0 * rng.standard_normal((64, 64))).astype(np.float32)
    img = tmp_path / "x.fits"
    fits.PrimaryHDU(data, header=fits.Header({"NOISE": 400.0})).writeto(img)
    mfile = tmp_path / "m.fits"
    m = np.zeros((64, 64), np.int16)
    m[:10] = 4  # a bit plane: any set bit masks
    fits.PrimaryHDU(m).writeto(mfile)
    np.testing.assert_array_equal(read_mask(mfile), m != 0)
    out = tmp_path / "c.fits"
    args = ["detect", str(img), "--weights", str(weights), "--threshold", "0.0"]
    assert main([*args, "--mask", str(mfile), "-o", str(out)]) == 0
    assert "[640 pixels masked, no data]" in capsys.readouterr().out
    t = Table.read(out)
    frac = aperture_fraction(m != 0, t["x"], t["y"])
    assert len(t) > 0 and t["mask_fraction"].max() > 0
    np.testing.assert_allclose(t["mask_fraction"], frac)
    small = tmp_path / "small.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.uint8)).writeto(small)
    for mask_arg, message in ((small, "does not match"), (tmp_path / "no.fits", "no such file")):
        rc = main([*args, "--mask", str(mask_arg), "-o", str(tmp_path / "d.fits")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and "\n" not in err, err
        assert not (tmp_path / "d.fits").exists()
    assert main([*args, "--mask", str(mfile), "-o", str(mfile)]) == 2  # never overwritten
    assert "would overwrite the input" in capsys.readouterr().err
    np.testing.assert_array_equal(read_mask(mfile), m != 0)


def test_photoz_reads_the_mask(tmp_path, weights, photoz_weights):
    from test_photoz import _ugrizy_image

    import probcat
    from probcat.io import read_image

    data = read_image(_ugrizy_image(tmp_path / "field.fits"))
    h, w = data.image.shape[-2:]
    mask = np.zeros((h, w), bool)
    mask[: h // 3] = True
    res = probcat.photoz(data, estimator=str(photoz_weights), detector=str(weights),
                         threads=1, threshold=0.0, mask=mask)  # fmt: skip
    cat = res.catalog
    assert len(cat) > 0 and cat.meta["input"]["masked_pixels"] == int(mask.sum())
    np.testing.assert_allclose(cat["mask_fraction"], aperture_fraction(mask, cat["x"], cat["y"]))
    assert cat["mask_fraction"].max() > 0


def test_deblended_measurements_read_only_the_data_pixels():
    from test_infer_deblend import FixedGalaxy, S, _draw, _galaxy

    from probcat.api import Deblender
    from probcat.catalog import FullCatalog
    from probcat.infer.deblend import paste_models, reconstruct

    survey = Survey.lsst(bands="i")
    sigma = survey.noise_sigma.astype(np.float32)
    model = FixedGalaxy(_draw(_galaxy(2e5), S) / sigma[0])
    image = np.zeros((1, 40, 40), np.float32)
    models = reconstruct(model, image, sigma, [20.0], [20.0], [True], amplitudes=False)
    image[0] += paste_models(models, (40, 40))[0]
    cat = FullCatalog(
        {"x": np.array([20.0]), "y": np.array([20.0]), "galaxy": np.ones(1, bool)}, (40, 40), ("i",)
    )
    db = Deblender(model, survey, device="cpu")
    whole = db.measure(image, cat, background="none").catalog
    mask = np.zeros((40, 40), bool)
    mask[:, 21:] = True  # the right half of the galaxy has no data
    cut = db.measure(image, cat, background="none", mask=mask).catalog
    assert whole["mask_fraction"][0] == 0.0
    assert cut["mask_fraction"][0] == pytest.approx(aperture_fraction(mask, [20.0], [20.0])[0])
    # the masked pixels hold no light: about half the aperture flux is left
    assert 0.3 < cut["flux_ap"][0, 0] / whole["flux_ap"][0, 0] < 0.7


# afw's default mask planes (bit numbers) as an LSST calexp's MASK header lists them
AFW_PLANES = dict(BAD=0, SAT=1, INTRP=2, CR=3, EDGE=4, DETECTED=5, DETECTED_NEGATIVE=6,
                  SUSPECT=7, NO_DATA=8)  # fmt: skip


def _afw_file(path, sigma=20.0, planes=AFW_PLANES, variance=True, bunit=None):
    """An LSST (afw) image file: an empty primary HDU, then IMAGE, MASK (bit planes named by
    MP_ keywords, long ones as HIERARCH cards as afw writes them) and VARIANCE, holding
    two stars; returns the path and the pixels that mean no data by default (NO_DATA,
    zero variance) and those of SAT and CR, EDGE and DETECTED being set elsewhere."""
    from astropy.io import fits

    rng = np.random.default_rng(3)
    img = sigma * rng.standard_normal((64, 64))
    _psf_star(img, 20, 20, 300 * sigma)
    _psf_star(img, 45, 40, 300 * sigma)
    bits = np.zeros((64, 64), np.int32)
    want = np.zeros((64, 64), bool)
    bits[:, :6] |= 1 << 8  # NO_DATA, NaN in the image as in a coadd
    img[:, :6] = np.nan
    bits[19:22, 19:22] |= 1 << 1 | 1 << 2  # a saturated core, interpolated
    bits[50, 10:14] |= 1 << 3 | 1 << 2  # a cosmic ray, interpolated
    want[:, :6] = True
    sat_cr = np.zeros((64, 64), bool)
    sat_cr[19:22, 19:22] = sat_cr[50, 10:14] = True
    bits[:3] |= 1 << 4  # EDGE and DETECTED: data, not masked
    bits[36:45, 41:50] |= 1 << 5
    var = np.full((64, 64), sigma**2 * 1.21, np.float32)  # the noise from VARIANCE: 1.1 sigma
    var[30, 55] = 0.0  # no weight: no data
    want[30, 55] = True
    head = fits.Header()
    for name, bit in planes.items():
        head["HIERARCH MP_" + name] = bit
    image = fits.ImageHDU(img.astype(np.float32), name="IMAGE")
    if bunit is not None:
        image.header["BUNIT"] = bunit
    hdus = [fits.PrimaryHDU(), image,
            fits.ImageHDU(bits, header=head, name="MASK")]  # fmt: skip
    if variance:
        hdus.append(fits.ImageHDU(var, name="VARIANCE"))
    fits.HDUList(hdus).writeto(path)
    return path, want, sat_cr


def test_lsst_files_of_one_band_each_stack_with_their_masks_and_variances(tmp_path):
    """read_bands of one LSST (afw) file per band: each band keeps its own no-data mask,
    VARIANCE plane, noise, unit and zeropoint, its band read from the primary header's
    FILTER; a band without a VARIANCE plane gets its noise squared everywhere."""
    from astropy.io import fits

    from probcat.io import read_bands, read_image

    paths = []
    for band, sigma, variance in (("g", 20.0, True), ("r", 30.0, True), ("i", 25.0, False)):
        path = _afw_file(tmp_path / f"coadd_{band}.fits", sigma, variance=variance, bunit="nJy")[0]
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["FILTER"] = f"{band}_sim_1.4"  # as a DC2 coadd names it
            if not variance:
                hdul[1].header["NOISE"] = sigma
        paths.append(path)
    stack = read_bands(paths)
    assert stack.bands == ("g", "r", "i") and stack.unit == "nJy"
    for k, path in enumerate(paths):
        one = read_image(path)
        np.testing.assert_array_equal(stack.image[k], one.image[0])
        np.testing.assert_array_equal(stack.mask[k], one.mask[0])
        assert stack.noise_sigma[k] == pytest.approx(one.noise_sigma[0])
    np.testing.assert_array_equal(stack.variance[0], read_image(paths[0]).variance[0])
    np.testing.assert_array_equal(stack.variance[2], np.float32(25.0**2))  # its NOISE
    assert stack.noise_from == "VARIANCE" and stack.noise_sigma[1] == pytest.approx(33.0)
    np.testing.assert_allclose(stack.zeropoint, 31.4)  # nJy: AB 31.4 for a flux of 1


def test_files_of_one_band_each_take_one_weight_map_over_their_own_planes(tmp_path):
    """read_bands with a weight map, one plane per band (or one for all): its variance
    replaces the files' VARIANCE planes, and its pixels without weight join each band's own
    no-data mask."""
    from astropy.io import fits

    from probcat.io import read_bands

    paths = []
    for band in "gr":
        paths.append(_afw_file(tmp_path / f"coadd_{band}.fits")[0])
        with fits.open(paths[-1], mode="update") as hdul:
            hdul[0].header["FILTER"] = band
    own = read_bands(paths)
    w = np.stack([np.full((64, 64), 1 / 400.0), np.full((64, 64), 1 / 900.0)]).astype(np.float32)
    w[1, 60:, 60:] = 0.0  # no data in r only
    w[0, 10, 30] = np.nan
    wpath = tmp_path / "weight.fits"
    fits.PrimaryHDU(w).writeto(wpath)
    got = read_bands(paths, weight=wpath)
    none = ~(np.isfinite(w) & (w > 0))
    np.testing.assert_array_equal(got.mask, own.mask | none)
    assert got.mask[1, 62, 62] and not got.mask[0, 62, 62] and got.mask[0, 10, 30]
    np.testing.assert_array_equal(got.variance, np.where(none, np.inf, 1 / np.where(none, 1, w)))
    np.testing.assert_array_equal(got.image, own.image)
    one = tmp_path / "one.fits"  # one plane: the same weight for every band
    fits.PrimaryHDU(w[0]).writeto(one)
    both = read_bands(paths, weight=one)
    np.testing.assert_array_equal(both.variance[1], both.variance[0])
    with pytest.raises(ProbcatValueError, match="one plane per band: 2"):
        fits.PrimaryHDU(np.stack([w[0]] * 3)).writeto(tmp_path / "three.fits")
        read_bands(paths, weight=tmp_path / "three.fits")


def test_an_lsst_image_file_gives_its_no_data_planes_and_its_noise(tmp_path):
    import probcat
    from probcat.io import read_image

    path, want, sat_cr = _afw_file(tmp_path / "calexp.fits")
    data = read_image(path)
    np.testing.assert_array_equal(data.mask[0], want)
    assert data.noise_from == "VARIANCE" and data.noise_sigma[0] == pytest.approx(22.0)
    det = probcat.load("detection_lsst_i", threads=1)
    got = det.catalog(data, background="none")
    # the same as the image given with that mask and noise by hand
    plain = np.nan_to_num(data.image)
    by_hand = det.catalog(plain, background="none", mask=want, noise_sigma=22.0)
    assert len(got) >= 2
    for c in ("x", "y", "prob", "mask_fraction"):
        np.testing.assert_array_equal(got[c], by_hand[c])
    np.testing.assert_allclose(got["mask_fraction"], aperture_fraction(want, got["x"], got["y"]))
    info = got.meta["input"]
    assert info["masked_pixels"] == int(want.sum()) and info["noise_source"] == "VARIANCE"
    # planes chosen by name; none; one the file lacks; a MASK without plane names
    more = read_image(path, mask_planes=("NO_DATA", "BAD", "SAT", "CR")).mask[0]
    np.testing.assert_array_equal(more, want | sat_cr)
    sat_only = read_image(path, mask_planes=("SAT",)).mask[0]
    edge = np.zeros_like(want)
    edge[19:22, 19:22] = edge[30, 55] = True
    np.testing.assert_array_equal(sat_only, edge)
    none = read_image(path, mask_planes=()).mask[0]
    np.testing.assert_array_equal(none, np.isin(np.arange(64 * 64), [30 * 64 + 55]).reshape(64, 64))
    with pytest.raises(ProbcatValueError, match="SUSPECTED not in the MASK header"):
        read_image(path, mask_planes=("SAT", "SUSPECTED"))
    bare, _, _ = _afw_file(tmp_path / "bare.fits", planes={}, variance=False)
    with pytest.warns(UserWarning, match="names no mask planes"):
        data = read_image(bare)
    assert data.mask is None and data.noise_from == "NOISE" and np.isnan(data.noise_sigma[0])
    # read as a --mask file: its planes, not its IMAGE pixels
    bits = want.copy()
    bits[30, 55] = False  # the variance is not a mask plane
    np.testing.assert_array_equal(read_mask(path), bits)


def test_cli_reads_an_lsst_image_file(tmp_path, capsys):
    from astropy.table import Table

    from probcat.cli import main

    path, want, sat_cr = _afw_file(tmp_path / "calexp.fits")
    out = tmp_path / "c.fits"
    args = ["detect", str(path), "--background", "none", "-q"]
    assert main([*args, "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"[{int(want.sum())} pixels masked, no data]" in said, said
    assert "[noise sigma from the VARIANCE plane: 22]" in said, said
    t = Table.read(out)
    np.testing.assert_allclose(t["mask_fraction"], aperture_fraction(want, t["x"], t["y"]))
    assert main([*args, "--mask-planes", "no_data,bad,sat,cr", "-o", str(tmp_path / "s.fits")]) == 0
    assert f"[{int((want | sat_cr).sum())} pixels masked" in capsys.readouterr().out
    rc = main([*args, "--mask-planes", "SAT,NOPE", "-o", str(tmp_path / "d.fits")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "NOPE not in the MASK header" in err and "\n" not in err, err
    assert not (tmp_path / "d.fits").exists()
    assert main([*args, "--mask-planes", "none", "-o", str(tmp_path / "e.fits")]) == 0
    said = capsys.readouterr()  # no planes: the NaN columns and the zero variance still
    assert "[385 pixels masked, no data]" in said.out and "384 pixel(s) are NaN" in said.err


def test_mask_planes_that_nothing_holds_are_warned_of(tmp_path, capsys):
    from astropy.io import fits

    from probcat.cli import main
    from probcat.io import check_planes_found

    path, want, _ = _afw_file(tmp_path / "calexp.fits")
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.nan_to_num(fits.getdata(path, "IMAGE"))).writeto(plain)
    mask = tmp_path / "mask.fits"
    fits.PrimaryHDU(np.zeros((64, 64), np.uint8)).writeto(mask)
    args = ["detect", str(plain), "--background", "none", "--noise", "22", "-q"]
    assert main([*args, "--mask-planes", "SAT,CR", "-o", str(tmp_path / "a.fits")]) == 0
    err = capsys.readouterr().err
    assert "mask planes SAT,CR named, but plain.fits has no MASK HDU" in err, err
    assert (tmp_path / "a.fits").exists()
    # the default planes, none, a mask file to read them from, an LSST file: no warning
    for extra in ([], ["--mask-planes", "none"], ["--mask-planes", "SAT", "--mask", str(mask)]):
        assert main([*args, *extra, "-o", str(tmp_path / "b.fits")]) == 0
        assert "MASK HDU" not in capsys.readouterr().err
    lsst = ["detect", str(path), "--background", "none", "-q", "-o", str(tmp_path / "c.fits")]
    assert main([*lsst, "--mask-planes", "SAT"]) == 0
    assert "MASK HDU" not in capsys.readouterr().err
    # one file of several holding a MASK is enough
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_planes_found([f"i={plain}", f"r={path}"], ("SAT",))
    with pytest.warns(UserWarning, match="none of plain.fits, plain.fits has a MASK HDU"):
        check_planes_found({"i": plain, "r": plain}, ("SAT",))


def test_fluxes_of_an_nJy_image_are_in_nJy_with_AB_magnitudes(tmp_path):
    from astropy.io import fits

    from probcat.api import ab_mag
    from probcat.cli import main
    from probcat.io import read_image
    from probcat.survey import Survey

    path, _, _ = _afw_file(tmp_path / "coadd.fits", bunit="nJy")
    out = tmp_path / "c.fits"
    assert main(["detect", str(path), "--background", "none", "--deblend", "--samples", "4",
                 "-q", "-o", str(out)]) == 0  # fmt: skip
    head = fits.getheader(out, "CATALOG")
    units = {head[f"TTYPE{i}"]: head.get(f"TUNIT{i}") for i in range(1, head["TFIELDS"] + 1)}
    assert units["flux_ap"] == units["flux_q50"] == "nJy" and units["mag_ap"] == "mag"
    t = fits.getdata(out, "CATALOG")
    assert len(t) >= 2 and np.all(t["flux_ap"] > 0)
    np.testing.assert_allclose(t["mag_ap"], 31.4 - 2.5 * np.log10(t["flux_ap"]), rtol=1e-6)
    back = read_image(tmp_path / "c_residual.fits")  # the residual image is in nJy too
    assert back.unit == "nJy" and back.zeropoint_from == "BUNIT"
    np.testing.assert_allclose(back.noise_sigma, [22.0], rtol=1e-6)  # the VARIANCE noise
    band = Survey.lsst(bands="i").bands[0]
    f = np.array([100.0, -1.0])
    np.testing.assert_allclose(ab_mag(band, f), [band.flux_to_mag(100.0), np.nan])
    np.testing.assert_allclose(ab_mag(band, f, "nJy"), [31.4 - 5.0, np.nan])
    assert np.isnan(ab_mag(band, f, "adu")).all()  # no zeropoint for ADU: not a magnitude


def test_a_varying_lsst_variance_is_read_as_the_local_noise(tmp_path):
    """A coadd noisier on its left half (VARIANCE says so): detection reads the image
    scaled to one noise sigma everywhere (the same as that scaled image given by hand), and
    deblended flux errors are the local noise's."""
    from astropy.io import fits

    import probcat
    from probcat.background import noise_ratio
    from probcat.io import read_image

    sigma = 20.0
    rng = np.random.default_rng(5)
    noise = np.full((128, 128), sigma)
    noise[:, :48] *= 1.5  # 3/8 of the image: the median depth is the quiet one
    img = noise * rng.standard_normal((128, 128))
    _psf_star(img, 30, 60, 400 * sigma)
    _psf_star(img, 100, 60, 400 * sigma)
    path = tmp_path / "coadd.fits"
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(img.astype(np.float32), name="IMAGE"),
            fits.ImageHDU((noise**2).astype(np.float32), name="VARIANCE")]  # fmt: skip
    fits.HDUList(hdus).writeto(path)
    data = read_image(path)
    assert data.variance.shape == (1, 128, 128)
    s = float(data.noise_sigma[0])
    ratio = noise_ratio(data.variance)
    assert ratio is not None and ratio[0, :, :30].mean() == pytest.approx(1 / 1.5, rel=0.01)
    assert ratio[0, :, 70:].mean() == pytest.approx(1.0, rel=0.01)
    det = probcat.load("detection_lsst_i", threads=1)
    got = det.catalog(data, background="none")
    by_hand = det.catalog(data.image * ratio, background="none", noise_sigma=s)
    for c in ("x", "y", "prob"):
        # (scaled after the division by sigma, not before: float32 rounding apart)
        np.testing.assert_allclose(got[c], by_hand[c], rtol=1e-6, atol=1e-6)
    lo, hi = got.meta["input"]["noise_map"]
    assert lo == pytest.approx(1.0, abs=0.01) and hi == pytest.approx(1.5, rel=0.01)
    # the user's sigma: the noise map's shape still counts (the same sigma: the same)
    as_given = det.catalog(data, background="none", noise_sigma=s)
    np.testing.assert_array_equal(as_given["prob"], got["prob"])
    from_path = det.catalog(str(path), background="none")  # a path reads the same
    np.testing.assert_array_equal(from_path["prob"], got["prob"])
    # the measured noise is the median depth's, not the two halves' mixture
    measured = det.catalog(data, background="none", noise_sigma="measured")
    assert measured.meta["input"]["noise_sigma"][0] == pytest.approx(s, rel=0.03)
    res = probcat.deblend(data, samples=4, background="none", threads=1)
    cat = res.catalog
    left = np.argmin(np.hypot(cat["x"] - 30, cat["y"] - 60))
    right = np.argmin(np.hypot(cat["x"] - 100, cat["y"] - 60))
    err = cat["flux_ap_err"].reshape(len(cat))
    assert err[left] / err[right] == pytest.approx(1.5, rel=0.05)


def test_a_weight_map_gives_the_noise_its_shape_and_masks_zero_weights(tmp_path, capsys):
    from astropy.io import fits

    import probcat
    from probcat.background import noise_ratio
    from probcat.cli import main
    from probcat.io import read_image

    sigma = 20.0
    rng = np.random.default_rng(8)
    noise = np.full((96, 96), sigma)
    noise[:, 60:] *= 1.5  # the median depth is the quiet one, NOISE
    img = noise * rng.standard_normal((96, 96))
    _psf_star(img, 24, 40, 300 * sigma)
    _psf_star(img, 72, 40, 300 * sigma)
    path = tmp_path / "swarp.fits"
    fits.PrimaryHDU(img.astype(np.float32), header=fits.Header({"NOISE": sigma})).writeto(path)
    w = 1e-3 / noise**2  # relative weights: the scale does not matter
    w[80:, :10] = 0.0  # no data
    wpath = tmp_path / "swarp.weight.fits"
    fits.PrimaryHDU(w.astype(np.float32)).writeto(wpath)
    data = read_image(path, weight=wpath)
    none = w == 0
    np.testing.assert_array_equal(data.mask[0], none)
    assert data.noise_from == "NOISE" and data.noise_sigma[0] == sigma  # NOISE keeps its sigma
    det = probcat.load("detection_lsst_i", threads=1)
    got = det.catalog(data, background="none")
    ratio = noise_ratio(1.0 / np.where(none, np.inf, w)[None], none)
    by_hand = det.catalog(data.image * ratio, background="none", mask=none, noise_sigma=sigma)
    for c in ("x", "y", "prob", "mask_fraction"):
        np.testing.assert_allclose(got[c], by_hand[c], rtol=1e-6, atol=1e-6)  # float32 order
    assert got.meta["input"]["noise_map"][1] > 1.2
    out = tmp_path / "c.fits"
    args = ["detect", str(path), "--background", "none", "-q"]
    assert main([*args, "--weight", str(wpath), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "[noise map: 1-1.5 x sigma, read as the local noise] [160 pixels masked" in said, said
    with pytest.raises(FileNotFoundError, match="weight map file not found"):
        read_image(path, weight=tmp_path / "nope.fits")
    # the same noise map as a variance map and as an rms map (SExtractor's MAP_VAR, MAP_RMS)
    for kind, values in (("variance", noise**2), ("rms", noise)):
        other = tmp_path / f"swarp.{kind}.fits"
        fits.PrimaryHDU(np.where(none, 0.0, values).astype(np.float32)).writeto(other)
        again = read_image(path, weight=other, weight_type=kind)
        np.testing.assert_array_equal(again.mask, data.mask)
        np.testing.assert_allclose(
            noise_ratio(again.variance, none), noise_ratio(data.variance, none), rtol=1e-5
        )
    with pytest.raises(ProbcatValueError, match="weight type must be one of"):
        read_image(path, weight=wpath, weight_type="inverse")
    rc = main(
        [*args, "--weight", str(wpath), "--weight-type", "ivar", "-o", str(tmp_path / "e.fits")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--weight-type must be one of weight, variance, rms" in err
    small = tmp_path / "small.fits"
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(small)
    for bad, message in ((small, "does not match"), (tmp_path / "nope.fits", "no such file")):
        rc = main([*args, "--weight", str(bad), "-o", str(tmp_path / "d.fits")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and "\n" not in err, err
        assert not (tmp_path / "d.fits").exists()


def test_plane_mask_reads_any_bit_of_signed_and_unsigned_masks():
    from probcat.masking import plane_mask

    head = {"MP_BAD": 0, "MP_NO_DATA": 8, "MP_TOP": 31, "MP_WIDE": 63, "OTHER": 3}
    m = np.array([[0, 1, 1 << 8, 1 << 2]], np.int32)
    np.testing.assert_array_equal(plane_mask(m, head), [[False, True, True, False]])
    top = np.array([[np.iinfo(np.int32).min, 1 << 30]], np.int32)  # bit 31: the sign bit
    np.testing.assert_array_equal(plane_mask(top, head, ["TOP"]), [[True, False]])
    wide = np.array([[1 << 63, 1]], np.uint64)
    np.testing.assert_array_equal(plane_mask(wide, head, ["WIDE"]), [[True, False]])
    assert plane_mask(m, {"OTHER": 3}) is None  # no MP_ keywords: bits of unknown meaning
    with pytest.raises(ProbcatValueError, match="NOPE not in the MASK header"):
        plane_mask(m, head, ["BAD", "NOPE"])
    with pytest.raises(ProbcatValueError, match="not an integer bit mask"):
        plane_mask(m.astype(np.float32), head)


def test_an_image_cube_with_mask_and_variance_hdus_masks_every_plane(tmp_path):
    from astropy.io import fits

    import probcat
    from probcat.io import read_image

    img = np.random.default_rng(0).normal(0, 20, (2, 64, 64)).astype(np.float32)
    bits = np.zeros((64, 64), np.int32)
    bits[:4] = 1 << 8
    head = fits.Header()
    head["HIERARCH MP_NO_DATA"] = 8
    cube = fits.ImageHDU(img, name="IMAGE", header=fits.Header({"BANDS": "gi"}))
    hdus = [fits.PrimaryHDU(), cube, fits.ImageHDU(bits, header=head, name="MASK"),
            fits.ImageHDU(np.full((64, 64), 400, np.float32), name="VARIANCE")]  # fmt: skip
    fits.HDUList(hdus).writeto(tmp_path / "cube.fits")
    data = read_image(tmp_path / "cube.fits")
    assert data.mask.shape == data.variance.shape == (2, 64, 64) and data.bands == ("g", "i")
    assert np.all(data.mask[:, :4]) and not data.mask[:, 4:].any()
    cat = probcat.load("detection_lsst_i", threads=1).catalog(data, background="none")
    assert cat.meta["input"]["masked_pixels"] == 4 * 64  # the i plane, cut from the cube


def test_images_with_bands_partly_masked_are_read_by_the_detector_trained_with_masks():
    """detection_lsst_ugrizy hands an image with a pixel without data in some of its bands
    but not all to detection_lsst_ugrizy_masked, whose catalog it is then, exactly; images
    masked nowhere or in every band at once (an edge) are its own, and in a batch each
    image is read by its own weights, the results in order."""
    import probcat
    from probcat.api import Detector

    det = probcat.load("detection_lsst_ugrizy", threads=1)
    assert det.masked_weights == "detection_lsst_ugrizy_masked"
    assert probcat.load("detection_lsst_ugrizy_masked").masked_weights is None
    assert probcat.load("detection_lsst_i").masked_weights is None
    other = probcat.load("detection_lsst_ugrizy_masked", threads=1)
    plain = Detector(det.net, det.survey, {k: v for k, v in det.manifest.items() if k != "sha256"},
                     threads=1)  # fmt: skip
    assert plain.masked_weights is None
    rng = np.random.default_rng(0)
    sigma = det.survey.noise_sigma[:, None, None]
    clean = (rng.standard_normal((6, 48, 48)) * sigma).astype(np.float32)
    yy, xx = np.mgrid[:48, :48]
    for x0, y0 in ((12.3, 20.6), (33.8, 30.1)):
        clean += (40 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.5) * sigma).astype(np.float32)
    partly = clean.copy()
    partly[3, :, :18] = np.nan  # the i band's left side: the first source under it
    edge = clean.copy()
    edge[:, :, :4] = np.nan  # every band at once: no band reads differently there

    def same(a, b):
        assert len(a) == len(b)
        assert a.colnames == b.colnames
        for col in {"x", "y", "prob", "galaxy_prob"} & set(a.colnames):  # float rounding:
            np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-5)  # batch sizes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN pixels read as masked
        got = det.catalog(partly)
        assert got.meta["input"]["masked_weights"] == "detection_lsst_ugrizy_masked"
        same(got, other.catalog(partly))
        # which weights read it matters: the shipped ones call these sources otherwise
        assert not np.allclose(got["galaxy_prob"], plain.catalog(partly)["galaxy_prob"], atol=0.1)
        assert "masked_weights" not in det.catalog(edge).meta["input"]
        same(det.catalog(edge), plain.catalog(edge))
        same(det.catalog(clean), plain.catalog(clean))
        # a batch: each image by its own weights, in order (MAP, maps and samples)
        cats = det.catalog([clean, partly, edge])
        for c, want in zip(
            cats, (plain.catalog(clean), other.catalog(partly), plain.catalog(edge))
        ):
            same(c, want)
        maps = det.probability_map([partly, clean])
        np.testing.assert_allclose(maps[0], other.probability_map(partly), atol=1e-5)
        np.testing.assert_allclose(maps[1], plain.probability_map(clean), atol=1e-5)
        draws = det.sample([clean, partly], 2, seed=3)
        for d, want in zip(
            draws, (plain.sample(clean, 2, seed=3), other.sample(partly, 2, seed=3))
        ):
            for a, b in zip(d, want):
                same(a, b)
        res = det.detect(partly, samples=2, seed=3)
        same(res.catalog, got)
        for a, b in zip(res.samples, other.sample(partly, 2, seed=3)):
            same(a, b)


def test_empty_bands_are_the_planes_without_any_data():
    """A plane is empty when NaN/inf, the file's mask and the given mask together cover
    every pixel: compared with a brute-force count over the union."""
    from probcat.api import empty_bands
    from probcat.io import ImageData

    rng = np.random.default_rng(4)
    img = rng.standard_normal((5, 12, 14)).astype(np.float32)
    img[0] = np.nan  # NaN everywhere
    img[1, 0, 0] = np.nan  # its first pixel only: has data
    img[2, :, :7] = np.inf  # half inf, the other half in the file's mask
    own = np.zeros(img.shape, bool)
    own[2, :, 7:] = True
    img[3, :6] = np.nan  # half NaN, the other half in the given mask
    given = np.zeros(img.shape, bool)
    given[3, 6:] = True
    data = ImageData(img, None, tuple("ugriz"), np.ones(5), mask=own)
    with np.errstate(invalid="ignore"):
        brute = [b for b in range(5) if (~np.isfinite(img[b]) | own[b] | given[b]).all()]
    assert empty_bands(data, given) == brute == [0, 2, 3]
    assert empty_bands(data) == [0, 2]
    assert empty_bands(data, given[3]) == [0, 2, 3]  # one (H, W) mask for every band
    every = np.ones((12, 14), bool)
    assert empty_bands(data, every) == [0, 1, 2, 3, 4]
    assert empty_bands(data, np.ones((3, 3), bool)) == [0, 2]  # a misshapen mask: not read


def _crowded(rng, size=256, n=400):
    """Unit noise plus ``n`` faint Gaussian sources (peaks 1-4 sigma, sigma 1.5-3 px): a
    field whose faint light lifts the noise read about the sky."""
    yy, xx = np.mgrid[:size, :size]
    img = rng.standard_normal((size, size))
    for x0, y0, a, s in zip(rng.uniform(0, size, n), rng.uniform(0, size, n),
                            rng.uniform(1, 4, n), rng.uniform(1.5, 3, n)):  # fmt: skip
        img += a * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    return img[None].astype(np.float32)


def test_fill_noise_is_the_datas_not_lifted_by_faint_sources():
    """The masked pixels of a crowded field are filled with the noise of its data, sources
    masked (1 here), not the spread about the sky, which the sources' light lifts; so an
    image that states no noise, half of it without data, is read at the survey's."""
    from probcat.api import read_input
    from probcat.background import sky
    from probcat.survey import Survey

    img = _crowded(np.random.default_rng(5))
    bad = np.zeros(img.shape, bool)
    bad[0, :, :128] = True
    back, rms = sky(img[0], mask=bad[0])
    assert rms > 1.15  # the spread about the sky: the sources' light counted as noise
    filled = fill_masked(np.where(bad, np.nan, img), bad)[bad]
    # the data's noise (1), lifted a little by the faintest wings that no mask finds
    assert abs(filled.std() - 1.0) < 0.06
    survey = Survey.lsst(bands="i")
    sigma = float(survey.noise_sigma[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, _, got, info, _ = read_input(np.where(bad, np.nan, img * sigma), survey, None)
    assert "noise_source" not in info, info  # not read at a measured noise
    assert got[0] == pytest.approx(sigma)
    assert not [w for w in caught if "pixel noise is more than" in str(w.message)]


def test_fill_noise_measured_off_centre_when_the_centre_is_masked(monkeypatch):
    """Where the central crop that data_noise reads is (nearly) all masked, the noise is
    measured on the whole band: the fill still has the data's noise, not the spread
    about the sky."""
    import probcat.background as B

    monkeypatch.setattr(B, "DATA_NOISE_CROP", 64)
    img = _crowded(np.random.default_rng(6))
    bad = np.zeros(img.shape, bool)
    bad[0, 80:176, 80:176] = True  # the central 64 px and more
    back, rms = B.sky(img[0], mask=bad[0])
    assert rms > 1.15
    assert abs(B.data_noise(img[0], back, rms, bad[0]) - 1.0) < 0.06
    filled = fill_masked(np.where(bad, np.nan, img), bad)[bad]
    assert abs(filled.std() - 1.0) < 0.06
