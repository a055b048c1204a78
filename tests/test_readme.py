"""Every Python snippet of the README runs (in order, in one namespace, in a scratch folder
holding the files they name), and so do its `probcat detect` command lines."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from probcat.catalog import make_wcs
from probcat.cli import main
from probcat.io import write_image
from probcat.survey import Survey

README = Path(__file__).resolve().parents[1] / "README.md"
FIXED = Path(__file__).resolve().parent / "data" / "fixed_scene_v6.npz"


def _blocks(lang: str, path: Path = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROBCAT_CACHE", str(tmp_path / "cache"))
    image = np.load(FIXED)["image"]
    s = Survey.lsst(bands="i")
    write_image("image.fits", image, s, make_wcs(image.shape[1:], 0.2, 150.0, 2.0))
    cutouts = np.stack([image[:, :98, :98], image[:, 62:, 62:]])
    return {
        "cutouts": cutouts,
        "cutout_a": cutouts[0],
        "cutout_b": cutouts[1],
        "image_shape": image.shape[1:],
    }


@pytest.mark.slow
def test_python_snippets_run(scratch):
    blocks = _blocks("python")
    assert len(blocks) >= 3
    namespace = dict(scratch)
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)
    assert len(namespace["counts"]) == 100  # posterior samples of probcat.detect
    assert len(namespace["cats"]) == 2 and namespace["maps"].shape == (2, 20, 20)
    res = namespace["res"]  # probcat.deblend's result
    assert "flux_q50" in res.catalog and len(res.detection.samples) == 20
    assert res.model.shape == res.residual.shape == (1, *scratch["image_shape"])


@pytest.mark.slow
def test_docs_python_snippets_run(scratch):
    docs = README.parent / "docs"
    for name in ("method.md", "deblending.md"):
        blocks = _blocks("python", docs / name)
        assert blocks, name
        namespace = dict(scratch)
        for code in blocks:
            exec(compile(code, str(docs / name), "exec"), namespace)
        if name == "method.md":
            assert namespace["images"].shape == (8, 1, 98, 98)
        else:
            c = namespace["out"].catalog
            assert len(c) == len(namespace["res"].catalog) > 0
            assert {"flux_q16", "flux_q50", "flux_q84", "T", "e1", "blendedness"} <= set(c.colnames)
            clean = namespace["clean"]
            assert clean.dtype == bool and clean.shape == (len(namespace["res"].catalog),)


def test_detect_command_lines_run(scratch, capsys):
    lines = [ln for b in _blocks("bash") for ln in b.splitlines()]
    lines = [ln for ln in lines if ln.startswith(".venv/bin/probcat detect ")]
    assert len(lines) == 3
    for line in lines:
        args = shlex.split(line.split("#")[0])[1:]  # drop .venv/bin/probcat
        assert main(args) == 0, capsys.readouterr().err
    assert Path("catalog.fits").exists() and Path("det.png").exists()
    assert Path("image_catalog_samples.fits").exists()
    assert Path("deblended.fits").exists() and Path("deblended_residual.fits").exists()


@pytest.mark.slow
def test_run_command_lines_run(scratch, capsys):
    """The README's `probcat run` line on two images: a catalog each and a HATS catalog."""
    import glob
    import shutil

    Path("images").mkdir()
    for k in range(2):
        shutil.copy("image.fits", f"images/field_{k}.fits")
    lines = [ln for b in _blocks("bash") for ln in b.splitlines()]
    lines = [ln for ln in lines if ln.startswith(".venv/bin/probcat run ")]
    assert len(lines) == 1
    args = shlex.split(lines[0].split("#")[0])[1:]
    args = [a for w in args for a in (sorted(glob.glob(w)) if "*" in w else [w])]
    assert main([*args, "--workers", "0", "-q"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in Path("catalogs").glob("*.parquet")) == [
        "field_0.parquet",
        "field_1.parquet",
    ]
    assert (Path("hats/field") / "properties").exists()


def _assert_commands_exist(lines, capsys):
    """Each ``probcat`` command line's command (``train`` with its subcommand) has a help."""
    for line in lines:
        words = shlex.split(line.split("#")[0].split("&&")[-1])
        command = [w for w in words[1:] if not w.startswith("-")][:2]
        command = command[:2] if command[0] == "train" else command[:1]
        assert main([*command, "--help"]) == 0, line
        assert "Usage:" in capsys.readouterr().out


def test_every_command_of_the_readme_exists(capsys):
    lines = [ln for b in _blocks("bash") for ln in b.splitlines() if "bin/probcat " in ln]
    _assert_commands_exist(lines, capsys)
    assert main(["nosuchcommand", "--help"]) == 2  # the check can fail


@pytest.mark.slow
def test_photoz_doc_snippets_run(scratch):
    """docs/photoz.md on a simulated ugrizy field (DC2 galaxies, a small test-split bank)."""
    from probcat.simulate.datasets import Simulation, SimulationConfig

    cfg = SimulationConfig(
        recipe="blend",
        n=1,
        seed=7,
        bands="ugrizy",
        population="dc2",
        split="test",
        bank_size=64,
        size=98,
    )
    sim = Simulation(cfg, progress=False, workers=1)
    scene, _ = sim.scene(0)
    write_image("field_ugrizy.fits", scene.image, sim.survey, sim.wcs(0))
    path = README.parent / "docs" / "photoz.md"
    blocks = _blocks("python", path)
    assert len(blocks) == 2
    namespace = dict(scratch)
    exec(compile(blocks[0], str(path), "exec"), namespace)
    res = namespace["res"]
    n = int(np.sum(res.catalog["has_pz"]))
    assert n > 0 and namespace["pdfs"].shape == (n, 301)
    est = namespace["est"]
    k = est.net.n_components  # members x orientations x 5 components, pooled
    cfg = est.manifest["config"]
    assert k == cfg["members"] * cfg["symmetries"] * cfg["model"]["components"] == 40
    assert namespace["mu"].shape == (len(res.catalog), k)
    has = np.asarray(res.catalog["has_pz"], bool)
    namespace.update(
        xs=np.asarray(res.catalog["x"])[has],
        ys=np.asarray(res.catalog["y"])[has],
        zs=np.asarray(res.catalog["z_median"])[has] + 0.05,
    )
    exec(compile(blocks[1], str(path), "exec"), namespace)
    assert namespace["ensemble"].npdf == n


def test_robustness_doc_snippets_run(scratch, capsys):
    """docs/robustness.md: its snippets run, and the config written by the one on training
    on your own galaxies reads as a training config on that catalogue, split in disjoint
    thirds; its command lines exist."""
    from probcat.simulate.prior import galaxy_population
    from probcat.train.detection import load_config

    path = README.parent / "docs" / "robustness.md"
    blocks = _blocks("python", path)
    assert len(blocks) == 4
    namespace = dict(scratch)
    for code in blocks:
        exec(compile(code, str(path), "exec"), namespace)
    assert len(namespace["gals"]) == 1000 and len(namespace["cat"]) > 0
    ev = namespace["ev"]  # the two cutouts' evidence, pooled, as each catalogue says
    assert ev["images"] == 2 and 0 <= ev["real_shapes"] <= 1 and 0 <= ev["cutout"] <= 1
    for c in namespace["pooled"]:
        assert c.meta["calibration_evidence"]["from"] == "pooled over 2 images"
        assert c.meta["real_shapes_probability"] == round(ev["real_shapes"], 4)
    cfg = load_config("my_detection.yaml")
    assert cfg.data.population == "my_galaxies.parquet" and cfg.init == "detection_lsst_i"
    from probcat.weights import manifest

    shipped = manifest("detection_lsst_i")["config"]  # its settings came over, through YAML
    assert [p.steps for p in cfg.phases] == [p["steps"] for p in shipped["phases"]]
    assert cfg.fits.reliability_scenes == shipped["fits"]["reliability_scenes"]
    assert cfg.model.channels == shipped["model"]["channels"]
    rows = {
        s: galaxy_population(cfg.data.population, split=s, seed=cfg.data.catalog_seed, bands=("i",))
        for s in ("train", "val", "test")
    }
    assert [len(t) for t in rows.values()] == [2000, 2000, 2000]
    ids = [set(np.asarray(t["id"]).tolist()) for t in rows.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set(np.unique(rows["train"]["family"]).tolist()) == {2, 4}  # clumpy, irregular
    lines = [ln for b in _blocks("bash", path) for ln in b.splitlines() if "bin/probcat " in ln]
    assert len(lines) == 3
    _assert_commands_exist(lines, capsys)
