"""Pool passes over row blocks on a few threads.

A cold pass over a 1M-row pool (the nearest-labeled search, the k-means assignment, FRE) reads
each row block from the float16 file, converts it and scores it with a handful of matrix products.
BLAS threads only the large products; the gathers, conversions, argmax/argpartition and the many
thin products of the inverted-list search ran on one core. numpy and BLAS release the GIL in all of
those, so ``for_each_block`` hands whole row blocks (read + score) to a small thread pool instead:

- the blocks are the same whatever the thread count (``block_rows``: at most ``BLOCK_ROWS`` rows),
  and each block's work is the same single-threaded code, so results do not depend on the thread
  count;
- each thread holds its own block (``BLOCK_ROWS x D`` float32 plus its float16 read), so memory
  grows with the thread count, not with the pool;
- while a pass runs, BLAS is held to one thread (``threadpoolctl``), with one worker too: two
  levels of threading would oversubscribe the cores, and OpenBLAS's threaded and unthreaded
  products differ in the last bit, which would make the result depend on the thread count. (On the
  inverted-list search's thin products, threaded OpenBLAS is also slower: 100,000 x 256 against
  6,000 lists rows took 1.2-1.4 s with BLAS on 2 threads, 0.37 s on 2 workers of 1 thread each);
- a pass started from inside a worker runs serially (no nested pools).

The thread count is the CPUs this process may run on (``os.sched_getaffinity``), overridden by the
``EDGE_AL_THREADS`` environment variable or the ``threads`` argument. ``EmbeddingSource.chunk`` and
``take`` are called from several threads at once: the sources here read with positional reads
(``pread``) or read-only mappings and keep no shared cursor.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from edge_al.config import env_values

from ._validation import check_int

__all__ = ["BLOCK_ROWS", "block_rows", "for_each_block", "thread_count"]

BLOCK_ROWS = 16384  # rows per block: 80 MB of float32 at 1,280 dims
THREADS_ENV = "EDGE_AL_THREADS"

_local = threading.local()


def thread_count(threads: int | None = None) -> int:
    """Threads for a pool pass: ``threads`` when given, else ``EDGE_AL_THREADS``, else the CPUs
    this process may run on."""
    if threads is not None:
        return check_int("threads", threads, low=1)
    env = env_values({"THREADS": int})  # the one EDGE_AL_* loader: a non-int is a clear ValueError
    if "THREADS" in env:
        return check_int(THREADS_ENV, env["THREADS"], low=1)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def block_rows(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """(start, stop) of the row blocks of an ``n``-row pass read ``chunk_size`` rows at a time:
    ``min(chunk_size, BLOCK_ROWS)`` rows each, the last one shorter."""
    step = max(1, min(int(chunk_size), BLOCK_ROWS))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit: object = None


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """BLAS held to one thread while any pass runs (the limit is process-wide: the first pass in
    sets it, the last one out restores it, so concurrent passes do not restore each other's)."""
    global _blas_users, _blas_limit
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a base dependency; without it BLAS may oversubscribe, results are the same
        yield
        return
    with _blas_lock:
        if _blas_users == 0:
            _blas_limit = threadpool_limits(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limit is not None:
                _blas_limit.restore_original_limits()  # type: ignore[attr-defined]
                _blas_limit = None


def for_each_block(fn: Callable[[int, int], None], n: int, chunk_size: int, *, threads: int | None = None) -> None:
    """Call ``fn(start, stop)`` for every block of ``block_rows(n, chunk_size)``, on up to
    ``thread_count(threads)`` threads. ``fn`` writes its results into disjoint slices of arrays
    the caller allocated. The first exception ``fn`` raises is raised here (blocks not started
    are cancelled)."""
    blocks = block_rows(n, chunk_size)
    workers = min(thread_count(threads), len(blocks))
    if getattr(_local, "worker", False):
        for s, e in blocks:
            fn(s, e)
        return

    def run(s: int, e: int) -> None:
        _local.worker = True
        try:
            fn(s, e)
        finally:
            _local.worker = False

    if workers <= 1:
        with _single_threaded_blas():
            for s, e in blocks:
                run(s, e)
        return
    with _single_threaded_blas(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge-al-pass") as pool:
        futures = [pool.submit(run, s, e) for s, e in blocks]
        try:
            for f in futures:
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
