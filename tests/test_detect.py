import numpy as np
import pytest

from probcat.catalog import FullCatalog, make_wcs
from probcat.cli import main
from probcat.api import detect
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


def test_detect_samples(weights, fits_image):
    res = detect(fits_image, weights=weights, samples=5, seed=3)
    assert len(res.samples) == 5
    again = detect(fits_image, weights=weights, samples=5, seed=3)
    assert [len(s) for s in res.samples] == [len(s) for s in again.samples]


@pytest.mark.parametrize(
    "image, msg",
    [
        (np.full((1, 64, 64), np.nan), "NaN"),
        (np.zeros((3, 64, 64)), "band"),
        (np.zeros((1, 10, 10)), "smaller than the minimum"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_detect_bad_inputs(weights, image, msg):
    with pytest.raises(ProbcatValueError, match=msg):
        detect(image, weights=weights)


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


def test_detect_cli_non_fits(tmp_path, weights, capsys):
    bad = tmp_path / "x.fits"
    bad.write_text("hello")
    rc = main(["detect", str(bad), "--weights", str(weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not a readable FITS" in err and len(err.splitlines()) == 1
    assert main(["detect", str(tmp_path / "nope.fits"), "--weights", str(weights)]) == 2
