"""Map a pure per-shard function over shards in a local process pool, with a progress bar."""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Iterable

from tqdm import tqdm


def map_shards(fn: Callable[..., Any], shard_args: Iterable[tuple], workers: int, desc: str) -> list:
    """``[fn(*args) for args in shard_args]`` in shard order, over ``workers`` processes.

    Results are returned in input order whatever the completion order, so the
    outcome is independent of ``workers``.
    """
    shard_args = list(shard_args)
    with tqdm(total=len(shard_args), desc=desc, unit="shard") as bar:
        if workers <= 1 or len(shard_args) <= 1:
            results = []
            for args in shard_args:
                results.append(fn(*args))
                bar.update()
            return results
        with multiprocessing.get_context("spawn").Pool(min(workers, len(shard_args))) as pool:
            pending = [pool.apply_async(fn, args) for args in shard_args]
            results = []
            for job in pending:
                results.append(job.get())
                bar.update()
            return results
