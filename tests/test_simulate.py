"""The active-learning simulation: split, analysis and reports (fast), and one real run (slow)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge_al.errors import InvalidInput
from export.tools.simulate import (
    COLD_ROW,
    SimConfig,
    labels_to_reach,
    read_dataset,
    split_dataset,
    summarize,
    write_digits_folders,
    write_reports,
)


def _items(tmp_path: Path, counts: dict[str, int]) -> list[tuple[Path, str]]:
    return [(tmp_path / c / f"{c}_{i:03d}.png", c) for c, n in counts.items() for i in range(n)]


def test_group_split_keeps_groups_whole_and_holds_out_each_class(tmp_path: Path) -> None:
    items = _items(tmp_path, {"a": 60, "b": 30, "rare": 7})
    groups = {(c, p.name): f"{c}_g{int(p.stem.split('_')[-1]) // 3}" for p, c in items}  # 3 images per group
    split = split_dataset(items, groups, 0.3, seed=0)
    group_of = {str(p): groups[(c, p.name)] for p, c in items}
    pool_groups = {group_of[str(p)] for p, _ in split.pool}
    test_groups = {group_of[str(p)] for p, _ in split.test}
    assert not pool_groups & test_groups
    assert len(split.pool) + len(split.test) == len(items)
    assert set(split.test_counts) == {"a", "b", "rare"}
    assert split.rarest == "rare"
    # 30% of each class's groups: a has 20 groups -> 6 held out
    assert split.test_counts["a"] == 18
    assert split_dataset(items, groups, 0.3, seed=0) == split  # deterministic


def test_stratified_split_without_groups(tmp_path: Path) -> None:
    items = _items(tmp_path, {"a": 50, "b": 10, "c": 1})
    split = split_dataset(items, None, 0.3, seed=1)
    assert split.test_counts == {"a": 15, "b": 3}
    assert split.pool_counts == {"a": 35, "b": 7, "c": 1}
    assert not split.grouped


def test_read_dataset_needs_class_folders(tmp_path: Path) -> None:
    assert write_digits_folders(tmp_path / "d", classes=[0, 1], limit=20) == 20
    items = read_dataset(tmp_path / "d")
    assert len(items) == 20 and {c for _, c in items} == {"d0", "d1"}
    with pytest.raises(InvalidInput):
        read_dataset(tmp_path / "missing")


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="random"):
        SimConfig(data=tmp_path, out=tmp_path, strategies=("hybrid",)).validate()
    with pytest.raises(InvalidInput, match="strategies"):
        SimConfig(data=tmp_path, out=tmp_path, strategies=("random", "bogus")).validate()
    with pytest.raises(InvalidInput, match="batch"):
        SimConfig(data=tmp_path, out=tmp_path, batch=0).validate()
    with pytest.raises(InvalidInput, match="reference_mode"):
        SimConfig(data=tmp_path, out=tmp_path, reference_mode="tune").validate()


def test_labels_to_reach_interpolates_the_mean_curve() -> None:
    labels = np.array([20.0, 40.0, 60.0])
    vals = np.array([[0.2, 0.4, 0.6], [0.2, 0.6, 0.8]])  # mean 0.2, 0.5, 0.7
    assert labels_to_reach(labels, vals, 0.2) == 20.0
    assert labels_to_reach(labels, vals, 0.35) == pytest.approx(30.0)
    assert labels_to_reach(labels, vals, 0.7) == pytest.approx(60.0)
    assert labels_to_reach(labels, vals, 0.9) is None


def _synthetic_results(tmp_path: Path) -> dict:
    points = []
    for strategy, gain in (("random", 0.05), ("hybrid", 0.1)):
        for seed in (0, 1):
            for rnd in range(3):
                ba = 0.3 + gain * rnd + 0.01 * seed
                points.append({
                    "strategy": strategy, "seed": seed, "round": rnd, "labels": 10 + 5 * rnd, "accuracy": ba + 0.1,
                    "balanced_accuracy": ba, "rarest_recall": 0.1 * rnd, "rarest_labeled": rnd, "classes_labeled": 2,
                    "labeled_counts": {"a": 8, "b": 2 + 5 * rnd}, "recall": {"a": ba, "b": ba}, "version": f"v000{rnd + 1}",
                    "precision": "int8", "int8_fallback": False, "select_s": 0.0, "train_s": 1.0, "export_s": 1.0, "score_s": 0.1,
                })  # fmt: skip
    return {
        "config": {
            "data": str(tmp_path / "pool"),
            "groups": None,
            "test_fraction": 0.3,
            "split_seed": 0,
            "initial": 10,
            "batch": 5,
            "arch": "resnet18",
            "image_size": 32,
            "weights": "none",
            "epochs": 1,
            "warm_epochs": None,
            "warm_start": True,
            "calibration_size": 16,
        },
        "dataset": {"classes": ["a", "b"], "rarest": "b", "grouped_split": False, "pool": {"a": 30, "b": 10}, "test": {"a": 10, "b": 5}},
        "initial_sets": {"0": [1, 2], "1": [3, 4]},
        "references": [{"seed": 0, "labels": 40, "accuracy": 0.8, "balanced_accuracy": 0.5, "recall": {}}],
        "rarest_first_found": {"random": {"0": 15, "1": None}, "hybrid": {"0": 11, "1": 12}},
        "precisions": {"int8": 12},
        "points": points,
        "elapsed_s": 1.0,
    }


def test_summary_figures_and_reports(tmp_path: Path) -> None:
    results = _synthetic_results(tmp_path)
    sm = summarize(results)
    results["summary"] = sm
    assert sm["target_balanced_accuracy"] == pytest.approx(0.475)
    rnd, hyb = sm["strategies"]["random"], sm["strategies"]["hybrid"]
    assert rnd["labels_to_random_final"] == pytest.approx(20.0) and rnd["ratio_to_random_final"] == pytest.approx(1.0)
    # hybrid's mean curve 0.305, 0.405, 0.505 crosses random's final 0.405 at 15 labels
    assert hyb["labels_to_random_final"] == pytest.approx(15.0)
    assert hyb["paired_wins"] == 4 and hyb["paired_losses"] == 0 and hyb["seeds_aulc_above_random"] == 2
    assert rnd["labels_to_95pct_reference"] is None and hyb["labels_to_95pct_reference"] == pytest.approx(18.5)
    assert hyb["rarest_found_seeds"] == 2 and rnd["rarest_found_seeds"] == 1
    assert rnd["rarest_first_mean_censored"] == pytest.approx((15 + 21) / 2)
    assert hyb["rarest_speedup_vs_random"] == pytest.approx(18 / 11.5)
    write_reports(results, tmp_path / "out")
    for name in ("points.csv", "results.json", "curves.png", "rarest.png", "summary.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "| hybrid |" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.slow
def test_simulation_end_to_end_on_a_tiny_digits_pool(tmp_path: Path) -> None:
    from export.tools.simulate import run_simulation

    pytest.importorskip("torch")
    data = tmp_path / "digits"
    write_digits_folders(data, classes=[0, 1, 2], limit=150)
    cfg = SimConfig(
        data=data, out=tmp_path / "out", strategies=("random", "hybrid"), seeds=2, initial=10, batch=5, rounds=2,
        image_size=32, epochs=1, calibration_size=16, sample_size=16, reference_seeds=1, progress=False, exporter="torchscript",
        reference_mode="finetune", reference_epochs=1,
    )  # fmt: skip
    results = run_simulation(cfg)
    out = tmp_path / "out"
    for name in ("points.csv", "results.json", "curves.png", "rarest.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "work").exists()
    assert "- INT8 gates over " in (out / "summary.md").read_text()
    # 17 versions (2 seeds x (round 0 + cold round 0 + 3 rows x 2 rounds) + the reference); heads on a
    # backbone IR already run on the test set are evaluated on its embeddings
    ev = results["test_evaluations"]
    assert ev["ir"] + ev["head"] == 17 and ev["head"] >= 1 and "- Test set: " in (out / "summary.md").read_text()

    points = results["points"]
    assert len(points) == 3 * 2 * 3  # (strategies + the cold-start row) x seeds x (round 0 + 2 rounds)
    for p in points:
        assert p["labels"] == 10 + 5 * p["round"]
        for key in ("accuracy", "balanced_accuracy", "rarest_recall"):
            assert math.isfinite(p[key]) and 0.0 <= p[key] <= 1.0, (key, p)
        assert p["precision"] in ("int8", "fp32", "fp16")
        assert sum(p["labeled_counts"].values()) == p["labels"]
        g = p["int8_gates"]  # what decided the precision, per round
        assert (p["precision"] == "int8") == bool(g["agreement_passed"] and g["accuracy_passed"]), (p["precision"], g)
        assert g["val_n"] >= 1 and g["lost"] + g["won"] <= g["val_n"] and 0.0 < g["sign_test_p"] <= 1.0
    for strategy in ("random", "hybrid", COLD_ROW):
        for seed in (0, 1):
            rounds = sorted(p["round"] for p in points if p["strategy"] == strategy and p["seed"] == seed)
            assert rounds == [0, 1, 2]
    # paired seeds: round 0 is one shared model per seed, from one initial set
    for seed in (0, 1):
        r0 = [p for p in points if p["seed"] == seed and p["round"] == 0 and p["strategy"] != COLD_ROW]
        assert len({(p["version"], p["balanced_accuracy"]) for p in r0}) == 1
        # the cold-start row starts from its own, label-free initial set of the same size
        cold0 = [p for p in points if p["seed"] == seed and p["round"] == 0 and p["strategy"] == COLD_ROW]
        assert len(cold0) == 1 and cold0[0]["labels"] == 10
    assert set(results["initial_sets"]) == {"0", "1"} and all(len(v) == 10 for v in results["initial_sets"].values())
    assert results["initial_sets"]["0"] != results["initial_sets"]["1"]

    assert len(results["references"]) == 1 and math.isfinite(results["references"][0]["balanced_accuracy"])
    # the reference fine-tuned every layer (its own IR, not a head on the rounds' backbone), and says so
    assert results["references"][0]["mode"] == "finetune" and results["references"][0]["epochs"] == 1
    assert ", mode finetune, 1 epochs, " in (out / "summary.md").read_text()
    sm = results["summary"]
    assert set(sm["strategies"]) == {"random", "hybrid", COLD_ROW}
    base = results["baselines"]
    assert base["random"]["labels"] == 20 and 0.0 <= base["all_labels"]["balanced_accuracy"] <= 1.0
    for s in sm["strategies"].values():
        assert math.isfinite(s["aulc"]) and math.isfinite(s["final_balanced_accuracy"])
    hyb = sm["strategies"]["hybrid"]
    assert hyb["paired_wins"] + hyb["paired_ties"] + hyb["paired_losses"] == 4  # 2 seeds x 2 rounds

    with open(out / "points.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(points) and {"recall_d0", "labeled_d2", "balanced_accuracy"} <= set(rows[0])
    assert json.loads((out / "results.json").read_text())["summary"]["strategies"].keys() == sm["strategies"].keys()
