import numpy as np
import pytest

from probcat.api import detect
from probcat.catalog import FullCatalog, make_wcs
from probcat.cli import main
from probcat.errors import ProbcatIOError, ProbcatValueError
from probcat.io import write_image
from probcat.survey import Survey


@pytest.fixture
def fits_image(tmp_path):
    s = Survey.lsst(bands="i")
    img = np.random.default_rng(0).standard_normal((1, 64, 72)).astype(np.float32) * 434.5
    img[0, 30:33, 40:43] += 3e4
    return write_image(tmp_path / "img.fits", img, s, make_wcs((64, 72), 0.2, 10.0, -5.0))


def test_detect_array_and_fits_agree(weights, fits_image):
    from probcat.io import read_image

    data = read_image(fits_image)
    a = detect(data.image, weights=weights, threshold=0.0)
    b = detect(fits_image, weights=weights, threshold=0.0)
    # every tile detects at threshold 0, but locations past the image edge are dropped
    assert len(a.catalog) == len(b.catalog) and 13 * 15 - 13 - 15 <= len(a.catalog) <= 13 * 15
    assert np.all((a.catalog["y"] < 63.5) & (a.catalog["x"] < 71.5))
    assert np.allclose(a.catalog["x"], b.catalog["x"])
    assert "ra" in b.catalog and "ra" not in a.catalog
    assert b.probability_map().shape == (13, 15)
    ra, dec = b.wcs.pixel_to_world_values(b.catalog["x"][:1], b.catalog["y"][:1])
    assert b.catalog["ra"][0] == pytest.approx(float(ra[0]))


def test_a_loaded_model_is_taken_wherever_weights_are(weights, fits_image):
    """``probcat.load`` returns a loaded model as it is (kind checked), so ``detect`` takes
    a Detector as ``weights=`` and gives the catalog that the weights file gives."""
    import probcat

    det = probcat.load(weights, threads=1)
    assert probcat.load(det, kind="detection") is det
    with pytest.raises(ValueError, match="detection weights, not deblender weights"):
        probcat.load(det, kind="deblender")
    a = probcat.detect(fits_image, weights=det, threshold=0.2).catalog
    b = probcat.detect(fits_image, weights=weights, threshold=0.2).catalog
    assert len(a) == len(b) > 0 and np.array_equal(a["x"], b["x"])
    assert np.array_equal(a["prob"], b["prob"])


def test_detect_samples(weights, fits_image):
    res = detect(fits_image, weights=weights, samples=5, seed=3)
    assert len(res.samples) == 5
    again = detect(fits_image, weights=weights, samples=5, seed=3)
    assert [len(s) for s in res.samples] == [len(s) for s in again.samples]


@pytest.mark.parametrize(
    "image, msg",
    [
        (np.full((1, 64, 64), np.nan), "^every pixel of band 0 is masked"),
        (np.zeros((3, 64, 64)), "band"),
        (np.zeros((1, 10, 10)), "smaller than the minimum"),
        (np.array([["a"]]), "numeric"),
        ([[1.0, 2.0], [3.0, 4.0]],
         r"^image 0 of the list \(a list holds several images; give one as a numpy array\): "
         r"image must be \(bands, H, W\), got shape \(2,\)$"),
        (np.stack([np.zeros((1, 64, 64)), np.full((1, 64, 64), np.inf)]),
         "^image 1 of the stack: every pixel of band 0 is masked"),
        (np.full((1, 64, 64), np.inf), "^every pixel of band 0 is masked"),  # no prefix
    ],
)  # fmt: skip
def test_detect_bad_inputs(weights, image, msg):
    with pytest.raises(ProbcatValueError, match=msg):
        detect(image, weights=weights)


def test_a_cutout_below_the_minimum_size_detects_once_padded_with_nan(shipped):
    """The size error says how to read a small cutout; padded with NaN as it says, the
    cutout's star is found where it is, the padding read as no data."""
    det = shipped
    yy, xx = np.mgrid[:32, :32]
    star = (
        1e5 * np.exp(-((xx - 15.3) ** 2 + (yy - 16.6) ** 2) / (2 * 1.6**2)) / (2 * np.pi * 1.6**2)
    )
    cutout = (np.random.default_rng(0).normal(0, 434, (32, 32)) + star).astype(np.float32)
    with pytest.raises(ProbcatValueError, match="smaller than the minimum 37x37 px.*pad"):
        det.detect(cutout, noise_sigma=434.0)
    padded = np.pad(cutout, ((0, 5), (0, 5)), constant_values=np.nan)
    with pytest.warns(UserWarning, match="NaN or inf"):
        cat = det.detect(padded, noise_sigma=434.0).catalog
    assert len(cat) == 1
    assert abs(cat["x"][0] - 15.3) < 0.3 and abs(cat["y"][0] - 16.6) < 0.3
    assert cat["prob"][0] > 0.9 and cat["mask_fraction"][0] == 0


def test_bad_weights_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ProbcatIOError):
        detect(np.zeros((1, 64, 64)), weights=bad)
    with pytest.raises(FileNotFoundError):
        detect(np.zeros((1, 64, 64)), weights=tmp_path / "missing.pt")


def test_detect_cli(weights, fits_image, tmp_path, capsys):
    out = tmp_path / "cat.fits"
    rc = main(
        [
            "detect",
            str(fits_image),
            "-o",
            str(out),
            "--weights",
            str(weights),
            "--samples",
            "3",
            "--plot",
            str(tmp_path / "d.png"),
            "--threshold",
            "0.2",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    cat = FullCatalog.read(out)
    assert {"x", "y", "prob", "x_sd", "galaxy_prob", "ra", "dec"} <= set(cat.colnames)
    samples = FullCatalog.read(tmp_path / "cat_samples.fits")
    assert set(np.unique(samples["sample"])) <= {0, 1, 2}
    assert (tmp_path / "d.png").stat().st_size > 5000


@pytest.mark.parametrize("suffix", [".ECSV", ".FITS"])
def test_detect_cli_writes_ecsv_and_upper_case_suffixes(weights, fits_image, tmp_path, suffix):
    """A catalog named in capitals is written (``.FITS`` passed the early check and then
    failed after the work), and ECSV, catalog and samples alike, reads back the same."""
    out = tmp_path / f"cat{suffix}"
    args = ["detect", str(fits_image), "-o", str(out), "--weights", str(weights)]
    assert main(args + ["--samples", "2", "--threshold", "0.2"]) == 0
    ref = detect(fits_image, weights=weights, threshold=0.2, samples=2).catalog
    cat = FullCatalog.read(out)
    assert np.array_equal(cat["x"], ref["x"]) and np.array_equal(cat["prob"], ref["prob"])
    assert cat.meta["input"] == ref.meta["input"]
    assert set(FullCatalog.read(tmp_path / f"cat_samples{suffix}")["sample"]) <= {0, 1}


def test_detect_cli_non_fits(tmp_path, weights, capsys):
    bad = tmp_path / "x.fits"
    bad.write_text("hello")
    rc = main(["detect", str(bad), "--weights", str(weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not a readable FITS" in err and len(err.splitlines()) == 1
    assert main(["detect", str(tmp_path / "nope.fits"), "--weights", str(weights)]) == 2
    # bytes that open as compressed (zip, gzip, bzip2, xz: astropy reads those so) and are
    # not: the same one-line error (a zip's BadZipFile escaped, found by the fuzz)
    capsys.readouterr()
    for magic in (b"PK\x03\x04", b"\x1f\x8b", b"BZh9", b"\xfd7zXZ\x00"):
        bad.write_bytes(magic + b"not really")
        rc = main(["detect", str(bad), "--weights", str(weights)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "not a readable FITS" in err and len(err.splitlines()) == 1, err


# ---- the shipped weights ---------------------------------------------------------------
FIXED = "tests/data/fixed_scene_v6.npz"  # a 160x160 LSST-i scene and the v6 catalogs of it


@pytest.fixture(scope="module")
def fixed():
    return np.load(FIXED)


@pytest.fixture(scope="module")
def shipped():
    import probcat

    return probcat.load("detection_lsst_i", device="cpu", threads=1)


def test_public_api_names():
    import probcat

    assert callable(probcat.detect) and callable(probcat.load)
    assert probcat.Detector.__name__ == "Detector"
    assert probcat.DetectionResult.__name__ == "DetectionResult"
    for name in probcat.__all__:
        assert getattr(probcat, name) is not None


def test_shipped_weights_detect_on_a_64px_image(shipped, fixed):
    """Smoke test: the shipped weights find the bright sources of a 64x64 cutout."""
    cut = fixed["image"][:, :64, :64]
    cat = shipped.catalog(cut)
    ref = (fixed["cat_x"] < 54) & (fixed["cat_y"] < 54) & (fixed["cat_prob"] > 0.9)
    assert ref.sum() >= 2 and len(cat) >= ref.sum()
    for x, y in zip(fixed["cat_x"][ref], fixed["cat_y"][ref]):
        assert np.min(np.hypot(cat["x"] - x, cat["y"] - y)) < 1.0


def test_shipped_weights_give_the_catalog_recorded_before_the_platform_change(fixed):
    """Same detections, probabilities to 1e-5, on the fixed scene, as the v6 weights (now
    detection_lsst_i_bulgedisk) gave before the backbone, heads and registry were
    reorganised. Positions to 1e-5 px plus 4 float32 steps (5e-7 relative): another CPU
    rounds the convolutions differently (1.3e-5 px at y = 150 px, where a float32 step is
    1.5e-5). The posterior samples were recorded again when each sample got a random stream
    of its own (their mean count over 300 samples: 43.90 +- 0.15, before 44.11 +- 0.15)."""
    ulps = 5e-7
    import probcat

    v6 = probcat.load("detection_lsst_i_bulgedisk", device="cpu", threads=1)
    res = v6.detect(fixed["image"], samples=4, seed=3)
    cat = res.catalog
    assert len(cat) == len(fixed["cat_x"]) > 20
    for k in ("x", "y", "x_sd", "y_sd", "prob", "prob_conditional", "galaxy_prob"):
        assert np.allclose(cat[k], fixed["cat_" + k], rtol=ulps, atol=1e-5), k
    assert np.array_equal(cat["galaxy"], fixed["cat_galaxy"])
    assert np.allclose(res.probability_map(), fixed["prob_map"], rtol=0, atol=1e-5)
    for i, s in enumerate(res.samples):  # same seed, same posterior samples
        assert np.allclose(s["x"], fixed[f"sample{i}_x"], rtol=ulps, atol=1e-5)
        assert np.allclose(s["y"], fixed[f"sample{i}_y"], rtol=ulps, atol=1e-5)


def test_batched_cutouts_equal_one_by_one(shipped, fixed):
    cuts = [
        fixed["image"][:, :98, :98],
        fixed["image"][:, 62:, 62:],
        fixed["image"][:, 30:128, :98],
    ]
    batched = shipped.catalog(cuts)
    stacked = shipped.catalog(np.stack(cuts))
    assert isinstance(batched, list) and len(batched) == 3
    for cut, a, b in zip(cuts, batched, stacked):
        one = shipped.catalog(cut)
        assert len(one) == len(a) == len(b) > 0
        for k in ("x", "y", "prob", "galaxy_prob"):
            assert np.allclose(one[k], a[k], atol=1e-5) and np.allclose(one[k], b[k], atol=1e-5)
    maps = shipped.probability_map(cuts)
    assert maps.shape == (3, 20, 20)
    assert np.allclose(maps[1], shipped.probability_map(cuts[1]), atol=1e-6)
    with pytest.raises(ProbcatValueError, match="share one shape"):
        shipped.catalog([cuts[0], fixed["image"][:, :90, :98]])


def test_posterior_samples_by_position_across_seeds(shipped, fixed):
    cut = fixed["image"][:, :98, :98]
    a = shipped.sample(cut, 4, seed=11)
    b = shipped.sample(cut, 4, seed=11)
    c = shipped.sample(cut, 4, seed=12)
    assert len(a) == 4 and all(len(s) > 5 for s in a)
    for s, t in zip(a, b):  # same seed: the same sources at the same positions
        assert np.array_equal(s["x"], t["x"]) and np.array_equal(s["y"], t["y"])
    # another seed: positions drawn anew (each source's sample differs), counts alike
    moved = [
        np.median(np.abs(s["x"][: min(len(s), len(t))] - t["x"][: min(len(s), len(t))]))
        for s, t in zip(a, c)
    ]
    assert all(m > 0 for m in moved)
    assert abs(np.mean([len(s) for s in a]) - np.mean([len(s) for s in c])) < 5
    lists = shipped.sample([cut, cut], 2, seed=11)  # several images: a list per image
    two = shipped.sample(cut, 2, seed=11)
    assert len(lists) == 2 and np.allclose(lists[1][0]["x"], two[0]["x"], atol=1e-4)


def test_samples_follow_the_centroid_calibration_of_their_images_catalog(shipped, fixed):
    """Weights with a second (real shapes) centroid calibration: an image's posterior
    samples scatter as its MAP catalogue's intervals say (the two calibrations mixed by the
    image's weight), whether drawn with the catalogue or alone; weights with one
    calibration keep it."""
    import probcat
    from probcat.infer.calibration import CentroidCalibration, mix_centroid_calibrations

    cut = fixed["image"][:, :98, :98]
    res = shipped.detect(cut, samples=2, seed=5)
    cal = res.catalog.meta["centroid_calibration"]
    w = res.catalog.meta["real_shapes_probability"]
    assert 0.01 < w < 0.99 and cal != shipped.net.centroid_calibration.to_dict()
    want = mix_centroid_calibrations(
        shipped.net.centroid_calibration, shipped.net.real_shapes_centroid_calibration, w
    )
    # (the metadata's weight is rounded to 1e-4)
    assert CentroidCalibration.from_dict(cal).k == pytest.approx(want.k, abs=2e-4)
    assert all(s.meta["centroid_calibration"] == cal for s in res.samples)
    alone = shipped.sample(cut, 2, seed=5)
    assert all(s.meta["centroid_calibration"] == cal for s in alone)
    for s, t in zip(alone, res.samples):  # the same draws either way
        assert np.array_equal(s["x"], t["x"]) and np.array_equal(s["y"], t["y"])
    v6 = probcat.load("detection_lsst_i_bulgedisk", device="cpu", threads=1)
    own = v6.net.centroid_calibration.to_dict()
    assert v6.net.real_shapes_centroid_calibration is None
    assert all(s.meta["centroid_calibration"] == own for s in v6.sample(cut, 2, seed=5))


def test_decoding_creates_no_tensor_on_a_fixed_device(shipped, fixed):
    """Every tensor of inference is made on the network's device: with factory functions
    defaulting to the 'meta' device, a tensor created without ``device=`` would be a meta
    tensor and any arithmetic mixing it with the CPU network's tensors would fail."""
    import torch

    cut = fixed["image"][:, :64, :64]
    want = shipped.catalog(cut)
    with torch.device("meta"):
        got = shipped.catalog(cut)
        draws = shipped.sample(cut, 2, seed=1)
    assert np.array_equal(want["x"], got["x"]) and np.array_equal(want["prob"], got["prob"])
    assert len(draws) == 2


def test_detector_runs_on_cuda_like_on_the_cpu(fixed):
    import torch

    import probcat

    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    cut = fixed["image"][:, :98, :98]
    cpu = probcat.load(device="cpu").catalog(cut)
    gpu = probcat.load(device="cuda")
    tf32 = torch.backends.cudnn.allow_tf32
    cat = gpu.catalog(cut)
    assert torch.backends.cudnn.allow_tf32 == tf32  # torch's setting restored after the call
    # full float32 convolutions (probcat.runtime.full_float32): TF32 moved probabilities of a
    # 1000x1000 scene by up to 0.003 on an H200, full float32 by 1.5e-5
    assert len(cat) == len(cpu)
    assert np.allclose(cat["x"], cpu["x"], atol=1e-3)
    assert np.allclose(cat["prob"], cpu["prob"], atol=2e-4)
    # each sample its own random stream (a GPU batches more samples): the CPU's samples
    draws = gpu.sample(cut, 3, seed=0)
    assert len(draws) == 3
    for a, b in zip(probcat.load(device="cpu").sample(cut, 3, seed=0), draws):
        assert len(a) == len(b) and np.allclose(a["x"], b["x"], atol=0.01)


def test_deblender_runs_on_cuda_like_on_the_cpu(fixed):
    import torch

    import probcat

    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    cut = fixed["image"][:, :98, :98]
    cat = probcat.load(device="cpu").catalog(cut)
    cpu = probcat.load("deblender_lsst_i", device="cpu").measure(cut, cat)
    gpu = probcat.load("deblender_lsst_i", device="cuda").measure(cut, cat)
    flux_cpu, flux_gpu = cpu.catalog["flux_ap"], gpu.catalog["flux_ap"]
    assert len(cat) > 5 and np.allclose(flux_gpu, flux_cpu, rtol=0.01, atol=1.0, equal_nan=True)
    assert np.abs(gpu.model - cpu.model).max() <= 1e-2 * np.abs(cpu.model).max()


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"samples": -1}, "samples"),
        ({"samples": 10**9}, "samples"),
    ],
)
def test_detector_rejects_bad_settings(shipped, fixed, kw, msg):
    with pytest.raises(ProbcatValueError, match=msg):
        shipped.detect(fixed["image"][:, :64, :64], **kw)


def test_load_rejects_bad_threads_and_devices():
    import probcat

    with pytest.raises(ProbcatValueError, match="threads"):
        probcat.load(threads=0)
    with pytest.raises(ProbcatValueError, match="device"):
        probcat.load(device="gpu0")


def test_read_image_planes_exact_and_mismatched_planes_refused(tmp_path):
    from astropy.io import fits

    from probcat.io import read_image

    s = Survey.lsst(bands="gri")
    img = np.random.default_rng(2).standard_normal((3, 20, 24)).astype(np.float32) * 50
    back = read_image(write_image(tmp_path / "gri.fits", img, s))
    assert back.bands == ("g", "r", "i") and np.array_equal(back.image, img)
    assert back.image.dtype == np.float32
    # a plane of another shape that would broadcast into the cube is an error, not copied
    prim = fits.PrimaryHDU()
    prim.header["NBANDS"], prim.header["BANDS"] = 2, "gi"
    hdus = [prim, fits.ImageHDU(img[0], name="G"), fits.ImageHDU(img[1, :1], name="I")]
    fits.HDUList(hdus).writeto(tmp_path / "bad.fits")
    with pytest.raises(ProbcatIOError, match="differ in shape"):
        read_image(tmp_path / "bad.fits")


def test_read_image_bands_follow_their_hdus_and_weights_take_their_planes(tmp_path, weights):
    from astropy.io import fits

    from probcat.api import read_input
    from probcat.io import read_image

    rng = np.random.default_rng(3)
    planes = {b: rng.standard_normal((48, 40)).astype(np.float32) * 400 for b in "gri"}
    prim = fits.PrimaryHDU()
    prim.header["NBANDS"], prim.header["BANDS"] = 3, "gri"

    def mef(name, order):
        hdus = [prim] + [fits.ImageHDU(planes[b], name=b.upper()) for b in order]
        fits.HDUList(hdus).writeto(tmp_path / name)
        return tmp_path / name

    # HDUs in another order than BANDS: each plane keeps its own band
    back = read_image(mef("irg.fits", "irg"))
    assert back.bands == ("i", "r", "g")
    assert all(np.array_equal(back.image[k], planes[b]) for k, b in enumerate(back.bands))
    # i-band weights read the i plane of a three-band file
    x, _, sigma, _, _ = read_input(back, Survey.lsst(bands="i"), 400.0)
    assert x.shape == (1, 48, 40) and np.allclose(x[0] * sigma[0], planes["i"], rtol=1e-6)
    assert len(detect(tmp_path / "irg.fits", weights=weights, threshold=0.0).catalog) > 0
    # a band named in BANDS without its HDU
    with pytest.raises(ProbcatIOError, match="BANDS is gri but the file has image HDUs for gr"):
        read_image(mef("gr.fits", "gr"))


def test_an_implausible_gain_is_a_one_line_error(tmp_path, weights, capsys):
    """GAIN = 1e-45 read every pixel as 0 e- (float32 underflow) and ran without a word
    (found by the fuzz): a gain outside 1e-6 to 1e6 e-/ADU is an error, as keyword, option
    or argument; one inside is read."""
    from astropy.io import fits

    import probcat

    x = np.random.default_rng(0).normal(0.0, 20.0, (48, 48)).astype(np.float32)
    for gain, rc in ((1e-45, 2), (1e7, 2), (2.0, 0)):
        path = tmp_path / "adu.fits"
        hdr = fits.Header({"GAIN": gain, "BUNIT": "adu"})
        fits.PrimaryHDU(x, header=hdr).writeto(path, overwrite=True)
        got = main(["detect", str(path), "--weights", str(weights), "-o", str(tmp_path / "c.fits")])
        err = capsys.readouterr().err.strip()
        assert got == rc, err
        if rc:
            assert "not a plausible gain" in err and len(err.splitlines()) == 1
    with pytest.raises(ProbcatValueError, match="plausible gain"):
        probcat.load(str(weights)).detect(x[None], noise_sigma=[20.0], gain=1e9)


def test_detection_beyond_the_memory_is_refused_before_it_starts(
    weights, fits_image, tmp_path, monkeypatch, capsys
):
    """An image whose detection needs more memory than this process may use (estimated
    per pixel, and per band beyond the first) is a one-line error before any of the work,
    in the API and the CLI (which writes nothing); at the limit itself it runs. A batch of
    cutouts is judged on the images that run as one forward pass."""
    import probcat.api as api
    from probcat import runtime

    need = api.BASE_BYTES + 64 * 72 * api.DETECT_BYTES_PER_PIXEL  # one 72x64 i image
    monkeypatch.setattr(runtime, "memory_limit", lambda: (need - 1, "this machine has"))
    msg = r"^detection of a 72x64 image in 1 band\(s\) needs about 0\.5 GB of memory and this"
    with pytest.raises(ProbcatValueError, match=msg + r" machine has 0\.5 GB; detect it in"):
        detect(fits_image, weights=weights)
    out = tmp_path / "cat.fits"
    rc = main(["detect", str(fits_image), "-o", str(out), "--weights", str(weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "needs about 0.5 GB" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    monkeypatch.setattr(runtime, "memory_limit", lambda: (need, "this machine has"))
    assert len(detect(fits_image, weights=weights, threshold=0.0).catalog) > 0
    # three cutouts, one forward pass: three times the pixels
    stack = np.random.default_rng(1).standard_normal((3, 1, 64, 72)).astype(np.float32)
    three = api.BASE_BYTES + 3 * 64 * 72 * api.DETECT_BYTES_PER_PIXEL
    det = api.load(str(weights), device="cpu")
    monkeypatch.setattr(runtime, "memory_limit", lambda: (three - 1, "this machine has"))
    with pytest.raises(ProbcatValueError, match=r"^3 images of 72x64 at once in 1 band"):
        det.catalog(stack * 434.5)
    monkeypatch.setattr(runtime, "memory_limit", lambda: (three, "this machine has"))
    assert len(det.catalog(stack * 434.5)) == 3
