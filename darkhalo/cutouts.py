"""Legacy Survey cutout client: FITS grz stamps over HTTP, with retries, timeouts and a checksummed cache.

One request per target::

    {base_url}?ra={ra}&dec={dec}&layer=ls-dr10&pixscale=0.262&size=64&bands=grz[&invvar]

The service answers a FITS file whose primary HDU is the (bands, size, size)
image in nanomaggies (at pixscale 0.262, DR10 coadd units) with ``BAND<i>``
header keys naming the band of plane i; with ``&invvar`` an extra image HDU
holds the inverse variance (nmgy^-2) in the same layout.  Where a band has no
data the service returns zeros: such a band (all zero image and invvar) is
reported missing.

Retries: timeouts, connection errors, truncated or unreadable FITS, HTTP 429
and 5xx are retried ``retries`` times with exponential backoff; other HTTP
errors (404, 400, ...) fail at once.  Every failure is a ``CutoutError``
naming the target, its URL and the reason.

Cache: ``<cache_dir>/<sha256(url)[:32]>.fits`` plus ``.json`` (url, sha256 and
size of the FITS bytes).  Both are written through a temporary file and a
rename, the FITS first, so a crash never leaves a readable half entry; an
entry is used only if its JSON exists and the bytes' sha256 matches, else it
is fetched again (counted as ``cache_refetched``).
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from tqdm import tqdm

from .outputs import atomic_write_bytes

DEFAULT_BASE_URL = "https://www.legacysurvey.org/viewer/cutout.fits"
RETRYABLE_HTTP = {429, 500, 502, 503, 504}
USER_AGENT = "darkhalo-cutouts/1 (Dark Halo Scope)"


@dataclass(frozen=True)
class CutoutConfig:
    """Where and how to fetch cutouts (``hard_negatives.galaxy_zoo.cutout`` / ``anchors.cutout`` params)."""

    base_url: str = DEFAULT_BASE_URL
    layer: str = "ls-dr10"
    bands: str = "grz"
    pixscale_arcsec: float = 0.262
    size_pix: int = 64
    invvar: bool = True
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0
    workers: int = 4


CUTOUT_RULES = {"size_pix": (lambda v: v >= 16, "must be >= 16"), "pixscale_arcsec": (lambda v: v > 0, "must be > 0"),
                "timeout_s": (lambda v: v > 0, "must be > 0"), "retries": (lambda v: v >= 0, "must be >= 0"),
                "backoff_s": (lambda v: v >= 0, "must be >= 0"), "workers": (lambda v: v > 0, "must be > 0"),
                "bands": (lambda v: v == "grz", "must be 'grz'")}


class CutoutError(RuntimeError):
    """A target whose cutout could not be had; ``reason`` is a short code, the message says everything."""

    def __init__(self, name: str, url: str, reason: str, detail: str):
        super().__init__(f"cutout {name!r}: {reason}: {detail} (URL {url})")
        self.name, self.url, self.reason = name, url, reason


@dataclass(frozen=True)
class Cutout:
    """One target's pixels: ``image``/``invvar`` (3, S, S) float32 in grz order, NaN where a band is missing."""

    name: str
    ra_deg: float
    dec_deg: float
    image: np.ndarray
    invvar: np.ndarray
    present: np.ndarray       # (3,) bool: band has data
    has_invvar: np.ndarray    # (3,) bool: invvar came from the service
    url: str
    sha256: str
    from_cache: bool

    def invvar_or_estimate(self) -> np.ndarray:
        """A copy of ``invvar`` where each present band without a service invvar gets a constant
        1/sigma^2 from its pixels' 1.4826·MAD (nmgy^-2; 0 where that is not positive)."""
        invvar = self.invvar.copy()
        for j in range(3):
            if self.present[j] and not self.has_invvar[j]:
                pix = self.image[j][np.isfinite(self.image[j])]
                sigma = 1.4826 * np.median(np.abs(pix - np.median(pix))) if pix.size else np.nan
                invvar[j] = 1.0 / sigma**2 if sigma > 0 else 0.0
        return invvar


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def parse_cutout_fits(data: bytes, bands: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, invvar, present, has_invvar) in grz order from the bytes of a cutout FITS file.

    Raises ValueError on bytes that are not such a file (unreadable FITS, wrong shape, unknown band).
    """
    if len(data) == 0 or len(data) % 2880:
        raise ValueError(f"not a complete FITS file ({len(data)} bytes, not a multiple of 2880: truncated?)")
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdus:
            hdus.verify("exception")
            planes = [(h.header, np.asarray(h.data, dtype=np.float32)) for h in hdus
                      if h.data is not None and getattr(h, "is_image", False)]
    except (OSError, ValueError, TypeError, fits.VerifyError, IndexError) as exc:
        raise ValueError(f"not a readable FITS file ({exc})") from exc
    if not planes:
        raise ValueError("FITS file has no image data")
    n_band = len(bands)

    def as_cube(arr):
        cube = arr[None] if arr.ndim == 2 else arr
        if cube.shape != (n_band, size, size):
            raise ValueError(f"image shape {arr.shape}, expected ({n_band}, {size}, {size})")
        return cube

    header, image = planes[0]
    image = as_cube(image)
    order = [str(header.get(f"BAND{i}", bands[i])).strip().lower() for i in range(n_band)]
    ivar_planes = [p for h, p in planes[1:] if "IVAR" in str(h.get("EXTNAME", "")).upper() or
                   "INVVAR" in str(h.get("EXTNAME", "")).upper()] or [p for _, p in planes[1:2]]
    invvar_cube = as_cube(ivar_planes[0]) if ivar_planes else None
    out_image = np.full((3, size, size), np.nan, np.float32)
    out_ivar = np.full((3, size, size), np.nan, np.float32)
    present = np.zeros(3, bool)
    has_ivar = np.zeros(3, bool)
    for i, band in enumerate(order):
        if band not in "grz" or len(band) != 1:
            raise ValueError(f"plane {i} is band {band!r}, expected one of g, r, z")
        j = "grz".index(band)
        blank = not np.any(image[i]) and (invvar_cube is None or not np.any(invvar_cube[i]))
        if blank:
            continue
        out_image[j] = image[i]
        present[j] = True
        if invvar_cube is not None:
            out_ivar[j] = invvar_cube[i]
            has_ivar[j] = True
    return out_image, out_ivar, present, has_ivar


class CutoutClient:
    """Fetch cutouts through the checksummed on-disk cache (module docstring)."""

    def __init__(self, config: CutoutConfig, cache_dir: str | Path):
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.stats = {"fetched": 0, "from_cache": 0, "retries": 0, "cache_refetched": 0, "failed": 0}
        self._lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def url(self, ra_deg: float, dec_deg: float) -> str:
        """Request URL of a target (positions in degrees, 7 decimals ~ 0.4 mas)."""
        c = self.config
        query = {"ra": f"{ra_deg:.7f}", "dec": f"{dec_deg:.7f}", "layer": c.layer,
                 "pixscale": f"{c.pixscale_arcsec:g}", "size": str(c.size_pix), "bands": c.bands}
        url = f"{c.base_url}?{urllib.parse.urlencode(query)}"
        return url + "&invvar" if c.invvar else url

    def cache_paths(self, url: str) -> tuple[Path, Path]:
        """(FITS, JSON) cache entry of a URL."""
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
        return self.cache_dir / f"{key}.fits", self.cache_dir / f"{key}.json"

    def _cached(self, url: str) -> bytes | None:
        data_path, meta_path = self.cache_paths(url)
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        data = data_path.read_bytes() if data_path.exists() else b""
        if meta.get("url") != url or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            meta_path.unlink()
            if data_path.exists():
                data_path.unlink()
            self._count("cache_refetched")
            return None
        return data

    def _download(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # the error response holds an open socket
            if exc.code in RETRYABLE_HTTP:
                raise _Retryable(f"http_{exc.code}", f"HTTP {exc.code} {exc.reason}") from exc
            raise
        except (TimeoutError, socket.timeout) as exc:
            raise _Retryable("timeout", f"no answer within {self.config.timeout_s:g} s") from exc
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable("timeout", f"no answer within {self.config.timeout_s:g} s") from exc
            raise _Retryable("connection", f"{type(exc).__name__}: {reason}") from exc

    def fetch(self, ra_deg: float, dec_deg: float, name: str) -> Cutout:
        """The cutout of one target (from the cache if a valid entry exists); raises CutoutError."""
        c = self.config
        url = self.url(ra_deg, dec_deg)
        data = self._cached(url)
        from_cache = data is not None
        last: _Retryable | None = None
        if data is None:
            for attempt in range(c.retries + 1):
                if attempt:
                    self._count("retries")
                    time.sleep(c.backoff_s * 2 ** (attempt - 1))
                try:
                    data = self._download(url)
                    parse_cutout_fits(data, c.bands, c.size_pix)
                    break
                except urllib.error.HTTPError as exc:
                    self._count("failed")
                    raise CutoutError(name, url, f"http_{exc.code}", f"HTTP {exc.code} {exc.reason}") from exc
                except _Retryable as exc:
                    last, data = exc, None
                except ValueError as exc:
                    last, data = _Retryable("corrupt_fits", str(exc)), None
            if data is None:
                self._count("failed")
                raise CutoutError(name, url, last.reason, f"{last} (after {c.retries + 1} attempts)")
            digest = hashlib.sha256(data).hexdigest()
            data_path, meta_path = self.cache_paths(url)
            atomic_write_bytes(data_path, data)
            atomic_write_bytes(meta_path, json.dumps({"url": url, "sha256": digest, "bytes": len(data)},
                                                     sort_keys=True).encode("utf-8"))
            self._count("fetched")
        else:
            self._count("from_cache")
        image, invvar, present, has_ivar = parse_cutout_fits(data, c.bands, c.size_pix)
        return Cutout(name, float(ra_deg), float(dec_deg), image, invvar, present, has_ivar, url,
                      hashlib.sha256(data).hexdigest(), from_cache)

    def fetch_many(self, targets: list[tuple[str, float, float]], desc: str = "cutouts"
                   ) -> tuple[dict[str, Cutout], list[CutoutError]]:
        """Fetch (name, ra_deg, dec_deg) targets with ``workers`` threads.

        Returns (cutouts by name, failures); every target is in exactly one of them.
        """
        def one(target):
            name, ra, dec = target
            try:
                return self.fetch(ra, dec, name)
            except CutoutError as exc:
                return exc

        results, failures = {}, []
        with ThreadPoolExecutor(max_workers=max(1, self.config.workers)) as pool:
            for out in tqdm(pool.map(one, targets), total=len(targets), desc=desc, unit="cutout"):
                if isinstance(out, CutoutError):
                    failures.append(out)
                else:
                    results[out.name] = out
        return results, failures
