"""Figures a user wants to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probcat.catalog import FullCatalog, atomic_write

__all__ = [
    "asinh_stretch", "field_overview", "detection_figure", "deblend_figure", "photoz_figure",
    "place_labels",
]  # fmt: skip


def _save(fig, path, dpi: int) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically, then close it (a figure left open
    stays in pyplot's memory for the rest of the session)."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def place_labels(ax, xy, labels, offset: float = 5.0, **text_kw) -> list:
    """Annotate the points ``xy`` (data coordinates) of ``ax`` with ``labels``, each at
    the first of four corners (upper right, upper left, lower right, lower left, ``offset``
    points from the point) where it lies inside the axes and overlaps no label placed
    before it (else the corner where it overlaps the fewest). Returns the texts."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    corners = [
        ((offset, offset), "left", "bottom"),
        ((-offset, offset), "right", "bottom"),
        ((offset, -offset), "left", "top"),
        ((-offset, -offset), "right", "top"),
    ]
    placed, boxes = [], []
    for (px, py), label in zip(xy, labels):
        best = None
        for dxy, ha, va in corners:
            t = ax.annotate(label, (px, py), xytext=dxy, textcoords="offset points",
                            ha=ha, va=va, **text_kw)  # fmt: skip
            box = t.get_window_extent(renderer)
            out = not (frame.x0 <= box.x0 and box.x1 <= frame.x1
                       and frame.y0 <= box.y0 and box.y1 <= frame.y1)  # fmt: skip
            cost = sum(box.overlaps(b) for b in boxes) + 0.5 * out
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, box)
            else:
                t.remove()
            if cost == 0:
                break
        placed.append(best[1])
        boxes.append(best[2])
    return placed


def asinh_stretch(image: np.ndarray, sigma: float, soften: float = 3.0) -> np.ndarray:
    """Display stretch for a background-subtracted image in units of its noise ``sigma``."""
    return np.arcsinh(np.asarray(image, float) / (soften * sigma))


def field_overview(
    path: str | Path,
    image: np.ndarray,
    sigma: float,
    truth: FullCatalog,
    title: str = "",
    zoom: int = 150,
) -> Path:
    """PNG: the field with true galaxies/stars marked, a zoom, and the magnitude/SNR
    distributions of the truth catalog. ``image`` is one band ``(H, W)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape
    fig = plt.figure(figsize=(15, 10), constrained_layout=True)
    gs = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(gs[:, :2])
    shown = asinh_stretch(image, sigma)
    ax.imshow(shown, origin="lower", cmap="gray_r", vmin=-1, vmax=np.percentile(shown, 99.7))
    gal = truth["galaxy"].astype(bool)
    ax.scatter(
        truth["x"][gal],
        truth["y"][gal],
        s=14,
        facecolors="none",
        edgecolors="tab:blue",
        lw=0.6,
        label=f"galaxies ({gal.sum()})",
    )
    ax.scatter(
        truth["x"][~gal],
        truth["y"][~gal],
        s=30,
        marker="*",
        color="tab:red",
        lw=0,
        label=f"stars ({(~gal).sum()})",
    )
    z0x, z0y = (w - zoom) // 2, (h - zoom) // 2
    ax.add_patch(plt.Rectangle((z0x - 0.5, z0y - 0.5), zoom, zoom, fill=False, ec="orange", lw=1.5))
    ax.set_title(title or f"simulated field {w}x{h} px, truth")
    ax.legend(loc="upper right", fontsize=9)
    ax.set_xlabel("x [pix]")
    ax.set_ylabel("y [pix]")

    az = fig.add_subplot(gs[0, 2])
    sub = shown[z0y : z0y + zoom, z0x : z0x + zoom]
    az.imshow(
        sub,
        origin="lower",
        cmap="gray_r",
        vmin=-1,
        vmax=np.percentile(sub, 99.7),
        extent=(z0x - 0.5, z0x + zoom - 0.5, z0y - 0.5, z0y + zoom - 0.5),
    )
    inz = (
        (truth["x"] >= z0x)
        & (truth["x"] < z0x + zoom)
        & (truth["y"] >= z0y)
        & (truth["y"] < z0y + zoom)
    )
    az.scatter(
        truth["x"][inz & gal],
        truth["y"][inz & gal],
        s=40,
        facecolors="none",
        edgecolors="tab:blue",
        lw=0.8,
    )
    az.scatter(truth["x"][inz & ~gal], truth["y"][inz & ~gal], s=60, marker="*", color="tab:red")
    az.set_title(f"zoom {zoom}x{zoom} px")

    ah = fig.add_subplot(gs[1, 2])
    mag = truth["mag"][:, 0]
    snr = truth["snr"][:, 0] if "snr" in truth else None
    bins = np.arange(17.5, 27.6, 0.5)
    ah.hist(mag[gal], bins, histtype="step", color="tab:blue", label="galaxies")
    ah.hist(mag[~gal], bins, histtype="step", color="tab:red", label="stars")
    ah.set_yscale("log")
    ah.set_xlabel(f"{truth.bands[0]} magnitude")
    ah.set_ylabel("sources")
    if snr is not None:
        ah.set_title(f"median SNR (eq. 12): {np.median(snr):.1f}; SNR>5: {(snr > 5).sum()}")
    ah.legend(fontsize=9)
    return _save(fig, path, 90)


def detection_figure(
    path: str | Path,
    image: np.ndarray,
    sigma: float,
    probcat_cat: FullCatalog,
    sep_cat: FullCatalog | None = None,
    truth: FullCatalog | None = None,
    title: str = "",
    zoom: int | None = None,
) -> Path:
    """PNG: panels truth / probcat (detections coloured by probability) / SEP on one band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape
    if zoom is not None and zoom < min(h, w):
        y0, x0 = (h - zoom) // 2, (w - zoom) // 2
        image = image[y0 : y0 + zoom, x0 : x0 + zoom]

        def crop(c):
            if c is None:
                return None
            m = (
                (c["x"] >= x0 - 0.5)
                & (c["x"] < x0 + zoom - 0.5)
                & (c["y"] >= y0 - 0.5)
                & (c["y"] < y0 + zoom - 0.5)
            )
            return c.select(m).with_columns(x=c["x"][m] - x0, y=c["y"][m] - y0)

        probcat_cat, sep_cat, truth = crop(probcat_cat), crop(sep_cat), crop(truth)
    panels = [("truth", truth), ("probcat", probcat_cat), ("SEP", sep_cat)]
    panels = [p for p in panels if p[1] is not None]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.2 * len(panels), 6.4), squeeze=False, constrained_layout=True
    )
    shown = asinh_stretch(image, sigma)
    vmax = np.percentile(shown, 99.7)
    for ax, (name, cat) in zip(axes[0], panels):
        ax.imshow(shown, origin="lower", cmap="gray_r", vmin=-1, vmax=vmax)
        if name == "probcat":
            norm = matplotlib.colors.Normalize(0.5, 1.0)
            ax.scatter(
                cat["x"],
                cat["y"],
                s=22,
                facecolors="none",
                lw=1.0,
                edgecolors=plt.cm.plasma(norm(cat["prob"])),
            )
            fig.colorbar(
                matplotlib.cm.ScalarMappable(norm, "plasma"),
                ax=ax,
                fraction=0.046,
                label="detection probability",
            )
        elif name == "truth":
            gal = cat["galaxy"].astype(bool)
            ax.scatter(
                cat["x"][gal], cat["y"][gal], s=16, facecolors="none", edgecolors="tab:blue", lw=0.7
            )
            ax.scatter(cat["x"][~gal], cat["y"][~gal], s=40, marker="*", color="tab:red", lw=0)
        else:
            ax.scatter(cat["x"], cat["y"], s=22, marker="x", color="tab:green", lw=0.8)
        ax.set_title(f"{name}: {len(cat)} sources")
    if title:
        fig.suptitle(title)
    return _save(fig, path, 80)


def deblend_figure(
    path: str | Path,
    image: np.ndarray,
    model: np.ndarray,
    sigma: float,
    catalog: FullCatalog,
    title: str = "",
    zoom: int | None = 200,
) -> Path:
    """PNG: data, deblended scene model and residual (in noise sigma) of one band, with the
    detections marked; the central ``zoom`` x ``zoom`` px of a large image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape
    x0 = y0 = 0
    if zoom is not None and zoom < min(h, w):
        y0, x0 = (h - zoom) // 2, (w - zoom) // 2
        image = image[y0 : y0 + zoom, x0 : x0 + zoom]
        model = model[y0 : y0 + zoom, x0 : x0 + zoom]
    x, y = catalog["x"] - x0, catalog["y"] - y0
    inside = (x > -0.5) & (x < image.shape[1] - 0.5) & (y > -0.5) & (y < image.shape[0] - 0.5)
    fig, axes = plt.subplots(1, 3, figsize=(17, 6), constrained_layout=True)
    shown = asinh_stretch(image, sigma)
    vmax = np.percentile(shown, 99.7)
    panels = (("data", shown), ("model (deblended sources)", asinh_stretch(model, sigma)))
    for ax, (name, img) in zip(axes[:2], panels):
        ax.imshow(img, origin="lower", cmap="gray_r", vmin=-1, vmax=vmax)
        ax.set_title(name)
    res = axes[2].imshow((image - model) / sigma, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
    fig.colorbar(res, ax=axes[2], fraction=0.046, label="residual / noise sigma")
    axes[2].set_title("residual (data - model)")
    for ax in axes:
        ax.scatter(x[inside], y[inside], s=12, marker="+", color="tab:orange", lw=0.7)
    if title:
        fig.suptitle(title)
    return _save(fig, path, 80)


def photoz_figure(
    path,
    image_sigma: np.ndarray,
    bands: tuple[str, ...],
    catalog,
    truth=None,
    *,
    zoom: int = 120,
    title: str = "",
) -> Path:
    """RGB (i, r, g) view of a multi-band field in noise-sigma units, and a zoom on its
    centre where every galaxy with a photo-z is labelled with its PDF mode and central 68%
    interval (and the true redshift of the nearest true galaxy within 2 px, when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import make_lupton_rgb
    from matplotlib import patheffects

    planes = [bands.index(b) for b in ("i", "r", "g")]
    rgb = make_lupton_rgb(*(image_sigma[k] for k in planes), stretch=8.0, Q=6.0, minimum=-1.0)
    h, w = image_sigma.shape[1:]
    zoom = min(zoom, h, w)
    x0, y0 = (w - zoom) // 2, (h - zoom) // 2
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.6))
    axes[0].imshow(rgb, origin="lower")
    axes[0].add_patch(plt.Rectangle((x0, y0), zoom, zoom, fill=False, ec="w", lw=1))
    axes[0].set_title("ugrizy field (i, r, g as RGB)")
    axes[1].imshow(
        rgb[y0 : y0 + zoom, x0 : x0 + zoom],
        origin="lower",
        extent=(x0 - 0.5, x0 + zoom - 0.5, y0 - 0.5, y0 + zoom - 0.5),
    )
    has = np.asarray(catalog["has_pz"], bool)
    x, y = np.asarray(catalog["x"]), np.asarray(catalog["y"])
    idx = np.flatnonzero(has & (x >= x0) & (x < x0 + zoom) & (y >= y0) & (y < y0 + zoom))
    labels = []
    for k in idx:
        label = (
            f"{catalog['z_mode'][k]:.2f} [{catalog['z_lo68'][k]:.2f}, {catalog['z_hi68'][k]:.2f}]"
        )
        if truth is not None and len(truth):
            d = np.hypot(np.asarray(truth["x"]) - x[k], np.asarray(truth["y"]) - y[k])
            j = int(np.argmin(d))
            if d[j] < 2 and bool(truth["galaxy"][j]):
                label = f"true {truth['redshift'][j]:.2f}\n" + label
        labels.append(label)
    axes[1].plot(x[idx], y[idx], "o", mfc="none", mec="yellow", ms=9, ls="none")
    axes[1].set_title("centre: photo-z mode [68% interval]" + (" and true z" if truth else ""))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()  # before the labels: they are placed in the final axes
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    place_labels(axes[1], zip(x[idx], y[idx]), labels, color="yellow", fontsize=7,
                 path_effects=outline)  # fmt: skip
    return _save(fig, path, 110)
