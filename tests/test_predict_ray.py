"""The Ray path on a real local Ray cluster (127.0.0.1, 2 CPUs), compared row by row with the local run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from edge_al.cli import main
from edge_al.config import Settings
from edge_al.pool import ingest
from edge_al.registry import Registry
from edge_al.store import open_store
from tests.helpers import publish_tiny, write_jpegs

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'edge-al[ray]')")
LABELS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One local Ray cluster for the module: starting one costs seconds and hundreds of MB."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, object_store_memory=256 << 20)
    try:
        yield ray
    finally:
        ray.shutdown()


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in pq.read_table(path).to_pylist()}


def test_predict_on_ray_equals_the_local_run(cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    publish_tiny(Registry(home / "models"), LABELS, dim=16)
    paths = write_jpegs(tmp_path / "pool", 120, size=(96, 72))
    paths[7].write_bytes(paths[7].read_bytes()[:100])
    args = ["--home", str(home), "--json", "predict", str(tmp_path / "pool"), str(tmp_path / "gone.jpg"), "--embedding"]
    assert main([*args, "--out", str(tmp_path / "local.parquet")]) == 3
    capsys.readouterr()
    assert main([*args, "--ray", "--out", str(tmp_path / "shards")]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["errors"] == 2 and doc["written"] == 119 and doc["engine"]["ray_cpus"] == 2
    local, remote = _rows(tmp_path / "local.parquet"), _rows(tmp_path / "shards")
    assert pq.read_schema(next((tmp_path / "shards").glob("*.parquet"))) == pq.read_schema(tmp_path / "local.parquet")
    assert set(local) == set(remote) and len(local) == 121
    for path, a in local.items():
        b = remote[path]
        assert a["label"] == b["label"] and a["error"] == b["error"] and a["top_k_labels"] == b["top_k_labels"], path
        if a["error"] is None:
            np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5, err_msg=path)
            np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5, err_msg=path)
            assert a["margin"] == pytest.approx(b["margin"], abs=1e-5)
    # a rerun skips what the shards hold
    assert main([*args, "--ray", "--out", str(tmp_path / "shards")]) == 0
    assert json.loads(capsys.readouterr().out)["already_in_output"] == 121
    assert pq.read_table(tmp_path / "shards").num_rows == 121


def test_score_on_ray_lands_in_the_store_as_score_does(cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_jpegs(tmp_path / "pool", 60, size=(64, 64))
    homes = [tmp_path / "local", tmp_path / "ray"]
    for home in homes:
        s = Settings(home=home)
        st = open_store(s)
        ingest(st, s, [tmp_path / "pool"])
        publish_tiny(Registry(s.registry_dir), LABELS, dim=16)
        st.close()
    paths[3].unlink()  # gone after ingest: a failed sample, not a crash
    assert main(["--home", str(homes[0]), "-q", "score"]) == 3
    capsys.readouterr()
    assert main(["--home", str(homes[1]), "--json", "score", "--ray"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["scored"] == 59 and len(doc["failed"]) == 1
    stores = [open_store(h / "edge-al.sqlite3") for h in homes]
    try:
        (ids_a, probs_a), (ids_b, probs_b) = (s.predictions("v0001") for s in stores)
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_allclose(probs_a, probs_b, atol=1e-5)
        a, b = (s.prediction(int(ids_a[5]), "v0001") for s in stores)
        assert a is not None and b is not None and a.label_index == b.label_index
        assert a.scores["margin"] == pytest.approx(b.scores["margin"], abs=1e-5)
    finally:
        for s in stores:
            s.close()
