#!/usr/bin/env python3
"""What a head round's export costs in a new process (`edge-al train`, a retrain job), with and
without the gate images' backbone embeddings kept in the backbone's folder (``export.convert``
``_KEPT_FILE``).

Builds a workspace of generated digits (``--images``), its EfficientNet-Lite0 backbone at
``--size``, labels ``--labels`` of them, trains one head and exports it once (which computes and
keeps the embeddings); then exports the same checkpoint ``--repeats`` times each way, clearing the
per-process cache before each (a new process), and removing the kept files for the "before" rows.
Prints each time, the medians and their ratio, and the CPU's ISA::

    .venv/bin/python scripts/bench_export_reuse.py --size 320
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from edge_al.config import Settings
from edge_al.pool import ingest
from edge_al.store import open_store
from export import convert
from export.tools.machine import cpu_line
from export.tools.simulate import write_digits_folders
from export.workflow import export_from_store, train_from_store, workspace_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--labels", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # 64 px digits blown up: whether INT8 passes is not the point here
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        settings = Settings(home=folder / "home")
        store = open_store(settings)
        write_digits_folders(folder / "imgs", limit=args.images)
        for label in sorted(d.name for d in (folder / "imgs").iterdir()):
            store.add_label(label)
        ingest(store, settings, [folder / "imgs"])
        backbone = workspace_backbone(settings, store, "efficientnet_lite0", args.size, calibration_size=300)
        truth = {s.id: Path(s.path).parent.name for s in store.samples()}
        for sid in sorted(truth)[: args.labels]:
            store.add_annotation(int(sid), "correct", truth[sid], "bench", None)
        checkpoint = train_from_store(settings, store, arch="efficientnet_lite0", image_size=args.size, progress=False)
        export_from_store(settings, store, checkpoint, progress=False)  # computes the embeddings and keeps them
        times: dict[str, list[float]] = {"computed (no kept file)": [], "kept file": []}
        for _ in range(args.repeats):
            for name, seconds in times.items():
                convert._SAMPLE_EMBEDDINGS.clear()  # what a new process starts with
                if name.startswith("computed"):
                    for kept in backbone.path.glob("gate-samples-*.npz"):
                        kept.unlink()
                t = time.time()
                _, report = export_from_store(settings, store, checkpoint, progress=False)
                seconds.append(time.time() - t)
                print(f"{name:24s} {report['sample_embeddings']} {seconds[-1]:.2f} s", flush=True)
        store.close()
    before, now = (float(np.median(v)) for v in times.values())
    print(f"\n{cpu_line()}; {args.size} px, {args.labels} labels, export of a head round in a new process")
    print(f"median: computed {before:.2f} s, kept {now:.2f} s ({before / now:.1f}x)")


if __name__ == "__main__":
    main()
