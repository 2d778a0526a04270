from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_al.config import Settings
from edge_al.errors import ImageError, ImageTooLarge
from edge_al.images import decode_resized, probe, reduction_for
from edge_al.pool import ImageCache, ingest, ingest_bytes
from edge_al.store import Store
from tests.helpers import write_digit_images, write_jpegs


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries almost no data (bomb-like)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_ingest_reports_each_bad_file_and_keeps_the_rest(tmp_path: Path, settings: Settings, store: Store) -> None:
    good = write_jpegs(tmp_path / "pool", 5)
    bad = tmp_path / "pool"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_bytes(b"this is not an image at all")
    data = good[0].read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
    (bad / "README.md").write_text("not listed: wrong suffix in a directory walk")
    settings = settings.with_(max_pixels=10_000_000)
    report = ingest(store, settings, [bad, tmp_path / "missing.jpg"])
    assert len(report.added) == 5
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert set(reasons) == {"empty.jpg", "text.png", "truncated.jpg", "bomb.png", "missing.jpg"}
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["text.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "limit" in reasons["bomb.png"]
    assert "no such file" in reasons["missing.jpg"]
    # a second ingest of the same content registers nothing new
    again = ingest(store, settings, [good[0], tmp_path / "pool"])
    assert again.added == [] and len(again.duplicates) == 6
    assert store.count_samples() == 5


def test_ingest_list_file_and_labels_from_dirs(tmp_path: Path, settings: Settings, store: Store) -> None:
    items = write_digit_images(tmp_path / "seed", 20)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p.relative_to(tmp_path)) for p, _ in items[:10]) + "\n# comment\n")
    rep = ingest(store, settings, [listing], labels_from_dirs=True)
    assert len(rep.added) == 10 and rep.labeled == 10
    _, labels = store.labeled()
    want = {str(p): lab for p, lab in items[:10]}
    assert sorted(labels) == sorted(want.values())
    assert set(store.labels()) == set(want.values())


def test_ingest_bytes_writes_blob_and_dedupes(settings: Settings, store: Store, tmp_path: Path) -> None:
    data = write_jpegs(tmp_path, 1)[0].read_bytes()
    s1, created = ingest_bytes(store, settings, data)
    s2, created2 = ingest_bytes(store, settings, data)
    assert created and not created2 and s1.id == s2.id
    assert s1.path.startswith("blobs/") and (settings.home / s1.path).read_bytes() == data  # a ref relative to the images root
    with pytest.raises(ImageError):
        ingest_bytes(store, settings, data[:100])
    with pytest.raises(ImageTooLarge):
        ingest_bytes(store, settings.with_(max_file_bytes=10), data)


def test_probe_limits() -> None:
    with pytest.raises(ImageTooLarge, match="pixels"):
        probe(_png_header_only(10_000, 10_000), max_pixels=1_000_000, max_bytes=10**6)
    with pytest.raises(ImageError, match="empty"):
        probe(b"", max_pixels=10, max_bytes=10)


def test_reduced_decode_matches_full_decode(tmp_path: Path) -> None:
    img = np.zeros((960, 1280, 3), np.uint8)
    cv2.rectangle(img, (100, 100), (1100, 800), (40, 180, 220), -1)
    ok, enc = cv2.imencode(".jpg", img)
    assert ok
    assert reduction_for(1280, 960, (256, 256)) == 4  # 320x240: within 12.5% of 256
    assert reduction_for(1280, 960, (256, 256), min_scale=1.0) == 2
    assert reduction_for(1280, 960, (128, 128)) == 8
    assert reduction_for(100, 80, (128, 128)) == 1
    fast = decode_resized(enc.tobytes(), (128, 128), 1280, 960)
    slow = cv2.resize(cv2.imdecode(enc, cv2.IMREAD_COLOR), (128, 128), interpolation=cv2.INTER_AREA)
    assert fast.shape == (128, 128, 3)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3.0


def test_image_cache_roundtrip_and_validity(tmp_path: Path, settings: Settings, store: Store) -> None:
    paths = write_jpegs(tmp_path / "p", 3)
    ingest(store, settings, [tmp_path / "p"])
    samples = store.samples()
    with ImageCache(settings.cache_dir, (32, 24)) as cache:
        assert not cache.valid_mask(np.array([s.id for s in samples])).any()
        imgs, failed = cache.load_many(samples)
        assert failed == [] and imgs.shape == (3, 24, 32, 3)
        assert cache.valid_mask(np.array([s.id for s in samples])).all()
    paths[0].unlink()  # the source is gone, the cache still serves it
    with ImageCache(settings.cache_dir, (32, 24)) as cache:
        again, failed = cache.load_many(samples)
        np.testing.assert_array_equal(again, imgs)
    with ImageCache(settings.cache_dir, (16, 16)) as other:  # another size must decode: source gone -> failed
        _, failed = other.load_many(samples)
        assert failed == [0]
