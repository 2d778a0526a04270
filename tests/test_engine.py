from __future__ import annotations

import numpy as np
import pytest

from edge_al.engine import Engine, resolve_device
from edge_al.errors import InvalidInput
from edge_al.registry import Registry
from tests.helpers import publish_tiny


def test_resolve_device_from_what_is_present() -> None:
    assert resolve_device("CPU", ["CPU"]) == "CPU"
    assert resolve_device("AUTO", ["CPU"]) == "CPU"
    assert resolve_device("AUTO", ["CPU", "GPU"]) == "AUTO:GPU,CPU"
    assert resolve_device("auto", ["CPU", "GPU.0", "GPU.1"]) == "AUTO:GPU.0,GPU.1,CPU"
    assert resolve_device("GPU", ["CPU", "GPU.0"]) == "GPU.0"
    with pytest.raises(InvalidInput, match="available devices are CPU"):
        resolve_device("GPU", ["CPU"])
    with pytest.raises(InvalidInput):
        resolve_device("NPU", ["CPU"])


def test_gpu_request_on_this_host_falls_back_or_fails_clearly(registry: Registry) -> None:
    mv = publish_tiny(registry, ["a", "b", "c"])
    eng = Engine(mv.xml, device="AUTO", batch=4)
    assert "CPU" in eng.device
    from edge_al.engine import available_devices

    if not any(d.startswith("GPU") for d in available_devices()):
        with pytest.raises(InvalidInput, match="not available"):
            Engine(mv.xml, device="GPU")


def test_infer_and_stream_agree_with_padding(registry: Registry) -> None:
    mv = publish_tiny(registry, ["a", "b", "c"], size=32, dim=16)
    eng = Engine(mv.xml, device="CPU", batch=4, precision="f32")
    assert eng.labels == ["a", "b", "c"] and eng.size == (32, 32) and eng.embedding_dim == 16
    assert eng.precision == "f32"
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (11, 32, 32, 3), dtype=np.uint8)
    probs, emb = eng.infer(imgs)
    assert probs.shape == (11, 3) and emb.shape == (11, 16)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # one image alone gives the same answer as inside a padded batch
    p1, _ = eng.infer(imgs[10:11])
    np.testing.assert_allclose(p1[0], probs[10], atol=1e-6)
    batches = [(i, imgs[i : i + 4]) for i in range(0, 11, 4)]
    out = list(eng.stream(batches))
    assert [t for t, _, _ in out] == [0, 4, 8]
    np.testing.assert_allclose(np.concatenate([p for _, p, _ in out]), probs, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([e for _, _, e in out]), emb, atol=1e-5)
    with pytest.raises(InvalidInput, match="uint8"):
        eng.infer(imgs.astype(np.float32))


def test_infer_of_several_batches_runs_on_every_stream_with_the_same_results(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call of more than one batch goes through the async queue (every stream busy: 2x on a
    2-stream CPU, the feature cache's embeddings 36 -> 72 img/s at 320 px, docs/benchmarks/embed.md), and answers bit for bit as the single
    infer request does batch by batch."""
    mv = publish_tiny(registry, ["a", "b", "c"], size=32, dim=16)
    eng = Engine(mv.xml, device="CPU", batch=2, precision="f32", nireq=2)
    imgs = np.random.default_rng(1).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    parts = [eng.infer(imgs[i : i + 2]) for i in range(0, 9, 2)]  # one batch a call: the single request
    calls = []
    real = eng.stream
    monkeypatch.setattr(eng, "stream", lambda batches, nireq=None: (calls.append(nireq), real(batches, nireq))[1])
    probs, emb = eng.infer(imgs)
    assert len(calls) == 1
    np.testing.assert_array_equal(probs, np.concatenate([p for p, _ in parts]))
    np.testing.assert_array_equal(emb, np.concatenate([e for _, e in parts]))
    assert eng.infer(imgs[:2])[0].shape == (2, 3) and len(calls) == 1  # one batch: no queue
