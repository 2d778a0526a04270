#!/usr/bin/env python3
"""Which backbone should be the default? benchmark_app on the candidates' IRs, in one run.

For each architecture at one input size: the FP32 IR at f32, the FP32 IR at the CPU plugin's
default precision (bf16 where the CPU has it), and the INT8 IR edge-al publishes:

- efficientnet_lite0 (lite1, lite2): the workspace backbone (ImageNet weights from the train extra; NNCF MIXED,
  full bias correction, stem and embedding convolutions kept float), exactly what head-only
  versions run on;
- resnet18 and mobilenet_v3_small: the regular export path (random init: speed does not depend
  on the weights), NNCF with edge-al's settings for each.

Calibration images are generated textures (speed does not depend on them either). Prints a table
with ratios measured in this run, and the CPU's ISA flags; writes JSON with ``--out``.

``--tta``: also efficientnet_lite0's INT8 backbone with a 6-class head as a round publishes it,
plain and with test-time flips (``train --augment flips+tta``: four views an image in one IR), so
the line's cost of the option is a ratio measured in the same run.

    .venv/bin/python scripts/bench_backbones.py --size 224 --seconds 15 --out docs/benchmarks/backbones.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_al.config import PACKAGED_WEIGHTS, Settings
from export.backbone import ensure_backbone
from export.convert import build_reference_ir, export_onnx
from export.quantize import quantization_settings, quantize_int8
from export.tools.bench import benchmark_app, machine_info
from export.train import IMAGENET_MEAN, IMAGENET_STD, build_model


def _calibration(size: int, n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (n, size // 8, size // 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(base, 8, axis=1), 8, axis=2))


def _torchvision_irs(arch: str, size: int, folder: Path, calibration: np.ndarray) -> tuple[Path, Path]:
    import openvino as ov

    model = build_model(arch, 6, "none").eval()
    onnx_path = folder / f"{arch}.onnx"
    export_onnx(model, size, onnx_path, "torchscript")
    reference = build_reference_ir(onnx_path, size, IMAGENET_MEAN, IMAGENET_STD)
    int8 = quantize_int8(reference, calibration, quantization_settings(arch, len(calibration)))
    fp32_xml, int8_xml = folder / f"{arch}-fp32.xml", folder / f"{arch}-int8.xml"
    ov.save_model(reference, str(fp32_xml), compress_to_fp16=False)
    ov.save_model(int8, str(int8_xml), compress_to_fp16=False)
    return fp32_xml, int8_xml


def _with_head(backbone_xml: Path, out: Path, views: tuple[str, ...]) -> Path:
    """The backbone with a random 6-class head (what a round publishes; speed does not depend on the weights)."""
    import openvino as ov

    from edge_al.engine import read_ir
    from export.backbone import compose_head

    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(6, 1280)).astype(np.float32), np.zeros(6, np.float32)
    ov.save_model(compose_head(read_ir(backbone_xml), weight, bias, views), str(out), compress_to_fp16=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--archs", default="efficientnet_lite0,resnet18,mobilenet_v3_small")
    ap.add_argument("--tta", action="store_true", help="also lite0's published INT8 IR without and with test-time flips")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    calibration = _calibration(args.size)
    rows: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for arch in args.archs.split(","):
            t = time.time()
            if arch in PACKAGED_WEIGHTS:  # the backbone IRs edge-al builds (the workspace cache's recipe)
                bb = ensure_backbone(Settings(home=folder / "home"), arch, args.size, calibration, progress=False)
                fp32_xml, int8_xml = bb.fp32_xml, bb.int8_xml
            else:
                fp32_xml, int8_xml = _torchvision_irs(arch, args.size, folder, calibration)
            print(f"{arch}: IRs built in {time.time() - t:.0f}s", flush=True)
            kw = {"batch": args.batch, "height": args.size, "width": args.size, "seconds": args.seconds}
            rows[arch] = {
                "fp32_f32": benchmark_app(fp32_xml, infer_precision="f32", **kw),
                "fp32_default": benchmark_app(fp32_xml, **kw),
                "int8": benchmark_app(int8_xml, **kw),
            }
            if args.tta and arch == "efficientnet_lite0":
                for name, views in (("int8_head", ()), ("int8_head_tta", ("", "h", "v", "hv"))):
                    rows[arch][name] = benchmark_app(_with_head(int8_xml, folder / f"{name}.xml", views), **kw)
            for row in rows[arch].values():  # the report names no folder of this machine
                row["command"] = row["command"].replace(str(folder), "TMPDIR")
    machine = machine_info()
    print(f"\n{machine['cpu']}, {machine['cores']} cores, ISA flags {' '.join(machine['cpu_flags'])}, openvino {machine['openvino']}")
    print(f"benchmark_app, {args.size}x{args.size}, batch {args.batch}, throughput hint, {args.seconds:.0f} s each (img/s)\n")
    print(f"{'arch':<20} {'FP32@f32':>9} {'FP32@default':>13} {'INT8':>8} {'INT8/f32':>9} {'INT8/default':>13}")
    for arch, r in rows.items():
        f32, dflt, i8 = (r[k]["images_per_s"] for k in ("fp32_f32", "fp32_default", "int8"))
        print(f"{arch:<20} {f32:>9.0f} {dflt:>9.0f} ({r['fp32_default']['precision']}) {i8:>8.0f} {i8 / f32:>8.2f}x {i8 / dflt:>12.2f}x")
    tta = rows.get("efficientnet_lite0", {})
    if "int8_head_tta" in tta:
        plain, flipped = tta["int8_head"]["images_per_s"], tta["int8_head_tta"]["images_per_s"]
        print(
            f"\nefficientnet_lite0 INT8 + head: {plain:.0f} img/s; with test-time flips (4 views): {flipped:.0f} img/s "
            f"({flipped / plain:.2f}x)"
        )
    if "efficientnet_lite0" in rows and "resnet18" in rows:
        ratio = rows["efficientnet_lite0"]["int8"]["images_per_s"] / rows["resnet18"]["int8"]["images_per_s"]
        print(f"\nefficientnet_lite0 INT8 / resnet18 INT8 at {args.size} px: {ratio:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": machine, "size": args.size, "batch": args.batch, "seconds": args.seconds, "rows": rows}
        args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
