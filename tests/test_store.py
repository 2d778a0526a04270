from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_al.errors import InvalidInput, LeaseConflict, NotFound, NotPermitted, UnknownLabel
from edge_al.store import Store

pytestmark = pytest.mark.stores


def test_samples_dedupe_by_hash(store: Store) -> None:
    a, created = store.add_sample("h1", "/x/a.png", 10, 10)
    b, created2 = store.add_sample("h1", "/x/copy.png", 10, 10)
    assert created and not created2 and a == b
    assert store.count_samples() == 1
    assert store.find_sample("/x/a.png").id == a
    assert store.find_sample(str(a)).id == a
    with pytest.raises(NotFound, match="ingest it first"):
        store.find_sample("/nope.png")
    # digits int() refuses ("³" and "²" pass str.isdigit) and non-ASCII decimals are paths, not ids
    for ref in ("³", "1²", "\u0661"):
        with pytest.raises(NotFound, match="ingest it first"):
            store.find_sample(ref)
    assert store.find_sample(f" {a} ").id == a


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
    assert list(store.lease(ids[:2], "alice", 60)) == ids[:2]
    assert list(store.lease(ids[:3], "bob", 60)) == [ids[2]]
    assert store.leased_ids(exclude_holder="alice") == {ids[2]}
    assert store.lease(ids[:1], "bob", 60) == {}
    assert list(store.lease(ids[3:], "carol", -1)) == [ids[3]]  # already expired
    assert ids[3] not in store.leased_ids()


def test_a_lease_ends_when_the_store_says(store: Store) -> None:
    """The end ``lease`` returns (the queue tells it to the holder) is the stored one, the one every
    process checks a decision and a later lease against."""
    a, b = (store.add_sample(f"h{i}", f"/p{i}.png", 4, 4)[0] for i in range(2))
    before = time.time()
    got = store.lease([a, b], "alice", 60)
    stored = {int(r["sample_id"]): float(r["expires_at"]) for r in store.query("SELECT sample_id, expires_at FROM leases")}
    assert got == stored and before + 60 <= got[a] <= time.time() + 60


def test_a_lease_waiting_for_the_write_lock_lasts_its_seconds_from_the_grant(store: Store) -> None:
    """Another process's write transaction holds the lock while a lease waits for it: the lease
    is timed from when it is granted, not from when it began to wait (it would otherwise end
    early, and another annotator could take the sample before the end its holder was told)."""
    if store.backend.name != "postgresql":
        pytest.skip("a writer waiting for the lock is observable on PostgreSQL (pg_locks), not inside SQLite's busy wait")
    a, _ = store.add_sample("h1", "/a.png", 4, 4)
    got: dict[int, float] = {}
    waiter = threading.Thread(target=lambda: got.update(store.lease([a], "alice", 60)))  # its own connection
    with store.tx() as c:
        waiter.start()
        deadline = time.monotonic() + 60
        while not c.execute("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]:
            assert time.monotonic() < deadline, "the lease never waited for the write lock"
            time.sleep(0.01)  # polling the server's lock table for the waiter
        released = time.time()
    waiter.join(60)
    assert got[a] >= released + 60


def test_unchanged_only_while_the_decision_stands(store: Store) -> None:
    sid, _ = store.add_sample("h1", "/a.png", 4, 4)
    store.add_label("ok")
    assert store.add_annotation(sid, "correct", "ok", "alice") is True
    assert store.undo_annotation(sid, "admin", any_annotator=True) is True
    # alice's decision was undone by someone else: posting it again writes it again
    assert store.add_annotation(sid, "correct", "ok", "alice") is True
    assert store.current_annotations()[sid].annotator == "alice"
    assert store.add_annotation(sid, "reject", None, "bob") is True
    # bob decided after alice: alice's decision no longer stands, so hers is written again
    assert store.add_annotation(sid, "correct", "ok", "alice") is True
    assert store.add_annotation(sid, "correct", "ok", "alice") is False


def test_undo_is_the_owners_unless_any_annotator(store: Store) -> None:
    sid, _ = store.add_sample("h1", "/a.png", 4, 4)
    store.add_label("ok")
    store.add_annotation(sid, "correct", "ok", "alice")
    with pytest.raises(NotPermitted, match="'alice''s, not 'bob''s"):
        store.undo_annotation(sid, "bob")
    assert store.current_annotations()[sid].annotator == "alice"
    assert store.undo_annotation(sid, "lead", any_annotator=True) is True
    assert store.undo_annotation(sid, "alice") is False  # nothing stands any more
    assert [a.action for a in store.annotation_history(sid)] == ["correct", "undo"]


def test_decisions_respect_other_holders_leases(store: Store) -> None:
    a, _ = store.add_sample("h1", "/a.png", 4, 4)
    store.add_label("ok")
    store.lease([a], "bob", 60)
    with pytest.raises(LeaseConflict, match="leased to another annotator"):
        store.add_annotation(a, "correct", "ok", "alice", respect_leases=True)
    assert store.current_annotations() == {}
    assert store.add_annotation(a, "correct", "ok", "bob", respect_leases=True) is True  # the holder's own
    store.lease([a], "bob", 60)
    assert store.add_annotation(a, "reject", None, "admin") is True  # leases not checked (CLI, admins)
    assert store.leased_ids() == set()  # a decision ends the lease


def test_a_decided_sample_is_not_leased(store: Store) -> None:
    """The queue ranks outside the lease's transaction: a sample decided in between is refused."""
    a, b = (store.add_sample(f"h{i}", f"/p{i}.png", 4, 4)[0] for i in range(2))
    store.add_label("ok")
    store.add_annotation(a, "correct", "ok", "alice")
    assert list(store.lease([a, b], "bob", 60)) == [b]
    store.undo_annotation(a, "alice")
    assert list(store.lease([a], "bob", 60)) == [a]  # withdrawn: back in the pool


def test_lease_limit_per_holder(store: Store) -> None:
    ids = [store.add_sample(f"h{i}", f"/p{i}.png", 4, 4)[0] for i in range(6)]
    assert list(store.lease(ids, "alice", 60, max_live=3)) == ids[:3]
    assert store.held_ids("alice") == set(ids[:3])
    assert store.lease(ids[3:], "alice", 60, max_live=3) == {}  # full: nothing new
    assert list(store.lease(ids[:2], "alice", 60, max_live=3)) == ids[:2]  # renewing is fine
    assert list(store.lease(ids[3:], "bob", 60, max_live=3)) == ids[3:]  # the limit is per holder


def test_unlabeled_predicted_counts_skip_standing_decisions_only(store: Store) -> None:
    ids = [store.add_sample(f"h{i}", f"/p{i}.png", 4, 4)[0] for i in range(4)]
    store.add_label("ok")
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]], dtype=np.float32)
    scores = {"least_confidence": 0.1, "margin": 0.2, "entropy": 0.3}
    store.put_predictions("v0001", [(i, p, scores) for i, p in zip(ids, probs, strict=True)])
    store.add_annotation(ids[0], "correct", "ok", "a")
    store.add_annotation(ids[1], "correct", "ok", "a")
    store.undo_annotation(ids[1], "a")
    assert store.unlabeled_predicted_counts("v0001") == {0: 1, 1: 2}
