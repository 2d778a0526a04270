from __future__ import annotations

import numpy as np
import pytest

from edge_al.errors import InvalidInput, NotFound, UnknownLabel
from edge_al.store import Store


def test_samples_dedupe_by_hash(store: Store) -> None:
    a, created = store.add_sample("h1", "/x/a.png", 10, 10)
    b, created2 = store.add_sample("h1", "/x/copy.png", 10, 10)
    assert created and not created2 and a == b
    assert store.count_samples() == 1
    assert store.find_sample("/x/a.png").id == a
    assert store.find_sample(str(a)).id == a
    with pytest.raises(NotFound, match="ingest it first"):
        store.find_sample("/nope.png")


def test_annotations_history_idempotence_and_undo(store: Store) -> None:
    sid, _ = store.add_sample("h1", "/a.png", 4, 4)
    store.add_label("ok")
    store.add_label("bad")
    assert store.add_annotation(sid, "correct", "ok", "ann") is True
    assert store.add_annotation(sid, "correct", "ok", "ann") is False  # repeat: idempotent
    assert store.add_annotation(sid, "correct", "bad", "ann") is True  # change of mind: history kept
    assert [a.label for a in store.annotation_history(sid)] == ["ok", "bad"]
    ids, labels = store.labeled()
    assert ids.tolist() == [sid] and labels == ["bad"]
    assert store.undo_annotation(sid, "ann") is True
    assert store.undo_annotation(sid, "ann") is False
    assert store.current_annotations() == {}
    assert len(store.annotation_history(sid)) == 3


def test_annotation_validation(store: Store) -> None:
    sid, _ = store.add_sample("h1", "/a.png", 4, 4)
    store.add_label("ok")
    with pytest.raises(UnknownLabel, match="known labels are ok"):
        store.add_annotation(sid, "correct", "nope", "a")
    with pytest.raises(InvalidInput, match="must be one of accept, correct, reject"):
        store.add_annotation(sid, "maybe", "ok", "a")
    with pytest.raises(NotFound):
        store.add_annotation(999, "correct", "ok", "a")
    with pytest.raises(InvalidInput, match="needs a label"):
        store.add_annotation(sid, "correct", None, "a")
    assert store.add_annotation(sid, "reject", "ok", "a") is True  # reject drops the label
    assert store.current_annotations()[sid].label is None
    assert store.annotated_ids().tolist() == [sid]


def test_failed_transaction_rolls_back(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.tx() as c:
            c.execute("INSERT INTO labels(name, created_at) VALUES ('x', 0)")
            raise RuntimeError("boom")
    assert store.labels() == []


def test_predictions_roundtrip(store: Store) -> None:
    ids = [store.add_sample(f"h{i}", f"/p{i}.png", 4, 4)[0] for i in range(3)]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]], dtype=np.float32)
    scores = {"least_confidence": 0.1, "margin": 0.2, "entropy": 0.3}
    store.put_predictions("v0001", [(i, p, scores) for i, p in zip(ids, probs, strict=True)])
    got_ids, got = store.predictions("v0001")
    assert got_ids.tolist() == ids
    np.testing.assert_array_equal(got, probs)
    sub_ids, _ = store.predictions("v0001", [ids[2], ids[0]])
    assert sub_ids.tolist() == [ids[0], ids[2]]
    p = store.prediction(ids[1], "v0001")
    assert p is not None and p.label_index == 1 and p.confidence == pytest.approx(0.6)


def test_leases_exclusive_and_expire(store: Store) -> None:
    ids = [store.add_sample(f"h{i}", f"/p{i}.png", 4, 4)[0] for i in range(4)]
    assert store.lease(ids[:2], "alice", 60) == ids[:2]
    assert store.lease(ids[:3], "bob", 60) == [ids[2]]
    assert store.leased_ids(exclude_holder="alice") == {ids[2]}
    assert store.lease(ids[:1], "bob", 60) == []
    assert store.lease(ids[3:], "carol", -1) == [ids[3]]  # already expired
    assert ids[3] not in store.leased_ids()
