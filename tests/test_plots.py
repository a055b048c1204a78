"""Figure helpers: labels that neither overlap nor leave the axes; figures closed once
written."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from probcat.catalog import FullCatalog  # noqa: E402
from probcat.plots import detection_figure, photoz_figure, place_labels  # noqa: E402


def test_labels_of_close_points_do_not_overlap_and_stay_inside():
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(np.zeros((50, 50)), origin="lower")
    xy = [(25.0, 25.0), (26.0, 25.5), (25.5, 26.0), (48.5, 48.5)]  # three close, one corner
    texts = place_labels(ax, xy, ["0.81 [0.79, 0.83]"] * 4, fontsize=7)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    frame = ax.get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])
    assert texts[3].get_ha() == "right" and texts[3].get_va() == "top"  # the corner's
    assert texts[0].get_ha() == "left" and texts[0].get_va() == "bottom"  # the first choice
    assert len(ax.texts) == 4  # the corners tried and not kept are gone
    plt.close(fig)


def test_figures_are_closed_once_written(tmp_path):
    plt.close("all")
    rng = np.random.default_rng(0)
    cat = FullCatalog(
        {"x": np.array([10.0, 30.0]), "y": np.array([12.0, 20.0]), "prob": np.array([0.9, 0.6]),
         "galaxy": np.array([True, False]), "has_pz": np.array([True, True]),
         "z_mode": np.array([0.5, 1.2]), "z_lo68": np.array([0.4, 1.0]),
         "z_hi68": np.array([0.6, 1.4])},
        (40, 40), tuple("ugrizy"),
    )  # fmt: skip
    detection_figure(tmp_path / "d.png", rng.standard_normal((40, 40)), 1.0, cat)
    photoz_figure(tmp_path / "p.png", rng.standard_normal((6, 40, 40)), tuple("ugrizy"), cat)
    assert (tmp_path / "d.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0
    assert plt.get_fignums() == []
