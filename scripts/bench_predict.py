"""Offline batch scoring benchmarks of issue 10, on this machine, in one run.

    .venv/bin/python scripts/bench_predict.py --work DIR [--images 20000] [--big 100000] [--repeat 3]
        [--parts throughput,memory,ray,errors] [--out docs/benchmarks]

A tiny real OpenVINO model (export.tools.fixtures.build_tiny_ir: u8 64x64 in, probs + embedding out; no
torch) and generated 96x96 JPEGs (distinct content, reduced-scale decode to 64 px), so the figures
measure the pipeline (read, probe, decode, infer, write) rather than a backbone.

- throughput: ``edge-al score`` first pass (a workspace with the pool ingested and the image cache
  empty) vs ``edge-al predict POOL --out x.parquet`` on the same --images JPEGs, each a CLI
  subprocess, interleaved, --repeat rounds; images/s as each prints it (score's figure includes
  its model compile, a few ms for this model; predict's starts after it).
- memory: peak RSS (``wait4``) of ``edge-al predict`` on the first 10,000 and on all --big images.
- ray: ``predict --ray`` on a local 2-CPU Ray cluster (127.0.0.1) vs the local path in this
  process, same pool; Ray start-up is timed apart; the Ray figure includes actor start-up, model
  compile per actor and the workers' Parquet writes. Per-actor images/s for the README's estimate.
- errors: one truncated JPEG among 10,000 plus one missing path: exactly those rows have an error.

Writes ``<out>/predict.json`` and ``<out>/predict.md``. The machine is shared: compare only
ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository (docs/benchmarks, the working directory of servers)

PARTS = ("throughput", "memory", "ray", "errors")
SIZE = 64
LABELS = ["ok", "scratch", "dent", "stain"]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cpu_line() -> str:
    name, flags = platform.processor() or "?", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("amx_bf16", "amx_int8", "avx512_vnni", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"{name}, {os.cpu_count()} cores ({', '.join(isa)})"


def make_pool(root: Path, n: int, per_dir: int = 1000) -> Path:
    """``n`` distinct 96x96 JPEGs in ``root/dNNNN/`` folders of ``per_dir`` (reused when present)."""
    stamp = root / f".done-{n}"
    if stamp.exists():
        return root
    for i in range(n):
        folder = root / f"d{i // per_dir:04d}"
        p = folder / f"img_{i:06d}.jpg"
        if i % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        if p.exists():
            continue
        rng = np.random.default_rng(i)  # per image: a pool grown later stays distinct (ingest dedupes by content)
        img = np.full((96, 96, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        cv2.circle(
            img,
            (int(rng.integers(0, 96)), int(rng.integers(0, 96))),
            int(rng.integers(4, 30)),
            tuple(int(v) for v in rng.integers(0, 255, 3)),
            -1,
        )
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    stamp.touch()
    return root


def make_registry(root: Path) -> Path:
    from edge_al.registry import Registry
    from export.tools.fixtures import publish_tiny

    reg = Registry(root)
    if reg.active() is None:
        publish_tiny(reg, LABELS, size=SIZE, dim=32)
    return root


def cli(*args: str) -> tuple[dict[str, Any], float, int]:
    """Run ``edge-al --json ARGS`` as a child; ``(its JSON, wall s, peak RSS MiB)``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge_al", "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = proc.stdout.read() if proc.stdout else b""
    _, _status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    return json.loads(out or b"{}"), wall, int(usage.ru_maxrss // 1024)


def part_throughput(args: argparse.Namespace, pool: Path, models: Path) -> dict[str, Any]:
    from edge_al.config import Settings
    from edge_al.pool import ingest
    from edge_al.store import open_store

    folders = [str(pool / f"d{k:04d}") for k in range(args.images // 1000)]
    ws = args.work / f"ws-{args.images}"
    if not (ws / ".ingested").exists():
        shutil.rmtree(ws, ignore_errors=True)
        s = Settings(home=ws, models_dir=models)
        st = open_store(s)
        rep = ingest(st, s, folders)
        st.close()
        log(f"ingested {len(rep.added)} into the score workspace")
        (ws / ".ingested").touch()
    runs: dict[str, list[float]] = {"score": [], "predict": []}
    for r in range(args.repeat):
        # score's first pass: no predictions of the version, no image cache
        shutil.rmtree(ws / "cache", ignore_errors=True)
        shutil.rmtree(ws / "embeddings", ignore_errors=True)
        subprocess.run(["sqlite3", str(ws / "edge-al.sqlite3"), "DELETE FROM predictions"], check=False)
        if r == 0 and _count(ws) != 0:
            raise SystemExit("could not clear the predictions (is sqlite3 installed?)")
        doc, _, _ = cli("--home", str(ws), "--models", str(models), "score", "--batch", "8")
        runs["score"].append(doc["images_per_s"])
        out = args.work / "throughput.parquet"
        out.unlink(missing_ok=True)
        doc2, _, _ = cli("--home", str(ws), "--models", str(models), "predict", *folders, "--out", str(out), "--no-novelty")
        runs["predict"].append(doc2["images_per_s"])
        log(
            f"round {r}: score {doc['images_per_s']:.0f} img/s ({doc['scored']}), predict {doc2['images_per_s']:.0f} img/s ({doc2['written']})"
        )
        engine = doc2["engine"]
    med = {k: float(statistics.median(v)) for k, v in runs.items()}
    return {"images": args.images, "runs": runs, "median": med, "ratio": med["predict"] / med["score"], "engine": engine}


def _count(ws: Path) -> int:
    import sqlite3

    with sqlite3.connect(ws / "edge-al.sqlite3") as c:
        return int(c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])


def part_memory(args: argparse.Namespace, pool: Path, models: Path) -> dict[str, Any]:
    rows = []
    for n in (10_000, args.big):
        out = args.work / f"mem-{n}.parquet"
        out.unlink(missing_ok=True)
        shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)
        folders = [str(pool / f"d{k:04d}") for k in range(n // 1000)]
        doc, wall, rss = cli("--home", str(args.work / "ws-none"), "--models", str(models), "predict", *folders, "--out", str(out))
        rows.append(
            {"images": n, "peak_rss_mib": rss, "wall_s": round(wall, 1), "written": doc["written"], "images_per_s": doc["images_per_s"]}
        )
        log(f"memory: {n} images, peak RSS {rss} MiB, {doc['images_per_s']:.0f} img/s")
    return {"rows": rows}


def part_ray(args: argparse.Namespace, pool: Path, models: Path) -> dict[str, Any]:
    """Local vs Ray (1 actor x 2 CPUs, 2 actors x 1 CPU) at --images and at --big images, so the
    fixed cost (actor start-up, compile, planning) and the marginal images/s come apart."""
    import ray

    from edge_al.config import Settings
    from edge_al.predict import Predictor, resolve_model
    from edge_al.predict_cli import run_predict
    from edge_al.predict_ray import predict_ray

    settings = Settings(home=args.work / "ws-none", models_dir=models)
    mv = resolve_model(None, settings)
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, object_store_memory=512 << 20)
    out: dict[str, Any] = {"ray_startup_s": round(time.perf_counter() - t, 2), "sizes": {}}
    try:
        predictor = Predictor(mv, settings=settings, novelty=False)
        few = [str(p) for p in sorted((pool / "d0000").glob("*.jpg"))[:8]]
        for name, cpa in (("ray_1x2", 2), ("ray_2x1", 1)):  # a job of 8 images: what every job pays before its first image
            shards = args.work / "ray-fixed"
            fixed = []
            for _ in range(args.repeat):
                shutil.rmtree(shards, ignore_errors=True)
                fixed.append(predict_ray(few, shards, mv, settings, cpus_per_actor=cpa, quiet=True).seconds)
            out.setdefault("fixed_s", {})[name] = float(statistics.median(fixed))
        log(f"ray fixed cost per job: {out['fixed_s']}")
        for n in (args.images, args.big):
            folders = [str(pool / f"d{k:04d}") for k in range(n // 1000)]
            runs: dict[str, list[float]] = {"local": [], "ray_1x2": [], "ray_2x1": []}
            for r in range(args.repeat):
                dest = args.work / "local.parquet"
                dest.unlink(missing_ok=True)
                runs["local"].append(run_predict(folders, dest, predictor=predictor).seconds)
                for name, cpa in (("ray_1x2", 2), ("ray_2x1", 1)):
                    shards = args.work / f"ray-shards-{cpa}"
                    shutil.rmtree(shards, ignore_errors=True)
                    runs[name].append(predict_ray(folders, shards, mv, settings, cpus_per_actor=cpa, quiet=True).seconds)
                log(f"ray part, {n} images, round {r}: " + ", ".join(f"{k} {n / v[-1]:.0f} img/s" for k, v in runs.items()))
            out["sizes"][str(n)] = {k: {"seconds": v, "median_images_per_s": n / float(statistics.median(v))} for k, v in runs.items()}
    finally:
        ray.shutdown()
    big = out["sizes"][str(args.big)]
    best = max(("ray_1x2", "ray_2x1"), key=lambda k: big[k]["median_images_per_s"])
    out["best"] = best
    out["ratio"] = {n: v[best]["median_images_per_s"] / v["local"]["median_images_per_s"] for n, v in out["sizes"].items()}
    # per actor over a whole job of the larger size (fixed costs included)
    out["per_actor_images_per_s"] = big[best]["median_images_per_s"] / (1 if best == "ray_1x2" else 2)
    return out


def part_errors(args: argparse.Namespace, pool: Path, models: Path) -> dict[str, Any]:
    src = pool / "d0000"
    tmp = args.work / "errors-pool"
    shutil.rmtree(tmp, ignore_errors=True)
    for k in range(10):
        shutil.copytree(pool / f"d{k:04d}", tmp / f"d{k:04d}")
    victim = sorted((tmp / "d0004").glob("*.jpg"))[123]
    victim.write_bytes(victim.read_bytes()[:200])
    listing = args.work / "errors-list.txt"
    listing.write_text(f"{src / 'no-such-image.jpg'}\n")
    out = args.work / "errors.parquet"
    out.unlink(missing_ok=True)
    doc, _, _ = cli("--home", str(args.work / "ws-none"), "--models", str(models), "predict", str(tmp), f"@{listing}", "--out", str(out))
    import pyarrow.parquet as pq

    t = pq.read_table(out)
    errors = t.filter(t.column("error").is_valid()).to_pylist()
    ok = t.num_rows - len(errors)
    return {
        "rows": t.num_rows,
        "error_rows": [{"path": Path(e["path"]).name, "error": e["error"]} for e in errors],
        "scored_rows": ok,
        "scored_rows_with_label": int(t.filter(t.column("error").is_null()).column("label").drop_null().length()),
        "reported_errors": doc["errors"],
        "images_per_s": doc["images_per_s"],
    }


def write_md(res: dict[str, Any], out: Path) -> None:
    lines = [
        "# edge-al predict benchmarks (issue 10)",
        "",
        f"- CPU: {res['cpu']}; OpenVINO {res['openvino']}; Python {platform.python_version()}; Ray {res.get('ray_version', '-')}",
        f"- command: `{res['command']}`",
        "- model: a tiny real IR (u8 64x64x3 -> 32-d projection -> 4 classes; export.tools.fixtures.build_tiny_ir), so the figures"
        " measure reading, probing, decoding, inference plumbing and writing rather than a backbone; images: generated"
        " 96x96 JPEGs, reduced-scale decode to 64 px",
        f"- the machine is shared with other engineers' test runs (load average {res.get('load_average_at_start')} on 2 cores at the"
        " start): only ratios within this run mean anything, and even those move from round to round",
        "",
    ]
    if "throughput" in res:
        t = res["throughput"]
        lines += [
            f"## predict vs score, first pass, {t['images']:,} JPEGs (median of {len(t['runs']['score'])})",
            "",
            "| path | images/s (median) | runs |",
            "|---|---:|---|",
            f"| `edge-al score` first pass (empty image cache) | {t['median']['score']:,.0f} | {t['runs']['score']} |",
            f"| `edge-al predict POOL --out x.parquet` | {t['median']['predict']:,.0f} | {t['runs']['predict']} |",
            "",
            f"predict / score = **{t['ratio']:.2f}** (target >= 0.9: {'met' if t['ratio'] >= 0.9 else 'MISSED'}). Engine: {t['engine']}",
            "",
        ]
    if "memory" in res:
        lines += [
            "## peak RSS of `edge-al predict` (one child, `wait4`)",
            "",
            "| images | peak RSS (MiB) | wall (s) | images/s |",
            "|---:|---:|---:|---:|",
        ]
        for r in res["memory"]["rows"]:
            lines.append(f"| {r['images']:,} | {r['peak_rss_mib']} | {r['wall_s']} | {r['images_per_s']:,.0f} |")
        rows = res["memory"]["rows"]
        lines += ["", f"{rows[-1]['images']:,} images: {rows[-1]['peak_rss_mib']} MiB (target <= 1024: "
                  f"{'met' if rows[-1]['peak_rss_mib'] <= 1024 else 'MISSED'}); growth from 10,000: {rows[-1]['peak_rss_mib'] - rows[0]['peak_rss_mib']} MiB", ""]  # fmt: skip
    if "ray" in res:
        r = res["ray"]
        lines += [
            "## Ray on a 1-node local cluster (2 CPUs, 127.0.0.1) vs the local path, same JPEGs, in one process",
            "",
            "| images | path | images/s (median) | seconds per run |",
            "|---:|---|---:|---|",
        ]
        names = {"local": "local `run_predict` (what `edge-al predict` runs)", "ray_1x2": "`--ray`, 1 actor x 2 CPUs",
                 "ray_2x1": "`--ray`, 2 actors x 1 CPU"}  # fmt: skip
        for n, rows in r["sizes"].items():
            for k, v in rows.items():
                lines.append(f"| {int(n):,} | {names[k]} | {v['median_images_per_s']:,.0f} | {[round(x, 2) for x in v['seconds']]} |")
        ratios = ", ".join(f"{r['ratio'][n]:.2f} at {int(n):,} images ({'met' if r['ratio'][n] >= 0.7 else 'MISSED'})" for n in r["ratio"])
        best = r["best"]
        lines += [
            "",
            f"Ray ({names[best]}) / local, whole jobs, target >= 0.7: {ratios}. A job of 8 images took {r['fixed_s']} s (actor start-up, one model compile per actor,"
            f" planning, the shard write): that is not a fixed cost on a busy box, since larger jobs ran faster than it; read it"
            f" as what Ray's start-up costs under this load. Starting the local cluster took {r['ray_startup_s']} s (not included)."
            f" Per actor over the larger job: {r['per_actor_images_per_s']:,.0f} images/s.",
            "",
        ]
    if "errors" in res:
        e = res["errors"]
        lines += [
            "## one corrupt and one missing file among 10,000",
            "",
            f"rows {e['rows']:,}; error rows {len(e['error_rows'])}: {e['error_rows']}; scored rows {e['scored_rows']:,} "
            f"(all with a label: {e['scored_rows_with_label']:,}); the CLI reported {e['reported_errors']} errors and exit 3.",
            "",
        ]
    (out / "predict.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    args.work.mkdir(parents=True, exist_ok=True)
    need = max(args.images, args.big if {"memory", "ray"} & set(parts) else 0, 10_000)
    log(f"pool: {need} JPEGs under {args.work}")
    pool = make_pool(args.work / "pool", need)
    models = make_registry(args.work / "models")
    import openvino as ov

    res: dict[str, Any] = {"cpu": cpu_line(), "openvino": ov.get_version(), "command": "python scripts/bench_predict.py --work BENCH_WORK " + " ".join(
        f"--{k} {v}" for k, v in (("images", args.images), ("big", args.big), ("repeat", args.repeat), ("parts", args.parts)))}  # fmt: skip
    prev = args.out / "predict.json"
    if prev.exists():
        res = {**json.loads(prev.read_text()), **res}
    try:
        import ray

        res["ray_version"] = ray.__version__
    except ModuleNotFoundError:
        pass
    res["load_average_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    for part in parts:
        res[part] = {"throughput": part_throughput, "memory": part_memory, "ray": part_ray, "errors": part_errors}[part](args, pool, models)
        args.out.mkdir(parents=True, exist_ok=True)
        res = json.loads(json.dumps(res, default=str).replace(str(args.work.resolve()), "BENCH_WORK"))  # no machine paths in docs
        (args.out / "predict.json").write_text(json.dumps(res, indent=2))
        write_md(res, args.out)
    print((args.out / "predict.md").read_text())


if __name__ == "__main__":
    main()
