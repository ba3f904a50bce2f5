"""The Legacy Survey cutout client against a local HTTP server on 127.0.0.1 serving FITS fixtures."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from conftest import cutout_fits_bytes
from darkhalo.io.cutouts import CutoutClient, CutoutConfig, CutoutError, parse_cutout_fits

PATH = "/viewer/cutout.fits"


def fixture_cube(seed=1, size=64):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 0.01, (3, size, size)).astype(np.float32)
    image[:, 30:34, 30:34] += np.array([0.2, 0.5, 0.9], np.float32)[:, None, None]
    invvar = np.full((3, size, size), 1e4, np.float32)
    return image, invvar


def client_for(base_url, cache, **overrides):
    settings = {"timeout_s": 0.5, "retries": 2, "backoff_s": 0.01, "workers": 2, **overrides}
    config = CutoutConfig(base_url=base_url + PATH, **settings)
    return CutoutClient(config, cache)


def cache_files(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_success_is_cached_with_checksum_and_served_from_cache(local_http_server, tmp_path):
    image, invvar = fixture_cube()
    base, routes = local_http_server({PATH: [(200, cutout_fits_bytes(image, invvar), 0.0)]})
    cache = tmp_path / "cache"
    client = client_for(base, cache)
    first = client.fetch(150.1, 2.2, "lens-1")
    np.testing.assert_array_equal(first.image, image)
    np.testing.assert_array_equal(first.invvar, invvar)
    assert first.present.all() and first.has_invvar.all() and not first.from_cache
    assert "ra=150.1000000" in first.url and "layer=ls-dr10" in first.url and "pixscale=0.262" in first.url
    files = cache_files(cache)
    assert len(files) == 2 and {f.rsplit(".", 1)[1] for f in files} == {"fits", "json"}
    meta = json.loads(next(cache.glob("*.json")).read_text())
    assert meta["url"] == first.url and meta["sha256"] == first.sha256
    second = client.fetch(150.1, 2.2, "lens-1")
    assert second.from_cache and routes[PATH].hits == 1
    np.testing.assert_array_equal(second.image, image)
    # a cache entry whose bytes no longer match their checksum is fetched again
    next(cache.glob("*.fits")).write_bytes(b"tampered")
    third = client.fetch(150.1, 2.2, "lens-1")
    assert not third.from_cache and routes[PATH].hits == 2 and client.stats["cache_refetched"] == 1
    np.testing.assert_array_equal(third.image, image)


def test_404_fails_at_once_naming_the_target_and_caches_nothing(local_http_server, tmp_path):
    base, routes = local_http_server({PATH: [(404, b"no such cutout", 0.0)]})
    cache = tmp_path / "cache"
    with pytest.raises(CutoutError, match=r"cutout 'SDSSJ0000\+0000': http_404: HTTP 404") as err:
        client_for(base, cache).fetch(0.0, 0.0, "SDSSJ0000+0000")
    assert err.value.reason == "http_404" and routes[PATH].hits == 1   # no retry on 404
    assert cache_files(cache) == []


def test_timeout_is_retried_then_succeeds(local_http_server, tmp_path):
    image, invvar = fixture_cube(2)
    good = cutout_fits_bytes(image, invvar)
    base, routes = local_http_server({PATH: [(200, good, 1.5), (200, good, 0.0)]})
    cache = tmp_path / "cache"
    client = client_for(base, cache)
    cut = client.fetch(10.0, -5.0, "slow")
    assert routes[PATH].hits == 2 and client.stats["retries"] == 1
    np.testing.assert_array_equal(cut.image, image)
    assert len(cache_files(cache)) == 2


def test_timeout_every_time_fails_after_the_retries_and_caches_nothing(local_http_server, tmp_path):
    image, invvar = fixture_cube(3)
    base, routes = local_http_server({PATH: [(200, cutout_fits_bytes(image, invvar), 1.5)]})
    cache = tmp_path / "cache"
    with pytest.raises(CutoutError, match=r"'never': timeout: no answer within 0.5 s \(after 3 attempts\)"):
        client_for(base, cache).fetch(10.0, -5.0, "never")
    assert routes[PATH].hits == 3 and cache_files(cache) == []


def test_corrupt_fits_is_an_error_and_nothing_is_half_written(local_http_server, tmp_path):
    image, invvar = fixture_cube(4)
    truncated = cutout_fits_bytes(image, invvar)[:5000]
    base, routes = local_http_server({PATH: [(200, b"SIMPLE  =  garbage" * 50, 0.0), (200, truncated, 0.0)]})
    cache = tmp_path / "cache"
    with pytest.raises(CutoutError, match=r"'broken': corrupt_fits: .*after 3 attempts") as err:
        client_for(base, cache).fetch(1.0, 1.0, "broken")
    assert err.value.reason == "corrupt_fits" and routes[PATH].hits == 3
    assert cache_files(cache) == []   # no entry, no temporary file


def test_fetch_many_reports_each_failed_target(local_http_server, tmp_path):
    image, invvar = fixture_cube(5)
    base, _ = local_http_server({PATH: [(200, cutout_fits_bytes(image, invvar), 0.0)],
                                 "/other/cutout.fits": [(404, b"", 0.0)]})
    ok_client = client_for(base, tmp_path / "c1")
    got, failed = ok_client.fetch_many([("a", 1.0, 1.0), ("b", 2.0, 2.0)])
    assert sorted(got) == ["a", "b"] and failed == []
    bad_client = CutoutClient(CutoutConfig(base_url=base + "/other/cutout.fits", timeout_s=0.5, retries=1,
                                           backoff_s=0.01), tmp_path / "c2")
    got, failed = bad_client.fetch_many([("x", 1.0, 1.0), ("y", 2.0, 2.0)])
    assert got == {} and sorted(f.name for f in failed) == ["x", "y"]
    assert all(f.reason == "http_404" for f in failed)


def test_parse_reads_band_order_from_the_header_and_flags_blank_bands():
    image, invvar = fixture_cube(6)
    image[1] = 0.0
    invvar[1] = 0.0
    data = cutout_fits_bytes(image[[2, 0, 1]], invvar[[2, 0, 1]], bands="zgr")
    out_image, out_ivar, present, has_ivar = parse_cutout_fits(data, "grz", 64)
    assert present.tolist() == [True, False, True]
    np.testing.assert_array_equal(out_image[0], image[0])
    np.testing.assert_array_equal(out_image[2], image[2])
    assert np.isnan(out_image[1]).all()
    with pytest.raises(ValueError, match=r"image shape \(3, 32, 32\), expected \(3, 64, 64\)"):
        parse_cutout_fits(cutout_fits_bytes(np.zeros((3, 32, 32))), "grz", 64)


# --- issue 13: corrupt cache entries, deadline, size cap, capped backoff and Retry-After ------------------------

def _cached_client(local_http_server, tmp_path, seed):
    """(client, routes, image) after one successful fetch of target 'c' at (5, 5): its cache entry exists."""
    image, invvar = fixture_cube(seed)
    base, routes = local_http_server({PATH: [(200, cutout_fits_bytes(image, invvar), 0.0)]})
    client = client_for(base, tmp_path / "cache")
    client.fetch(5.0, 5.0, "c")
    return client, routes, image


def test_corrupt_cache_json_is_evicted_and_refetched(local_http_server, tmp_path):
    client, routes, image = _cached_client(local_http_server, tmp_path, 7)
    next((tmp_path / "cache").glob("*.json")).write_bytes(b'{"url": "trunc')
    cut = client.fetch(5.0, 5.0, "c")
    assert not cut.from_cache and routes[PATH].hits == 2 and client.stats["cache_refetched"] == 1
    np.testing.assert_array_equal(cut.image, image)
    assert json.loads(next((tmp_path / "cache").glob("*.json")).read_text())["sha256"] == cut.sha256


def test_cached_file_that_is_not_fits_is_evicted_and_refetched(local_http_server, tmp_path):
    client, routes, image = _cached_client(local_http_server, tmp_path, 8)
    # an entry consistent with its JSON (checksum matches) whose bytes are not a cutout FITS
    import hashlib
    html = b"<html>rate limited</html>"
    next((tmp_path / "cache").glob("*.fits")).write_bytes(html)
    meta_path = next((tmp_path / "cache").glob("*.json"))
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "sha256": hashlib.sha256(html).hexdigest(), "bytes": len(html)}))
    cut = client.fetch(5.0, 5.0, "c")
    assert not cut.from_cache and routes[PATH].hits == 2 and client.stats["cache_refetched"] == 1
    np.testing.assert_array_equal(cut.image, image)
    assert client.fetch(5.0, 5.0, "c").from_cache


def test_unreadable_cache_is_a_named_counted_error_in_fetch_many(local_http_server, tmp_path):
    image, invvar = fixture_cube(9)
    base, _ = local_http_server({PATH: [(200, cutout_fits_bytes(image, invvar), 0.0)]})
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache directory should be")
    got, failed = client_for(base, cache).fetch_many([("t1", 1.5, -2.25)])
    assert got == {} and len(failed) == 1 and failed[0].name == "t1"
    assert "cutout 't1'" in str(failed[0]) and "ra 1.5000000 deg, dec -2.2500000 deg" in str(failed[0])


def test_dripping_server_fails_within_the_deadline(local_http_server, tmp_path):
    from conftest import _Route

    image, invvar = fixture_cube(10)
    base, _ = local_http_server({PATH: _Route([(200, cutout_fits_bytes(image, invvar), 0.0)], drip_s=0.3)})
    client = client_for(base, tmp_path / "cache", deadline_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(CutoutError, match=r"'drip': deadline: answer still arriving after deadline_s 1 s") as err:
        client.fetch(3.0, 3.0, "drip")
    assert time.monotonic() - t0 < 1.0 + 0.5 + 0.5   # deadline + one socket timeout + margin
    assert err.value.reason == "deadline" and client.stats["failed"] == 1 and cache_files(tmp_path / "cache") == []


def test_oversize_answer_fails_at_once(local_http_server, tmp_path):
    image, invvar = fixture_cube(11)
    base, routes = local_http_server({PATH: [(200, cutout_fits_bytes(image, invvar), 0.0)]})
    client = client_for(base, tmp_path / "cache", max_bytes=50_000)
    with pytest.raises(CutoutError, match=r"'big': too_large: answer of \d+ bytes \(Content-Length\) exceeds "
                                          r"max_bytes 50000"):
        client.fetch(3.0, 3.0, "big")
    assert routes[PATH].hits == 1 and cache_files(tmp_path / "cache") == []


def test_retry_after_is_honoured(local_http_server, tmp_path):
    from conftest import _Route

    image, invvar = fixture_cube(12)
    good = cutout_fits_bytes(image, invvar)
    base, routes = local_http_server({PATH: _Route([(503, b"busy", 0.0), (200, good, 0.0)],
                                                   headers={"Retry-After": "0.4"})})
    client = client_for(base, tmp_path / "cache")            # backoff_s 0.01: only Retry-After makes it wait
    t0 = time.monotonic()
    cut = client.fetch(4.0, 4.0, "busy")
    assert time.monotonic() - t0 >= 0.4 and routes[PATH].hits == 2 and client.stats["retries"] == 1
    np.testing.assert_array_equal(cut.image, image)


def test_retry_after_beyond_the_deadline_fails_at_once(local_http_server, tmp_path):
    from conftest import _Route

    base, routes = local_http_server({PATH: _Route([(429, b"slow down", 0.0)], headers={"Retry-After": "120"})})
    client = client_for(base, tmp_path / "cache", deadline_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(CutoutError, match=r"'rl': http_429: HTTP 429 .*next try \(in 120 s\) would pass "
                                          r"deadline_s 5 s"):
        client.fetch(4.0, 4.0, "rl")
    assert time.monotonic() - t0 < 2.0 and routes[PATH].hits == 1


def test_backoff_is_capped(local_http_server, tmp_path):
    base, routes = local_http_server({PATH: [(503, b"down", 0.0)]})
    # uncapped: 0.4 + 0.8 + 1.6 = 2.8 s of waits; capped at 0.05 s: 0.15 s
    client = client_for(base, tmp_path / "cache", retries=3, backoff_s=0.4, max_backoff_s=0.05)
    assert [client._wait_s(k, _failure()) for k in (1, 2, 3)] == [0.05, 0.05, 0.05]
    t0 = time.monotonic()
    with pytest.raises(CutoutError, match=r"http_503: .*after 4 attempts"):
        client.fetch(4.0, 4.0, "down")
    assert time.monotonic() - t0 < 1.5 and routes[PATH].hits == 4


def _failure():
    from darkhalo.io.cutouts import _Failure

    return _Failure("http_503", "HTTP 503")
