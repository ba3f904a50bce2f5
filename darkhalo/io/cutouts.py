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
and 5xx are retried ``retries`` times with exponential backoff
(``backoff_s`` doubling, capped at ``max_backoff_s``), or after the server's
``Retry-After`` where it sends one (honoured as asked, never shortened); other
HTTP errors (404, 400, ...) fail at once.  Limits: ``timeout_s`` per socket
operation, ``deadline_s`` for the whole cutout (all attempts and waits: a
server dripping bytes, or a Retry-After beyond it, fails the target) and
``max_bytes`` per answer (Content-Length or bytes read).  Every failure,
including a cache entry that cannot be read, is a ``CutoutError`` naming the
target (name, ra, dec), its URL and the reason, counted in ``stats["failed"]``.

Cache: ``<cache_dir>/<sha256(url)[:32]>.fits`` plus ``.json`` (url, sha256 and
size of the FITS bytes).  Both are written through a temporary file and a
rename, the FITS first, so a crash never leaves a readable half entry; an
entry is used only if its JSON exists and the bytes' sha256 matches, else it
is fetched again (counted as ``cache_refetched``); so is an entry whose JSON
is unreadable or whose bytes are not a cutout FITS (the entry is deleted).
"""
from __future__ import annotations

import email.utils
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

from darkhalo.core.outputs import atomic_write_bytes

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
    max_backoff_s: float = 30.0        # cap on one exponential backoff wait (s)
    deadline_s: float = 180.0          # whole cutout, all attempts and waits (s)
    max_bytes: int = 16_000_000        # largest answer accepted (bytes)
    workers: int = 4                   # fetch threads: runtime.cutout_workers (darkhalo/core/runtime.py), not a params key


# The keys a params ``cutout:`` mapping may hold (``workers`` comes from ``runtime.cutout_workers``).
CUTOUT_PARAM_KEYS = tuple(name for name in CutoutConfig.__dataclass_fields__ if name != "workers")


CUTOUT_RULES = {"size_pix": (lambda v: v >= 16, "must be >= 16"), "pixscale_arcsec": (lambda v: v > 0, "must be > 0"),
                "timeout_s": (lambda v: v > 0, "must be > 0"), "retries": (lambda v: v >= 0, "must be >= 0"),
                "backoff_s": (lambda v: v >= 0, "must be >= 0"),
                "max_backoff_s": (lambda v: v >= 0, "must be >= 0"), "deadline_s": (lambda v: v > 0, "must be > 0"),
                "max_bytes": (lambda v: v > 0, "must be > 0"),
                "bands": (lambda v: v == "grz", "must be 'grz'")}


class CutoutError(RuntimeError):
    """A target whose cutout could not be had; ``reason`` is a short code, the message says everything."""

    def __init__(self, name: str, ra_deg: float, dec_deg: float, url: str, reason: str, detail: str):
        super().__init__(f"cutout {name!r}: {reason}: {detail} (ra {ra_deg:.7f} deg, dec {dec_deg:.7f} deg; "
                         f"URL {url})")
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
        """A copy of ``invvar`` with estimates for present bands without a service invvar (``estimate_invvar``)."""
        return estimate_invvar(self.image, self.invvar, self.present, self.has_invvar)


def estimate_invvar(image: np.ndarray, invvar: np.ndarray, present: np.ndarray, has_invvar: np.ndarray) -> np.ndarray:
    """A copy of ``invvar`` (3, S, S) where each present band without a stored invvar gets a constant
    1/sigma^2 from its pixels' 1.4826·MAD (nmgy^-2; 0 where that is not positive)."""
    invvar = invvar.copy()
    for j in range(3):
        if present[j] and not has_invvar[j]:
            pix = image[j][np.isfinite(image[j])]
            sigma = 1.4826 * np.median(np.abs(pix - np.median(pix))) if pix.size else np.nan
            invvar[j] = 1.0 / sigma**2 if sigma > 0 else 0.0
    return invvar


class _Failure(Exception):
    """One failed attempt: ``retry`` says whether another may succeed; ``retry_after_s`` the server's wish (s)."""

    def __init__(self, reason: str, detail: str, retry: bool = True, retry_after_s: float | None = None):
        super().__init__(detail)
        self.reason, self.retry, self.retry_after_s = reason, retry, retry_after_s


def retry_after_s(value: str | None) -> float | None:
    """Seconds asked by a ``Retry-After`` header (delay-seconds or an HTTP date); None if absent/unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return _seconds_until_http_date(value)


def _seconds_until_http_date(value: str) -> float | None:
    """Seconds from now until an HTTP date (``Retry-After`` form); None if unreadable."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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

    def _evict(self, url: str) -> None:
        """Delete the cache entry of ``url`` (counted as ``cache_refetched``)."""
        for path in self.cache_paths(url):
            path.unlink(missing_ok=True)
        self._count("cache_refetched")

    def _cached(self, url: str) -> bytes | None:
        """Bytes of a valid cache entry, or None (an invalid or unreadable entry is evicted)."""
        data_path, meta_path = self.cache_paths(url)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = data_path.read_bytes() if data_path.exists() else b""
        except (OSError, ValueError):  # unreadable file, corrupt JSON
            meta, data = None, b""
        valid = isinstance(meta, dict) and meta.get("url") == url and \
            hashlib.sha256(data).hexdigest() == meta.get("sha256")
        if not valid:
            self._evict(url)
            return None
        return data

    def _download(self, url: str, deadline: float) -> bytes:
        """Body of one GET, read in pieces against ``deadline`` (time.monotonic) and ``max_bytes``."""
        c = self.config
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=min(c.timeout_s, max(deadline - time.monotonic(), 0.01))
                                        ) as response:
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > c.max_bytes:
                    raise _Failure("too_large", f"answer of {int(length)} bytes (Content-Length) exceeds "
                                                f"max_bytes {c.max_bytes}", retry=False)
                pieces, total = [], 0
                while piece := response.read1(65536):
                    total += len(piece)
                    if total > c.max_bytes:
                        raise _Failure("too_large", f"answer exceeds max_bytes {c.max_bytes}", retry=False)
                    if time.monotonic() > deadline:
                        raise _Failure("deadline", f"answer still arriving after deadline_s {c.deadline_s:g} s "
                                                   f"({total} bytes read)", retry=False)
                    pieces.append(piece)
                return b"".join(pieces)
        except urllib.error.HTTPError as exc:
            exc.close()  # the error response holds an open socket
            detail = f"HTTP {exc.code} {exc.reason}"
            if exc.code in RETRYABLE_HTTP:
                raise _Failure(f"http_{exc.code}", detail, retry_after_s=retry_after_s(exc.headers.get("Retry-After"))
                               ) from exc
            raise _Failure(f"http_{exc.code}", detail, retry=False) from exc
        except (TimeoutError, socket.timeout) as exc:
            raise _Failure("timeout", f"no answer within {c.timeout_s:g} s") from exc
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Failure("timeout", f"no answer within {c.timeout_s:g} s") from exc
            raise _Failure("connection", f"{type(exc).__name__}: {reason}") from exc

    def _wait_s(self, attempt: int, failure: _Failure) -> float:
        """Wait (s) before retry ``attempt`` (1, 2, ...): capped doubling backoff, or longer if Retry-After asks."""
        c = self.config
        wait = min(c.backoff_s * 2 ** (attempt - 1), c.max_backoff_s)
        return max(wait, failure.retry_after_s or 0.0)

    def _fetch_bytes(self, url: str) -> bytes:
        """Download and check the FITS bytes of ``url`` with retries; raises _Failure (the last one)."""
        c = self.config
        deadline = time.monotonic() + c.deadline_s
        for attempt in range(c.retries + 1):
            try:
                data = self._download(url, deadline)
                parse_cutout_fits(data, c.bands, c.size_pix)
                return data
            except _Failure as exc:
                last = exc
            except ValueError as exc:
                last = _Failure("corrupt_fits", str(exc))
            if not last.retry:
                raise last
            if attempt == c.retries:
                break
            wait = self._wait_s(attempt + 1, last)
            if time.monotonic() + wait > deadline:
                raise _Failure(last.reason, f"{last}; the next try (in {wait:g} s) would pass deadline_s "
                                            f"{c.deadline_s:g} s (after {attempt + 1} attempts)", retry=False)
            self._count("retries")
            time.sleep(wait)
        raise _Failure(last.reason, f"{last} (after {c.retries + 1} attempts)", retry=False)

    def fetch(self, ra_deg: float, dec_deg: float, name: str) -> Cutout:
        """The cutout of one target (from the cache if a valid entry exists); every failure is a CutoutError."""
        c = self.config
        url = self.url(ra_deg, dec_deg)
        try:
            data = self._cached(url)
            from_cache = data is not None
            parsed = None
            if from_cache:
                try:
                    parsed = parse_cutout_fits(data, c.bands, c.size_pix)
                except ValueError:  # a cached file that is not a cutout FITS
                    self._evict(url)
                    data, from_cache = None, False
            if data is None:
                data = self._fetch_bytes(url)
                data_path, meta_path = self.cache_paths(url)
                atomic_write_bytes(data_path, data)
                atomic_write_bytes(meta_path, json.dumps({"url": url, "sha256": hashlib.sha256(data).hexdigest(),
                                                          "bytes": len(data)}, sort_keys=True).encode("utf-8"))
                self._count("fetched")
            else:
                self._count("from_cache")
            image, invvar, present, has_ivar = parsed or parse_cutout_fits(data, c.bands, c.size_pix)
        except _Failure as exc:
            self._count("failed")
            raise CutoutError(name, ra_deg, dec_deg, url, exc.reason, str(exc)) from exc
        except (OSError, ValueError) as exc:  # cache directory I/O and the like
            self._count("failed")
            raise CutoutError(name, ra_deg, dec_deg, url, "error", f"{type(exc).__name__}: {exc}") from exc
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
