"""benchmarks/paper_estimate.py: the paper-scale extrapolation from measured GPU jobs (issue #6)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "paper_estimate", Path(__file__).resolve().parents[1] / "benchmarks" / "paper_estimate.py")
pe = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pe)


def job(e: str, m: str, **kw) -> dict:
    return {"experiment": e, "method": m, "seeds": 1, "epochs": 2, "job_seconds": 10.0, "train_seconds": 4.0,
            "epoch_seconds": 1.0, "eval_seconds": 0.1, "probe_seconds": 0.0, **kw}


def config(**experiments) -> dict:
    return {"experiments": experiments}


def test_an_image_run_is_the_measured_job_plus_the_missing_epochs_and_evaluations():
    cfg = config(img={"dataset": "mnist", "methods": {"a": {}, "b": {}},
                      "scales": {"paper": {"epochs": 100, "seeds": 3, "eval_every_epochs": 10}}})
    rows, _ = pe.estimate(cfg, {"jobs": {"img-a": job("img", "a"), "img-b": job("img", "b", epoch_seconds=2.0)}})
    # a: 10 s measured (2 epochs, 3 rows) + 98 epochs x 1 s + (ceil(100/10) + 1 - 3) = 8 more evaluations x 0.1 s
    per = rows[0]["per_run_minutes"]
    assert per["a"] * 60 == pytest.approx(10 + 98 * 1.0 + 8 * 0.1)
    assert per["b"] * 60 == pytest.approx(10 + 98 * 2.0 + 8 * 0.1)
    assert rows[0]["runs"] == 6  # 2 methods x 3 seeds
    assert rows[0]["hours"] * 3600 == pytest.approx(3 * (per["a"] + per["b"]) * 60)


def test_a_synthetic_ensemble_job_covers_every_seed_and_scales_with_the_passes():
    cfg = config(syn={"dataset": "synthetic_teacher", "methods": {"fa": {}},
                      "scales": {"paper": {"epochs": 20, "seeds": 20}}})
    rows, _ = pe.estimate(cfg, {"jobs": {"syn-fa": job("syn", "fa", seeds=20, epochs=1, job_seconds=12.0,
                                                        train_seconds=10.0)}})
    assert rows[0]["runs"] == 1  # one 20-seed ensemble job per method
    assert rows[0]["per_run_minutes"]["fa"] * 60 == pytest.approx(12 + 19 * 10.0)


def test_unmeasured_methods_take_the_mean_of_the_measured_ones_and_say_so():
    cfg = config(img={"dataset": "mnist", "methods": {"a": {}, "b": {}, "c": {}},
                      "scales": {"paper": {"epochs": 2, "seeds": 1}}})
    rows, _ = pe.estimate(cfg, {"jobs": {"img-a": job("img", "a", job_seconds=10.0),
                                         "img-b": job("img", "b", job_seconds=20.0)}})
    assert rows[0]["per_run_minutes"]["c"] * 60 == pytest.approx(15.0)
    assert "c: not measured" in rows[0]["note"]


def test_an_experiment_without_any_measured_job_is_reported_as_such_not_as_zero():
    cfg = config(cifar={"dataset": "cifar10", "methods": {"dtp": {}}, "scales": {"paper": {"epochs": 100, "seeds": 3}}})
    rows, _ = pe.estimate(cfg, {"jobs": {}})
    assert rows[0]["hours"] is None and "no job measured" in rows[0]["note"]


def test_packing_throughput_is_jobs_per_second_relative_to_one_job():
    _, info = pe.estimate(config(), {"jobs": {}, "packing_seconds": {"1": 8.0, "4": 9.0, "16": 16.0}})
    assert info == {"packed_jobs": 16, "packing_throughput": 8.0}
    assert math.isclose(16 * 8.0 / 16.0, info["packing_throughput"])
