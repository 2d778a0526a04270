"""The batcher: forms batches of concurrent requests for one dispatcher thread, adapting to the load.

Request threads ``put`` work items; the dispatcher thread (``edge_al.dispatch.ModelHolder``) calls
``next_batch(slots)`` in a loop, which

1. waits until one of the ``slots`` infer requests is free (GIL released), so that under load
   the queue fills while every request is busy;
2. takes the first item, then whatever is already queued, up to the target size;
3. while the batch is short of the target and it would take the last free infer request, waits
   for more until ``max_wait_s`` after the first item's arrival (an item that already waited
   that long does not wait again); with another infer request free it goes at once, since the
   next arrivals can use that one.

The target adapts to the load: ``ceil(concurrency / slots)`` clamped to ``[1, cap]``, where
``concurrency`` is the number of requests in the system (queued or running), its peak over the
last one to two windows of ``window_s``. So with as many clients as infer requests or fewer,
every item goes out at once on a free infer request, as batch-1 dispatch does (waiting there
only parks a stream: the measured cause of batching losing to batch-1 at 4 clients); with 16
clients on 2 infer requests, batches of 8 form.

And to the hardware: ``cap`` is the batch size worth forming at all (``useful_batch``: the
compiled size with the lowest time per image, measured when the model is loaded). A larger batch
is not always cheaper per image: resnet18 INT8 at 128 px on a Zen CPU with AVX-512 VNNI ran
521 img/s per stream at batch 1 and 297 at batch 8 (the batch's activations leave the core's
cache), while on a Xeon with AMX batch 8 was the faster. Where batch 1 is the cheapest the
batcher dispatches like batch-1 at every load. ``adaptive=False`` keeps the fixed policy
(target ``max_batch``, waiting only while a batch is in flight), for comparison.

Everything here is plain threading; the batcher knows nothing about models or OpenVINO.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STOP", "WAKE", "Batcher", "Item", "useful_batch"]

STOP = object()  # put by stop(): the dispatcher ends
WAKE = object()  # put to wake the dispatcher (e.g. a model swap is pending)


@dataclass
class Item:
    """One image to score: u8 [H, W, 3] BGR, the future its result resolves, its arrival time."""

    image: Any
    future: Future[Any]
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    """The queue between request threads and the dispatcher, the in-flight slot count, and counters."""

    def __init__(self, max_batch: int, max_wait_s: float, *, adaptive: bool = True, window_s: float = 0.5, wait_from: int = 2) -> None:
        self.max_batch = int(max_batch)
        self.wait_from = int(wait_from)  # the smallest target worth waiting for
        self.cap = self.max_batch  # the largest batch worth forming (set from the loaded model)
        self.max_wait_s = float(max_wait_s)
        self.adaptive = bool(adaptive)
        self.window_s = float(window_s)
        self.queue: queue.Queue[Any] = queue.Queue()
        self.stopped = threading.Event()
        self._slots = threading.Condition()
        self.inflight = 0
        self._load = threading.Lock()
        self._outstanding = 0
        self._peak = 0
        self._prev_peak = 0
        self._window_start = time.monotonic()
        self._stats = threading.Lock()
        self.batches = 0
        self.images = 0
        self.errors = 0
        self.infer_s = 0.0
        self.sizes: Counter[int] = Counter()

    # -- request threads -----------------------------------------------------------------------
    def put(self, item: Item) -> None:
        """Queue an item; it counts towards the load until its future is done (result, error, cancel)."""
        with self._load:
            self._outstanding += 1
            self._note(self._outstanding)
        item.future.add_done_callback(self._finished)
        self.queue.put(item)

    def _finished(self, _: Future[Any]) -> None:
        with self._load:
            self._outstanding -= 1

    def _note(self, n: int) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            # a window with no request at all in between forgets the old peak
            self._prev_peak = self._peak if now - self._window_start < 2 * self.window_s else 0
            self._peak = 0
            self._window_start = now
        self._peak = max(self._peak, n)

    def concurrency(self) -> int:
        """Requests in the system: the peak over the current and the previous window."""
        with self._load:
            self._note(self._outstanding)
            return max(self._peak, self._prev_peak)

    def target(self, slots: int) -> int:
        """The batch size the dispatcher fills up to now."""
        if not self.adaptive:
            return self.max_batch
        return max(1, min(self.cap, self.max_batch, math.ceil(self.concurrency() / max(1, slots))))

    def wake(self) -> None:
        self.queue.put(WAKE)

    def stop(self) -> None:
        self.stopped.set()
        self.queue.put(STOP)

    # -- the dispatcher thread -----------------------------------------------------------------
    def wait_slot(self, slots: int, timeout: float = 1.0) -> None:
        """Block until fewer than ``slots`` batches are in flight (or ``timeout``, or stop)."""
        with self._slots:
            self._slots.wait_for(lambda: self.inflight < slots or self.stopped.is_set(), timeout=timeout)

    def take(self, timeout: float) -> Item | None:
        """The next live item within ``timeout`` s; None on timeout, a wake-up or a stop."""
        try:
            obj = self.queue.get(timeout=max(0.0, timeout)) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None
        if obj is STOP:
            self.stopped.set()
            return None
        if not isinstance(obj, Item) or not obj.future.set_running_or_notify_cancel():  # a wake-up, or the caller gave up
            return None
        return obj

    def fill(self, first: Item, slots: int) -> list[Item]:
        """``first`` plus what is queued, up to the target; waits for more as the policy says."""
        target = self.target(slots)
        if self.adaptive:  # wait only when this batch takes the last free infer request
            deadline = first.arrived + self.max_wait_s if target >= self.wait_from and self.inflight + 1 >= slots else 0.0
        else:  # the fixed policy: wait only while the device is busy anyway
            deadline = first.arrived + self.max_wait_s if self.inflight > 0 else 0.0
        batch = [first]
        while len(batch) < target:
            item = self.take(deadline - time.perf_counter())
            if item is None:
                if self.stopped.is_set() or time.perf_counter() >= deadline:
                    break
                continue  # a wake-up: keep filling until the deadline
            batch.append(item)
        return batch

    def started(self) -> None:
        """A batch went to the device: one slot taken."""
        with self._slots:
            self.inflight += 1

    def release(self) -> None:
        """A batch came back (or failed to start): its slot is free."""
        with self._slots:
            self.inflight -= 1
            self._slots.notify_all()

    def drain(self) -> list[Item]:
        """Every item still queued (for failing them at shutdown)."""
        items: list[Item] = []
        while True:
            try:
                obj = self.queue.get_nowait()
            except queue.Empty:
                return items
            if isinstance(obj, Item):
                items.append(obj)

    # -- counters ------------------------------------------------------------------------------
    def record(self, n: int, seconds: float) -> None:
        with self._stats:
            self.batches += 1
            self.images += n
            self.sizes[n] += 1
            self.infer_s += seconds

    def record_errors(self, n: int) -> None:
        with self._stats:
            self.errors += n

    def stats(self, slots: int) -> dict[str, Any]:
        """Counters for /metrics: batches, images, mean batch size, batch-size histogram, queue
        depth, in-flight batches, seconds in inference, errors, the current load and target."""
        with self._stats:
            return {
                "batches": self.batches,
                "images": self.images,
                "mean_batch_size": (self.images / self.batches) if self.batches else 0.0,
                "batch_sizes": dict(sorted(self.sizes.items())),
                "queue_depth": self.queue.qsize(),
                "inflight_batches": self.inflight,
                "inference_seconds": self.infer_s,
                "errors": self.errors,
                "concurrency": self.concurrency(),
                "target_batch": self.target(slots),
                "batch_cap": self.cap,
            }


def useful_batch(per_image_s: dict[int, float], margin: float = 0.8) -> int:
    """The batch size worth forming, from seconds per image measured at each compiled size: the
    cheapest per image, where a larger size must beat every smaller one by ``margin`` (20%) to
    count, since a batch also makes its first request wait. Empty or unmeasured: the largest size."""
    sizes = sorted(b for b, t in per_image_s.items() if t > 0 and math.isfinite(t))
    if not sizes:
        return max(per_image_s, default=1)
    best = sizes[0]
    for b in sizes[1:]:
        if per_image_s[b] <= margin * per_image_s[best]:
            best = b
    return best
