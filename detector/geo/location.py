"""Where a raster lives: a local file, or a location GDAL reads over the network.

A district keeps its mosaics on shared storage, an object store or a web server. The nightly
run and its Dask workers open the same location, so every input a run reads may be given as

* a local path (``/data/B.tif``, ``B.tif``);
* a URL: ``s3://bucket/key.tif``, ``gs://``, ``az://``, ``http(s)://host/path.tif``;
* a GDAL virtual file system path: ``/vsis3/bucket/key.tif``, ``/vsicurl/https://...``,
  ``/vsigs/``, ``/vsiaz/``, ``/vsizip/...``.

URLs are normalised to the GDAL form (``s3://b/k`` -> ``/vsis3/b/k``), which is what the log,
the run record and the QGIS project show, and what GDAL, QGIS and ``gdalinfo`` all take.
Credentials and endpoints come from GDAL's own environment variables (``AWS_*``, ``GS_*``,
``AZURE_*``, ``GDAL_HTTP_*``); buildwatch never stores them.

A :class:`RemotePath` is a ``str``: ``pathlib.Path`` would collapse ``https://`` to ``https:/``.
It has the few path attributes the pipeline uses (``name``, ``suffix``, ``exists()``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

#: URL scheme -> GDAL virtual file system prefix.
SCHEMES = {
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
    "http": "/vsicurl/http://",
    "https": "/vsicurl/https://",
}
#: GDAL network settings a run applies unless the environment sets them: a stalled server fails
#: the read after a bounded time (and retries) instead of hanging an unattended night.
NETWORK_DEFAULTS = {
    "GDAL_HTTP_CONNECTTIMEOUT": "20",
    "GDAL_HTTP_TIMEOUT": "120",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "2",
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)


class RemotePath(str):
    """A raster location GDAL opens over the network, in GDAL's ``/vsi...`` form."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def suffixes(self) -> list[str]:
        return Path(self.name).suffixes

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def is_absolute(self) -> bool:
        return True

    def is_dir(self) -> bool:
        return False

    def resolve(self) -> RemotePath:
        return self

    def exists(self) -> bool:
        """Whether GDAL can open it (a network round trip)."""
        import rasterio

        try:
            with rasterio.open(str(self)):
                return True
        except Exception:
            return False


def is_remote(value) -> bool:
    """True for what :func:`as_location` makes a :class:`RemotePath` (a URL other than ``file://``,
    or a GDAL ``/vsi...`` path, also one of a scheme it refuses); False for a local path."""
    if isinstance(value, RemotePath):
        return True
    if not isinstance(value, str):
        return False
    m = _URL.match(value)
    return value.startswith("/vsi") or (m is not None and m.group(1).lower() != "file")


def as_location(value) -> Path | RemotePath:
    """A local :class:`~pathlib.Path`, or the :class:`RemotePath` of a URL / ``/vsi`` path.

    Raises
    ------
    ValueError
        A URL scheme GDAL cannot read (``ftp://``, ``file://``): the message names the ones it can.
    """
    if isinstance(value, (RemotePath, Path)):
        return value
    value = str(value)
    if value.startswith("/vsi"):
        return RemotePath(value)
    m = _URL.match(value)
    if m is None:
        return Path(value)
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "file":
        return Path("/" + rest.lstrip("/"))
    if scheme not in SCHEMES:
        raise ValueError(
            f"{value}: {scheme}:// is not a location buildwatch reads; use a local path, "
            f"{', '.join(s + '://' for s in SCHEMES)} or a GDAL /vsi... path"
        )
    return RemotePath(SCHEMES[scheme] + rest)


def apply_network_defaults() -> None:
    """Put :data:`NETWORK_DEFAULTS` into ``os.environ`` where unset (worker processes inherit them)."""
    import os

    for key, value in NETWORK_DEFAULTS.items():
        os.environ.setdefault(key, value)


def location_fingerprint(location: Path | RemotePath) -> str:
    """A sha256 identifying a raster's content, for resume fingerprints and run records.

    A local file: the sha256 of its bytes. A remote one: reading every byte again over the
    network only to hash it would double the run's traffic, so the hash covers what GDAL reports
    (size, grid, CRS, types, nodata, overviews), every band of the coarsest overview (a re-flown
    mosaic differs there) and GDAL checksums of five full-resolution blocks (corners, centre).
    """
    from detector.fileio import file_sha256

    if not is_remote(location):
        return file_sha256(Path(location))
    import rasterio
    from rasterio.windows import Window

    h = hashlib.sha256()
    with rasterio.open(str(location)) as src:
        facts = {
            "location": str(location),
            "driver": src.driver,
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtypes": list(src.dtypes),
            "crs": src.crs.to_wkt() if src.crs else "",
            "transform": list(src.transform)[:6],
            "nodata": src.nodata,
            "overviews": src.overviews(1),
            "tags": src.tags(),
        }
        h.update(json.dumps(facts, sort_keys=True, default=str).encode())
        step = max(1, max(src.width, src.height) // 256)
        h.update(
            src.read(
                out_shape=(src.count, max(1, src.height // step), max(1, src.width // step))
            ).tobytes()
        )
        bh, bw = src.block_shapes[0]
        bw, bh = min(bw, src.width), min(bh, src.height)
        for col, row in (
            (0, 0),
            (src.width - bw, 0),
            (0, src.height - bh),
            (src.width - bw, src.height - bh),
            ((src.width - bw) // 2, (src.height - bh) // 2),
        ):
            window = Window(col, row, bw, bh)
            h.update(
                str([src.checksum(b, window=window) for b in range(1, src.count + 1)]).encode()
            )
    return h.hexdigest()
