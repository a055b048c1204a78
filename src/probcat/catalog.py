"""Per-image catalogs (:class:`FullCatalog`): columns, FITS/Parquet I/O, WCS -> RA/Dec.

Positions are 0-indexed pixel coordinates with pixel centres at integers
(``image[..., y, x]``). Reading and writing catalogs needs numpy and astropy only; the
per-tile view lives in :mod:`probcat.tiles`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from probcat.errors import (
    ProbcatFileError,
    ProbcatIOError,
    ProbcatValueError,
    brief,
    warn_user,
)

__all__ = [
    "FullCatalog",
    "atomic_write",
    "check_writable_dir",
    "new_output_dir",
    "check_outputs",
    "make_wcs",
    "sky_positions",
    "concat_catalogs",
    "read_table",
]


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_table(path: str | Path, what: str = "table"):
    """A FITS or Parquet table (an astropy ``Table``) that a user gives, e.g. a catalog of
    known redshifts; an unreadable file is a one-line error that calls it ``what``."""
    from astropy.table import Table

    try:
        return Table.read(path)
    except Exception as e:  # astropy/pyarrow raise many unrelated types for bad files
        reason = brief(e)
        if reason.startswith("Format could not be identified"):  # astropy lists its formats
            reason = "the file is neither"
        raise ProbcatIOError(f"{path}: not a readable FITS or Parquet {what} ({reason})") from e


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
    except OSError as e:
        raise ProbcatIOError(f"{path.parent}: cannot write here ({e.strerror or e})") from e
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# the catalog files FullCatalog.write makes, by suffix (compared in lower case)
TABLE_SUFFIXES = (".fits", ".fit", ".fts", ".parquet", ".ecsv")


def check_writable_dir(out: str | Path) -> Path:
    """Create ``out`` if needed and check that files can be written there."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ProbcatValueError(f"{out}: is a file; give a directory for the output")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".probcat_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ProbcatValueError(
            f"{out}: output directory is not writable ({e.strerror or e})"
        ) from None
    return out


@contextlib.contextmanager
def new_output_dir(out: str | Path):
    """``out`` created if needed and checked (:func:`check_writable_dir`) for a block that
    checks the rest of its input before writing there: if the block fails, the directories
    made here are removed again while still empty, so a refused input leaves nothing."""
    out = Path(out)
    made, p = [], out.absolute()
    while not p.exists() and p != p.parent:
        made.append(p)  # deepest first
        p = p.parent
    check_writable_dir(out)
    try:
        yield out
    except BaseException:
        for d in made:
            try:
                d.rmdir()
            except OSError:  # no longer empty (or gone): leave it and its parents
                break
        raise


def check_outputs(outputs, inputs=(), suffixes: dict | None = None) -> None:
    """Before any work: every output path is not a directory, not one of the ``inputs``, in
    an existing writable directory, and (``suffixes``: path -> allowed suffixes) ends right."""
    for p in inputs:  # a missing input says so, not that an output would overwrite it
        if not Path(p).exists():
            raise ProbcatFileError(f"{p}: no such file")
    ins = {Path(p).resolve() for p in inputs}
    for out in outputs:
        out = Path(out)
        if out.is_dir():
            raise ProbcatValueError(f"{out}: is a directory; give a file name")
        if out.resolve() in ins:
            raise ProbcatValueError(f"{out}: the output would overwrite the input")
        allowed = (suffixes or {}).get(out)
        if allowed and out.suffix.lower() not in allowed:
            raise ProbcatValueError(f"{out}: the file name must end in {' or '.join(allowed)}")
        parent = out.parent if str(out.parent) else Path(".")
        if parent.exists() and not parent.is_dir():
            raise ProbcatValueError(f"{out}: {parent} is a file, not a directory")
        if not parent.is_dir():
            raise ProbcatValueError(f"{out}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise ProbcatValueError(f"{out}: directory {parent} is not writable")


def sky_positions(wcs, x, y, warn: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """ICRS right ascension and declination (degrees) of pixel positions ``x``, ``y``
    (0-indexed), from the celestial axes of ``wcs``.

    An ICRS WCS (``RADESYS = 'ICRS'``, astropy's default) is read as it is; any other frame
    astropy knows (FK5 or FK4 equatorial, galactic, ecliptic) is converted to ICRS. ``None``
    when there is no WCS, no celestial axes or a frame astropy cannot read (said in a
    warning when ``warn``): the catalog then has pixel positions only."""
    if wcs is None:
        return None
    if not getattr(wcs, "has_celestial", False):
        if warn:
            warn_user("the image's WCS has no celestial axes: catalog without ra/dec")
        return None
    cel = wcs.celestial
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return np.zeros(0), np.zeros(0)
    ctype = [str(c).upper() for c in cel.wcs.ctype]
    radesys = str(cel.wcs.radesys).strip().upper()
    if ctype[0].startswith("RA") and ctype[1].startswith("DEC") and radesys in ("ICRS", ""):
        ra, dec = cel.pixel_to_world_values(x, y)
        return np.asarray(ra, float), np.asarray(dec, float)
    from astropy.coordinates import SkyCoord

    try:
        coords = cel.pixel_to_world(x, y)  # a SkyCoord when astropy knows the frame
        icrs = coords.icrs if isinstance(coords, SkyCoord) else None
    except Exception:  # noqa: BLE001 - a frame astropy has no transformation for
        icrs = None
    if icrs is None:
        if warn:
            warn_user(
                f"the image's WCS ({ctype[0]}, {ctype[1]}) is in no sky frame that converts to "
                "ICRS: catalog with pixel positions only, no ra/dec",
            )
        return None
    return np.asarray(icrs.ra.deg, float), np.asarray(icrs.dec.deg, float)


def make_wcs(shape: tuple[int, int], pixel_scale: float, ra: float, dec: float) -> WCS:
    """A TAN WCS with north up and east left, centred on ``(ra, dec)`` degrees (``ra``
    taken modulo 360), for an image of ``shape`` ``(H, W)`` pixels of ``pixel_scale``
    arcsec. A shape that is not two positive sizes, a pixel scale that is not a positive
    number, or a ``dec`` outside [-90, 90] is a :class:`ProbcatValueError` (astropy takes
    them and gives positions that are NaN or nowhere)."""
    try:
        h, w = (int(v) for v in shape)
        ok = all(int(v) == v for v in shape) and h >= 1 and w >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ProbcatValueError(f"shape must be two positive pixel counts (H, W), got {shape!r}")
    values = {"pixel_scale": pixel_scale, "ra": ra, "dec": dec}
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
            raise ProbcatValueError(f"{name} must be a finite number, got {v!r}")
    if not pixel_scale > 0 or not -90 <= dec <= 90:
        raise ProbcatValueError(
            f"pixel_scale must be > 0 arcsec and dec in [-90, 90] degrees, got {pixel_scale} "
            f"and {dec}"
        )
    ra = float(ra) % 360.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(w + 1) / 2.0, (h + 1) / 2.0]
    scale = pixel_scale / 3600.0
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


@dataclass(frozen=True)
class FullCatalog:
    """Sources of one image: columns of equal length ``n``.

    Required columns: ``x``, ``y`` (pixels, float). Per-band columns (``flux``,
    ``mag``, ``snr``, ``blendedness``...) are 2-D ``(n, bands)``. Everything else is
    free-form (``galaxy`` bool, morphology, ``prob``...).

    Attributes:
        columns: name -> numpy array with first axis ``n``.
        image_shape: ``(H, W)`` of the image the catalog belongs to.
        bands: band names, order of the second axis of per-band columns.
        meta: JSON-serialisable provenance (config, seed, versions, counts...).
    """

    columns: dict[str, np.ndarray]
    image_shape: tuple[int, int]
    bands: tuple[str, ...] = ("i",)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for req in ("x", "y"):
            if req not in self.columns:
                raise ProbcatValueError(f"a catalog needs column {req!r}")
        n = len(self.columns["x"])
        for k, v in self.columns.items():
            if len(v) != n:
                raise ProbcatValueError(f"column {k!r} has length {len(v)}, expected {n}")

    def __len__(self) -> int:
        return len(self.columns["x"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def colnames(self) -> list[str]:
        return list(self.columns)

    def select(self, index) -> FullCatalog:
        """Rows chosen by a boolean mask or integer index."""
        return FullCatalog(
            {k: v[index] for k, v in self.columns.items()},
            self.image_shape,
            self.bands,
            dict(self.meta),
        )

    def with_columns(self, **cols) -> FullCatalog:
        return FullCatalog({**self.columns, **cols}, self.image_shape, self.bands, dict(self.meta))

    @classmethod
    def empty(cls, image_shape, bands=("i",), **meta) -> FullCatalog:
        return cls({"x": np.zeros(0), "y": np.zeros(0)}, tuple(image_shape), tuple(bands), meta)

    # ---- tables and files -------------------------------------------------------------
    def to_table(self, wcs: WCS | None = None) -> Table:
        """An astropy Table; with a WCS, ``ra`` and ``dec`` (ICRS degrees,
        :func:`sky_positions`) are added."""
        t = Table({k: np.asarray(v) for k, v in self.columns.items()})
        sky = sky_positions(wcs, self["x"], self["y"], warn=False)  # said when read
        if sky is not None:
            t["ra"], t["dec"] = sky
        flux_unit = (self.meta.get("input") or {}).get("flux_unit", "electron")
        for name in t.colnames:
            unit = column_unit(name, flux_unit)
            if unit is not None:
                t[name].unit = unit
        t.meta["SHAPE"] = json.dumps(list(self.image_shape))
        t.meta["BANDS"] = json.dumps(list(self.bands))
        t.meta["PCMETA"] = json.dumps(self.meta, default=str)
        return t

    @classmethod
    def from_table(cls, t: Table) -> FullCatalog:
        meta = {k.lower(): v for k, v in t.meta.items()}
        try:
            shape = tuple(json.loads(meta["shape"]))
            bands = tuple(json.loads(meta["bands"]))
            extra = json.loads(meta.get("pcmeta", "{}"))
        except (KeyError, json.JSONDecodeError) as e:
            raise ProbcatValueError(f"table is not a probcat catalog (metadata {e})") from e
        cols = {k: _native(np.asarray(t[k])) for k in t.colnames}
        return cls(cols, shape, bands, extra)

    def write(self, path: str | Path, wcs: WCS | None = None) -> Path:
        """Write atomically as FITS (``.fits``, ``.fit``, ``.fts``), Parquet (``.parquet``,
        fixed-size lists) or ECSV (``.ecsv``: astropy's text table, units and metadata kept),
        by the file name's suffix in any case (:data:`TABLE_SUFFIXES`)."""
        path = Path(path)
        kind = path.suffix.lower()
        if kind not in TABLE_SUFFIXES:  # before any work on the table
            raise ProbcatValueError(
                f"{path}: catalog files end in {', '.join(TABLE_SUFFIXES[:-1])} or "
                f"{TABLE_SUFFIXES[-1]}"
            )
        table = self.to_table(wcs)
        if kind == ".parquet":
            return atomic_write(path, lambda tmp: _write_parquet(table, tmp))
        if kind == ".ecsv":
            return atomic_write(path, lambda tmp: _write_ecsv(table, tmp))

        def _w(tmp):  # FITS (.fits, .fit, .fts)
            # units as TUNITn strings: astropy drops those outside the FITS standard
            # (electron), which catalog readers show as written
            plain = table.copy(copy_data=False)
            units = {}
            for i, name in enumerate(plain.colnames, 1):
                if plain[name].unit is not None:
                    units[i] = plain[name].unit.to_string()
                    plain[name].unit = None
            hdu = fits.BinTableHDU(plain, name="CATALOG")
            for i, unit in units.items():
                hdu.header[f"TUNIT{i}"] = unit
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)

        return atomic_write(path, _w)

    def write_regions(self, path: str | Path, label: str = "prob", title: str = "") -> Path:
        """Write atomically a DS9 region file of the detections, in image coordinates
        (1-indexed, as DS9 counts pixels): a circle of the 5-px aperture per row, green for
        galaxies and cyan for stars (``galaxy``, else ``galaxy_prob >= 0.5``; white when
        neither is known), dashed where ``prob`` is below 0.9, labelled with the column
        ``label`` (e.g. ``"prob"``, ``"z_mode"``; none when the catalog lacks it)."""
        from probcat.measure import APERTURE_RADIUS

        path = Path(path)
        if path.suffix.lower() != ".reg":
            raise ProbcatValueError(f"{path}: DS9 region files end in .reg")
        if "galaxy" in self.columns:
            gal = np.asarray(self["galaxy"], bool)
        elif "galaxy_prob" in self.columns:
            gal = np.asarray(self["galaxy_prob"]) >= 0.5
        else:
            gal = None
        prob = np.asarray(self["prob"], float) if "prob" in self.columns else None
        text = np.asarray(self[label], float) if label in self.columns else None
        lines = [
            "# Region file format: DS9 version 4.1",
            f"# probcat detections{' of ' + title if title else ''}: green galaxies, cyan "
            "stars; dashed: prob < 0.9",
            'global color=green dashlist=6 3 width=1 font="helvetica 9 normal roman"',
            "image",
        ]
        for i, (x, y) in enumerate(zip(np.asarray(self["x"]), np.asarray(self["y"]))):
            opts = ["color=" + ("white" if gal is None else "green" if gal[i] else "cyan")]
            if prob is not None and prob[i] < 0.9:
                opts.append("dash=1")
            if text is not None and np.isfinite(text[i]):
                opts.append(f"text={{{text[i]:.2f}}}")
            lines.append(f"circle({x + 1:.3f},{y + 1:.3f},{APERTURE_RADIUS:g}) # {' '.join(opts)}")
        body = "\n".join(lines) + "\n"
        return atomic_write(path, lambda tmp: Path(tmp).write_text(body))

    @classmethod
    def read(cls, path: str | Path) -> FullCatalog:
        path = Path(path)
        if not path.exists():
            raise ProbcatFileError(f"{path}: no such catalog file")
        kind = path.suffix.lower()
        try:
            if kind == ".parquet":
                table = _read_parquet(path)
            elif kind == ".ecsv":
                table = _read_ecsv(path)
            else:
                with warnings.catch_warnings():  # TUNIT 'electron' is not a FITS unit
                    warnings.simplefilter("ignore", u.UnitsWarning)
                    table = Table.read(path, format="fits", hdu="CATALOG")
        except Exception as e:  # astropy/pyarrow raise many unrelated types for bad files
            raise ProbcatIOError(f"{path}: not a readable probcat catalog ({brief(e)})") from e
        return cls.from_table(table)

    # ---- tiles ----------------------------------------------------------------------
    def to_tiles(self, tile_size: int = 5, brightness: str = "flux"):
        """This catalog as a :class:`probcat.tiles.TileCatalog` (needs torch)."""
        from probcat.tiles import TileCatalog

        return TileCatalog.from_full([self], tile_size=tile_size, brightness=brightness)


def _native(a: np.ndarray) -> np.ndarray:
    """Native byte order (FITS stores big-endian)."""
    return a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder not in ("=", "|") else a


def _write_parquet(table: Table, path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays, names = [], []
    for name in table.colnames:
        col = np.asarray(table[name])
        if col.ndim == 1:
            arrays.append(pa.array(col))
        else:
            width = int(np.prod(col.shape[1:]))
            flat = pa.array(col.reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, width))
        names.append(name)
    meta = {k: str(v) for k, v in table.meta.items()}
    meta["probcat_shapes"] = json.dumps(
        {n: list(np.asarray(table[n]).shape[1:]) for n in table.colnames}
    )
    units = {n: table[n].unit.to_string() for n in table.colnames if table[n].unit is not None}
    meta["probcat_units"] = json.dumps(units)
    pt = pa.Table.from_arrays(arrays, names=names).replace_schema_metadata(meta)
    pq.write_table(pt, path)


def _read_parquet(path) -> Table:
    import pyarrow.parquet as pq

    pt = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (pt.schema.metadata or {}).items()}
    shapes = json.loads(meta.pop("probcat_shapes", "{}"))
    units = json.loads(meta.pop("probcat_units", "{}"))
    t = Table(meta=meta)
    for name in pt.column_names:
        col = pt.column(name).combine_chunks()
        shape = shapes.get(name, [])
        if shape:
            values = col.flatten().to_numpy(zero_copy_only=False)
            t[name] = values.reshape(len(col), *shape)
        else:
            t[name] = col.to_numpy(zero_copy_only=False)
        if name in units:
            t[name].unit = units[name]
    return t


def _write_ecsv(table: Table, path) -> None:
    """ECSV, astropy's text table. astropy cannot read back an empty column of arrays
    (``(0, k)``: "shape mismatch"), so a table without rows keeps each such column as an
    empty 1-D one and its per-row shape in the metadata (``probcat_shapes``)."""
    if len(table) == 0:
        shapes = {n: list(table[n].shape[1:]) for n in table.colnames if table[n].ndim > 1}
        if shapes:
            table = table.copy(copy_data=False)
            for name in shapes:
                unit = table[name].unit
                table[name] = np.zeros(0, table[name].dtype)
                table[name].unit = unit
            table.meta["probcat_shapes"] = json.dumps(shapes)
    table.write(path, format="ascii.ecsv", overwrite=True)


def _read_ecsv(path) -> Table:
    """A table written by :func:`_write_ecsv`, empty array columns given back their shape."""
    t = Table.read(path, format="ascii.ecsv")
    shapes = json.loads(t.meta.pop("probcat_shapes", "{}"))
    for name, shape in shapes.items():
        unit = t[name].unit
        t[name] = np.zeros((0, *shape), t[name].dtype)
        t[name].unit = unit
    return t


def as2d(a) -> np.ndarray:
    """``(n, k)`` float view of a column, also for empty catalogs."""
    a = np.asarray(a, float)
    return a.reshape(len(a), int(np.prod(a.shape[1:], dtype=int)))


PIXEL_COLUMNS = frozenset({"x", "y", "x_sd", "y_sd", "T"})


def column_unit(name: str, flux_unit: str = "electron"):
    """The unit of a catalog column (an astropy unit), or None (dimensionless, an index,
    a flag, or a flux unit astropy does not know): pixels for positions and sizes, degrees
    for ``ra``/``dec``, AB magnitudes, and ``flux_unit`` for fluxes (electrons, or the
    image's ``BUNIT``: ``FullCatalog.meta["input"]["flux_unit"]``)."""
    if name in PIXEL_COLUMNS:
        return u.pix
    if name in ("ra", "dec"):
        return u.deg
    if name == "mag" or name.startswith("mag_"):
        return u.mag
    if name == "flux" or name.startswith("flux_"):
        unit = u.Unit(flux_unit, parse_strict="silent")
        return None if isinstance(unit, u.UnrecognizedUnit) else unit
    return None


# columns that keep their band axis even for a single band
PER_BAND = frozenset({"flux", "mag", "snr", "blendedness"})


def concat_catalogs(cats: list[FullCatalog], index_column: str = "image") -> FullCatalog:
    """Stack catalogs (per image, or posterior samples) into one, with an index column."""
    if not cats:
        raise ProbcatValueError("nothing to concatenate")
    keys = cats[0].colnames
    cols = {k: np.concatenate([np.asarray(c[k]) for c in cats]) for k in keys}
    cols[index_column] = np.concatenate([np.full(len(c), i, np.int64) for i, c in enumerate(cats)])
    return FullCatalog(cols, cats[0].image_shape, cats[0].bands, dict(cats[0].meta))
