"""Images addressed so that any box can read them (edge_al.storage): refs relative to the images root,
an object store (fsspec ``memory://``) or a folder mounted at another path, and old absolute rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_al.annotations import apply_annotations
from edge_al.config import Settings, load_settings
from edge_al.errors import InvalidInput, MissingDependency
from edge_al.pool import ImageCache, ingest, ingest_bytes
from edge_al.registry import Registry
from edge_al.scoring import score_pool
from edge_al.storage import Storage, images_storage, is_ref
from edge_al.store import Store, open_store
from tests.helpers import publish_tiny, write_jpegs

LABELS = ["a", "b", "c"]


def _paths(store: Store) -> list[str]:
    return [s.path for s in store.samples()]


def test_storage_reads_and_writes_refs_on_a_folder_and_an_object_store(tmp_path: Path) -> None:
    for root in (tmp_path / "images", f"memory://{tmp_path.name}-images"):
        st = Storage(root)
        assert st.write_bytes("blobs/ab/one.bin", b"one") == "blobs/ab/one.bin"
        assert st.read_bytes("blobs/ab/one.bin") == b"one" and st.exists("blobs/ab/one.bin")
        assert not st.exists("blobs/none.bin")
        with pytest.raises(FileNotFoundError):
            st.read_bytes("blobs/none.bin")
        for bad in ("../outside.bin", "blobs/../../x", ""):
            with pytest.raises(InvalidInput, match="relative path inside the images root"):
                st.write_bytes(bad, b"x")
    local = Storage(tmp_path / "images")
    assert local.location("blobs/ab/one.bin") == str(tmp_path / "images" / "blobs" / "ab" / "one.bin")
    assert local.ref_for(tmp_path / "images" / "line3" / "x.png") == "line3/x.png"
    assert local.ref_for(tmp_path / "elsewhere.png") is None
    assert Storage(f"memory://{tmp_path.name}-images").location("a/b.png") == f"memory:///{tmp_path.name}-images/a/b.png"
    assert is_ref("line3/x.png") and not is_ref("/srv/x.png") and not is_ref("s3://bucket/x.png")


def test_a_bad_images_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="EDGE_AL_IMAGES must be a folder or an fsspec URL"):
        Storage("nosuchprotocol://bucket/images")
    try:
        import s3fs  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(MissingDependency, match="s3fs"):
            Storage("s3://bucket/images")


def test_load_settings_reads_edge_al_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_AL_IMAGES", "shared/images")
    assert load_settings(home=tmp_path / "h").images == str((tmp_path / "shared" / "images").resolve())
    monkeypatch.setenv("EDGE_AL_IMAGES", "s3://bucket/pool")
    assert load_settings(home=tmp_path / "h").images == "s3://bucket/pool"
    monkeypatch.delenv("EDGE_AL_IMAGES")
    assert load_settings(home=tmp_path / "h").images is None


def test_an_object_store_pool_keeps_no_machine_path_and_scores(tmp_path: Path) -> None:
    """EDGE_AL_IMAGES=memory://...: ingested files are copied in as blobs/<sha256>, uploads land there,
    the store holds only refs, and scoring and the image route read through the storage."""
    settings = Settings(home=tmp_path / "home", images=f"memory://{tmp_path.name}-pool")
    store, registry = open_store(settings), Registry(settings.registry_dir)
    publish_tiny(registry, LABELS, size=32, dim=16)
    files = write_jpegs(tmp_path / "camera-drop", 12, size=(64, 48))
    report = ingest(store, settings, [str(p) for p in files])
    assert len(report.added) == 12
    sample, created = ingest_bytes(store, settings, write_jpegs(tmp_path / "upload", 1, size=(50, 40), seed=7)[0].read_bytes())
    assert created and sample.path.startswith("blobs/") and sample.path.endswith(".jpg")
    paths = _paths(store)
    assert all(p.startswith("blobs/") and str(tmp_path) not in p for p in paths), paths
    for f in files:  # the originals may go away: the pool lives in the storage now
        f.unlink()
    res = score_pool(settings, store, registry, batch=4)
    assert res.scored == 13 and not res.failed
    from edge_al.api import create_app

    app = create_app(settings, {"START_MODEL": False, "JOBS": False, "AUTH_REQUIRED": False})
    resp = app.test_client().get(f"/v1/samples/{sample.id}/image")
    assert resp.status_code == 200 and resp.data == images_storage(settings).read_bytes(sample.path)
    store.close()


def test_a_second_box_mounting_the_images_elsewhere_reads_every_sample(tmp_path: Path) -> None:
    """Box A ingests a folder inside its images root and stores relative refs; box B mounts the same
    images at another path, opens a copy of the store, and decodes every sample: no row names a
    path that only box A knows. A sample written before refs (an absolute path) is still read."""
    root_a = tmp_path / "box-a" / "mnt" / "images"
    files = write_jpegs(root_a / "line3" / "2024-05-01", 8, size=(64, 48))
    box_a = Settings(home=tmp_path / "box-a" / "home", images=str(root_a))
    store_a = open_store(box_a)
    ingest(store_a, box_a, [root_a / "line3"])
    ingest_bytes(store_a, box_a, write_jpegs(tmp_path / "upload", 1, size=(50, 40), seed=3)[0].read_bytes())
    old = write_jpegs(tmp_path / "legacy", 1, size=(40, 40), seed=5)[0]
    store_a.add_sample("0" * 64, str(old), 40, 40, "ingest")  # a row as the code before refs wrote it
    paths = _paths(store_a)
    assert sorted(paths[:8]) == sorted(f"line3/2024-05-01/{f.name}" for f in files)
    assert paths[8].startswith("blobs/") and paths[9] == str(old)
    # box A's copy of the images and its store move; box B knows neither of box A's paths
    root_b = tmp_path / "box-b" / "srv" / "shared-images"
    shutil.copytree(root_a, root_b)
    shutil.rmtree(tmp_path / "box-a" / "mnt")
    box_b = Settings(home=tmp_path / "box-b" / "home", images=str(root_b))
    store_a.backup_to(box_b.db_path)
    store_b = open_store(box_b)
    samples = store_b.samples()
    with ImageCache(box_b.cache_dir, (32, 32), images_storage(box_b)) as cache:
        images, failures = cache.load_ids(np.array([s.id for s in samples]), {s.id: s for s in samples})
    assert failures == [] and images.shape == (10, 32, 32, 3) and images.reshape(10, -1).any(axis=1).all()
    # a decision by box B's local path finds the row whose ref is relative
    for name in LABELS:
        store_b.add_label(name)
    res = apply_annotations(store_b, Registry(box_b.registry_dir), [{"path": str(root_b / paths[0]), "action": "correct", "label": "a"}],
                            storage=images_storage(box_b))  # fmt: skip
    assert res.written == 1 and res.errors == []
    store_a.close()
    store_b.close()


def test_one_box_without_edge_al_images_keeps_outside_files_where_they_are(tmp_path: Path, settings: Settings, store: Store) -> None:
    """The single-box default: the images root is the workspace; a folder outside it is not copied
    (its absolute path is kept, as before), a folder inside it is kept relative, uploads are relative."""
    outside = write_jpegs(tmp_path / "outside", 2, size=(40, 40))
    inside = write_jpegs(settings.home / "pool", 2, size=(40, 40), seed=1)
    ingest(store, settings, [tmp_path / "outside", settings.home / "pool"])
    sample, _ = ingest_bytes(store, settings, write_jpegs(tmp_path / "up", 1, size=(40, 40), seed=2)[0].read_bytes())
    assert _paths(store)[:4] == [str(p) for p in outside] + [f"pool/{p.name}" for p in inside]
    assert sample.path.startswith("blobs/") and (settings.home / sample.path).exists()


def test_the_registry_records_no_machine_path_for_the_checkpoint(tmp_path: Path) -> None:
    from export.workflow import workspace_ref

    settings = Settings(home=tmp_path / "home")
    assert workspace_ref(settings, settings.home / "checkpoints" / "c0001.pt") == "checkpoints/c0001.pt"
    assert workspace_ref(settings, tmp_path / "elsewhere" / "c.pt") == "c.pt"
