"""Pool passes on several threads give what one thread gives (acquisition/parallel.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from edge_al.acquisition.cache import NoveltyCache
from edge_al.acquisition.coldstart import _assign_pool, _labeled_dist
from edge_al.acquisition.embeddings import ArrayEmbeddings
from edge_al.acquisition.index import NearestLabeled
from edge_al.acquisition.novelty import compute_novelty
from edge_al.acquisition.parallel import block_rows, for_each_block, thread_count
from tests.test_novelty_index import clustered


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return clustered(rng, 40000), clustered(rng, 3000)  # 3 search blocks, an inverted-list index


def test_search_is_the_same_on_one_and_two_threads(pool: tuple[np.ndarray, np.ndarray]) -> None:
    x, lab = pool
    index = NearestLabeled.build(lab)
    assert index.approximate_
    inv = np.full(x.shape[0], 0.5, dtype=np.float32)
    one = index.search(x, inv, threads=1)
    two = index.search(x, inv, threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_novelty_pass_is_the_same_on_one_and_two_threads(pool: tuple[np.ndarray, np.ndarray]) -> None:
    x, lab = pool
    probs = np.random.default_rng(1).dirichlet(np.ones(4), x.shape[0]).astype(np.float32)
    labels = np.arange(lab.shape[0]) % 4
    src = ArrayEmbeddings(x[:12000])
    one = compute_novelty(probs[:12000], src, lab, labels, chunk_size=1000, threads=1)
    two = compute_novelty(probs[:12000], src, lab, labels, chunk_size=1000, threads=2)
    for key in ("fre", "knn"):
        np.testing.assert_array_equal(one[key], two[key])


def test_cold_cache_build_is_the_same_on_one_and_two_threads(pool: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, lab = pool
    ids = np.arange(x.shape[0], dtype=np.int64) * 3
    lab_ids = np.arange(lab.shape[0], dtype=np.int64) + 10**6
    out = {}
    for t in (1, 2):
        cache = NoveltyCache(tmp_path / f"t{t}", chunk_size=5000, threads=t)
        out[t] = cache.knn(ids, ArrayEmbeddings(x), lab_ids, lab)
        with np.load(tmp_path / f"t{t}" / "projection.npz") as z:
            out[(t, "z")], out[(t, "r")] = z["z"], z["r"]
    for key in (1, "z", "r"):
        np.testing.assert_array_equal(out[key if key == 1 else (1, key)], out[2 if key == 1 else (2, key)])


def test_assignment_and_labeled_distance_are_the_same_on_one_and_two_threads(
    pool: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, lab = pool
    src = ArrayEmbeddings(x[:20000])
    centres = lab[:50]
    got = {}
    for t in ("1", "2"):
        monkeypatch.setenv("EDGE_AL_THREADS", t)
        got[t] = (_assign_pool(src, centres, 3000), _labeled_dist(src, lab, 3000))
    np.testing.assert_array_equal(got["1"][0], got["2"][0])
    np.testing.assert_array_equal(got["1"][1], got["2"][1])


def test_thread_count_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AL_THREADS", "3")
    assert thread_count() == 3
    assert thread_count(5) == 5
    monkeypatch.setenv("EDGE_AL_THREADS", "many")
    with pytest.raises(ValueError, match="EDGE_AL_THREADS"):
        thread_count()
    monkeypatch.delenv("EDGE_AL_THREADS")
    assert thread_count() >= 1
    with pytest.raises(ValueError, match="'threads'"):
        thread_count(0)


def test_blocks_cover_the_rows_whatever_the_thread_count() -> None:
    assert block_rows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert block_rows(0, 4) == []
    assert block_rows(40000, 65536) == [(0, 16384), (16384, 32768), (32768, 40000)]
    seen = np.zeros(100, dtype=np.int64)
    for_each_block(lambda s, e: seen.__setitem__(slice(s, e), seen[s:e] + 1), 100, 7, threads=3)
    assert (seen == 1).all()


def test_a_failing_block_raises_and_nested_passes_run_serially() -> None:
    def fail(s: int, e: int) -> None:
        if s == 8:
            raise RuntimeError("block 8")

    with pytest.raises(RuntimeError, match="block 8"):
        for_each_block(fail, 40, 4, threads=2)
    names: set[str] = set()

    def outer(s: int, e: int) -> None:
        for_each_block(lambda a, b: names.add(threading.current_thread().name), 10, 5, threads=4)

    for_each_block(outer, 20, 10, threads=2)
    assert all(name.startswith("edge-al-pass") for name in names)


def _numpy_blas_threads() -> list[int]:
    """Thread counts of the BLAS numpy links (faiss's OpenMP OpenBLAS keeps per-thread settings)."""
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and i.get("threading_layer") != "openmp"]


def test_blas_threads_are_restored_after_a_pass() -> None:
    before = _numpy_blas_threads()
    inside: list[int] = []
    for_each_block(lambda s, e: inside.extend(_numpy_blas_threads()), 4, 2, threads=2)
    assert set(inside) == {1}
    assert _numpy_blas_threads() == before
