"""Verdicts of the paper-comparison table: claims with t-tests over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from scipy import stats

from biocredit.aggregate import claim_verdict


def runs(values: dict[str, list[float]], seeds: list[int] | None = None) -> pd.DataFrame:
    rows = []
    for method, vals in values.items():
        for seed, v in zip(seeds or range(len(vals)), vals, strict=True):
            rows.append({"method": method, "seed": seed, "final_test_error": v})
    return pd.DataFrame(rows)


CLAIM = {"text": "deep beats shallow", "metric": "test_error", "lower": ["deep"], "higher": ["shallow"], "alpha": 0.05}
# Each seed is a different task (a different teacher): large differences between seeds, and within every seed
# the deep student is a little better.
TASK = [0.10, 0.30, 0.05, 0.50, 0.20, 0.40]
DEEP = [t - 0.01 + 0.003 * (k % 3) for k, t in enumerate(TASK)]
SHALLOW = [t + 0.01 for t in TASK]


def test_paired_test_sees_a_within_seed_difference_that_a_two_sample_test_misses():
    df = runs({"deep": DEEP, "shallow": SHALLOW})
    verdict_w, stat_w = claim_verdict({**CLAIM, "test": "welch"}, df)
    verdict_p, stat_p = claim_verdict({**CLAIM, "test": "paired"}, df)
    assert verdict_w == "does NOT hold" and "welch" in stat_w
    assert verdict_p == "holds" and "paired" in stat_p
    t, p = stats.ttest_rel(DEEP, SHALLOW)
    assert f"p = {p:.2g}" in stat_p and f"t = {t:.2f}" in stat_p


def test_paired_test_uses_only_the_seeds_both_methods_finished():
    df = pd.concat([runs({"deep": DEEP}), runs({"shallow": SHALLOW[:4]})])  # two shallow runs missing
    _, stat = claim_verdict({**CLAIM, "test": "paired"}, df)
    assert "(n = 4, 4)" in stat


def test_paired_test_fails_when_the_deep_student_is_worse_in_some_seeds():
    worse = [d + (0.03 if k % 2 else -0.001) for k, d in enumerate(SHALLOW)]
    verdict, _ = claim_verdict({**CLAIM, "test": "paired"}, runs({"deep": worse, "shallow": SHALLOW}))
    assert verdict == "does NOT hold"


def test_a_claim_on_a_metric_no_finished_run_logged_says_so_instead_of_failing():
    """Partial tables: only BP has finished, and the angle to BP is logged by FA runs alone, so the runs table has
    no column for it yet."""
    df = runs({"bp": [2.6]})
    angle = {"text": "angle below 80", "metric": "angle_dh_1", "lower": ["fa"], "below": 80}
    assert claim_verdict(angle, df) == ("no finished run of fa", "")
    below = {"text": "pbp below bp", "metric": "test_error", "below_metric": "angle_dh_1", "lower": ["bp"]}
    assert claim_verdict(below, df)[0] == "no finished run with angle_dh_1 of bp"


# --- early stopping: a reported number read at each run's lowest validation error -------------------------------
def write_run(d, method: str, seed: int, valid: list[float], test: list[float]) -> None:

    d.mkdir(parents=True)
    n = len(valid)
    pd.DataFrame({"epoch": range(1, n + 1), "examples_seen": [100 * e for e in range(1, n + 1)],
                  "valid_error": valid, "test_error": test}).to_csv(d / "metrics.csv", index=False)
    (d / "summary.json").write_text(json.dumps({
        "experiment": "e", "method": method, "rule": "r", "seed": seed, "scale": "paper", "status": "completed",
        "epochs_done": n, "epochs": n, "final": {"epoch": n, "valid_error": valid[-1], "test_error": test[-1]},
        "best_test_error": min(test), "wall_seconds": 1.0,
        "provenance": {"config_hash": "h", "git_commit": "c", "device": "cpu", "torch": "t", "n_train": 1, "n_test": 1}}))


def test_early_stopping_reads_the_test_error_at_the_lowest_validation_error_not_the_lowest_test_error(tmp_path):
    from biocredit.aggregate import comparison_rows, load_runs

    # validation is lowest at epoch 2; the test error is lowest at epoch 3 (an early stop on test would pick it)
    write_run(tmp_path / "a0", "dtp", 0, valid=[50, 40, 45, 48], test=[51, 44, 42, 49])
    write_run(tmp_path / "a1", "dtp", 1, valid=[50, 42, 41, 48], test=[51, 45, 46, 50])
    runs_df, _ = load_runs([tmp_path / "a0", tmp_path / "a1"])
    assert runs_df["valid_best_epoch"].tolist() == [2.0, 3.0]
    assert runs_df["valid_best_test_error"].tolist() == [44.0, 46.0]
    exp = {"reported": [
        {"method": "dtp", "metric": "test_error", "value": 45.0, "tolerance": 1.5, "source": "s"},
        {"method": "dtp", "metric": "test_error", "value": 45.0, "tolerance": 1.5, "source": "s", "at": "valid_best"}]}
    table = comparison_rows("e", exp, runs_df, "paper")
    final, early = table.iloc[0], table.iloc[1]
    assert final["ours_mean"] == 49.5 and final["verdict"].startswith("NOT reproduced")
    assert early["ours_mean"] == 45.0 and early["verdict"] == "reproduced"
    assert "lowest valid_error" in early["metric"]


def test_without_a_validation_set_an_early_stopped_number_has_no_runs(tmp_path):

    from biocredit.aggregate import comparison_rows, load_runs

    write_run(tmp_path / "a0", "dtp", 0, valid=[50, 40], test=[51, 44])
    m = pd.read_csv(tmp_path / "a0" / "metrics.csv").drop(columns="valid_error")
    m.to_csv(tmp_path / "a0" / "metrics.csv", index=False)
    s = json.loads((tmp_path / "a0" / "summary.json").read_text())
    runs_df, _ = load_runs([tmp_path / "a0"])
    assert "valid_best_epoch" not in runs_df.columns and s["status"] == "completed"
    rep = {"method": "dtp", "metric": "test_error", "value": 45.0, "tolerance": 1.5, "source": "s", "at": "valid_best"}
    assert comparison_rows("e", {"reported": [rep]}, runs_df, "paper").iloc[0]["verdict"] == "no finished run"


def finished_run(d: Path, seed: int, provenance: dict, wall_seconds: float = 1.0) -> Path:
    """A minimal finished run folder (one metrics row, a summary.json with the given provenance)."""

    d.mkdir()
    (d / "metrics.csv").write_text("epoch,test_error\n9,1.0\n")
    (d / "summary.json").write_text(json.dumps({
        "experiment": "e", "method": "m", "rule": "r", "seed": seed, "scale": "paper", "status": "completed",
        "epochs_done": 9, "epochs": 9, "final": {"epoch": 9, "test_error": 1.0}, "best_test_error": 1.0,
        "wall_seconds": wall_seconds, "provenance": {"config_hash": "h", "device": "cpu", "torch": "t", "n_train": 1,
                                                     "n_test": 1, **provenance}}))
    return d


def test_a_run_resumed_at_another_commit_lists_both_commits_in_the_provenance(tmp_path):
    """A killed run resumed after a commit trained under two commits: the runs table and the experiment's
    provenance name both (older summaries without segments still give their one commit)."""

    from biocredit.aggregate import load_runs, provenance_record

    for seed, prov in ((0, {"git_commit": "bbb", "segments": [{"from_epoch": 0, "to_epoch": 4, "git_commit": "aaa"},
                                                              {"from_epoch": 4, "to_epoch": 9, "git_commit": "bbb"}]}),
                       (1, {"git_commit": "ccc"})):
        finished_run(tmp_path / f"seed{seed}", seed, prov)
    runs, _ = load_runs([tmp_path / "seed0", tmp_path / "seed1"])
    assert runs["git_commits"].tolist() == ["aaa;bbb", "ccc"]
    assert provenance_record(runs)["git_commits"] == ["aaa", "bbb", "ccc"]


def test_training_time_counts_an_ensemble_job_once(tmp_path):
    """Each seed of an ensemble job records the job's whole wall time: the provenance's job time splits it over
    the seeds (per training segment), while the sum over runs counts it once per seed; the compare line says so."""

    from biocredit.aggregate import load_runs, provenance_record
    from biocredit.cli import _training_time

    seg = {"from_epoch": 0, "to_epoch": 9, "git_commit": "a"}
    cases = [  # (provenance beyond the basics, wall_seconds, the run's share of its jobs' time)
        ({"ensemble_size": 20, "segments": [{**seg, "ensemble_size": 20, "wall_seconds": 100.0}]}, 100.0, 5.0),
        # killed in a 20-seed ensemble, resumed alone by train(): each segment split by its own size
        ({"ensemble_size": 20, "segments": [{**seg, "ensemble_size": 20, "wall_seconds": 100.0},
                                            {**seg, "ensemble_size": 1, "wall_seconds": 3.0}]}, 103.0, 8.0),
        # written before segments recorded their size: the provenance's
        ({"ensemble_size": 4, "segments": [{**seg, "wall_seconds": 8.0}]}, 8.0, 2.0),
        ({}, 7.0, 7.0),  # a separate run without segments
    ]
    dirs = [finished_run(tmp_path / f"seed{seed}", seed, {"git_commit": "a", **prov}, wall)
            for seed, (prov, wall, _) in enumerate(cases)]
    runs, _ = load_runs(dirs)
    assert runs["job_seconds"].tolist() == [c[2] for c in cases]
    record = provenance_record(runs)
    assert record["wall_seconds_total"] == 218.0 and record["job_seconds_total"] == 22.0
    assert _training_time(record) == ("training wall time 22 s of jobs (218 s summed over runs: seeds trained as "
                                      "one ensemble)")
    assert _training_time({**record, "wall_seconds_total": 22.0}) == "training wall time 22 s"
    assert "summed over runs" in _training_time({"wall_seconds_total": 218.0})  # a table from before job_seconds


# --- claims about the start and the speed (Lillicrap Fig. 1: the angle starts near 90°, FA as quick as BP) ----
def curve_run(d: Path, method: str, seed: int, nse: list[float], angle: list[float] | None = None) -> None:
    """A finished run whose rows come every 100 examples from 0; the angle is not logged on row 0."""
    d.mkdir(parents=True)
    rows = {"epoch": [0.01 * k for k in range(len(nse))], "examples_seen": [100 * k for k in range(len(nse))],
            "test_error": nse}
    if angle is not None:
        rows["angle_dh_1"] = [float("nan"), *angle]
    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    final = {"epoch": 1, "test_error": nse[-1], **({"angle_dh_1": angle[-1]} if angle else {})}
    (d / "summary.json").write_text(json.dumps({
        "experiment": "e", "method": method, "rule": "r", "seed": seed, "scale": "quick", "status": "completed",
        "epochs_done": 1, "epochs": 1, "final": final, "best_test_error": min(nse), "wall_seconds": 1.0,
        "provenance": {"config_hash": "h", "git_commit": "c", "device": "cpu", "torch": "t", "n_train": 1, "n_test": 1}}))


def test_claims_read_the_first_logged_value_and_how_soon_a_value_is_reached(tmp_path: Path):
    from biocredit.aggregate import comparison_rows, load_runs

    curve_run(tmp_path / "fa0", "fa", 0, [1.0, 0.5, 0.008, 0.001], angle=[88.0, 40.0, 30.0])
    curve_run(tmp_path / "fa1", "fa", 1, [1.0, 0.2, 0.05, 0.009], angle=[84.0, 50.0, 20.0])
    curve_run(tmp_path / "bp0", "bp", 0, [1.0, 0.9, 0.02, 0.005])
    curve_run(tmp_path / "bp1", "bp", 1, [1.0, 0.9, 0.3, 0.004])
    curve_run(tmp_path / "sh0", "shallow", 0, [1.0, 0.6, 0.4, 0.35])
    curve_run(tmp_path / "sh1", "shallow", 1, [1.0, 0.6, 0.4, 0.009])  # reaches it on its last row
    runs_df, curves = load_runs(sorted(tmp_path.iterdir()))
    # the first row that logs the angle (row 0 does not), not the last
    assert runs_df.set_index(["method", "seed"]).loc[("fa", 1), "first_angle_dh_1"] == 84.0
    starts = {"text": "starts near 90", "metric": "angle_dh_1", "at": "first", "higher": ["fa"], "above": 80,
              "source": "s"}
    assert claim_verdict(starts, runs_df) == ("holds", "fa 86")
    assert claim_verdict({**starts, "above": 87}, runs_df)[0] == "does NOT hold"
    ends = {"text": "ends below 60", "metric": "angle_dh_1", "lower": ["fa"], "below": 60}
    assert claim_verdict(ends, runs_df) == ("holds", "fa 25")
    # FA reaches NSE 0.01 after 200 and 300 examples (mean 250), BP after 300 and 300
    quick = {"text": "fa as quick", "metric": "test_error", "reach": 0.01, "lower": ["fa"], "higher": ["bp"],
             "source": "s"}
    verdict, stat = claim_verdict(quick, runs_df, curves)
    assert verdict == "holds" and stat == "test_error <= 0.01 after: fa 250 examples; bp 300 examples"
    assert claim_verdict({**quick, "lower": ["bp"], "higher": ["fa"]}, runs_df, curves)[0] == "does NOT hold"
    assert claim_verdict({**quick, "lower": ["bp"], "higher": ["fa"], "margin": 60}, runs_df, curves)[0] == "holds"
    # one shallow run never reaches it: the method is infinitely late, and the table says how many runs did
    slow = {**quick, "lower": ["fa", "bp"], "higher": ["shallow"]}
    verdict, stat = claim_verdict(slow, runs_df, curves)
    assert verdict == "holds" and stat.endswith("shallow 300 examples in 1 of 2 runs, never in 1")
    assert claim_verdict({**quick, "lower": ["shallow"], "higher": ["fa"]}, runs_df, curves)[0] == "does NOT hold"
    # only finished runs count: a shallow run still training is left out of the rows
    unfinished = runs_df[~((runs_df["method"] == "shallow") & (runs_df["seed"] == 0))]
    assert claim_verdict(slow, unfinished, curves)[1].endswith("shallow 300 examples")
    table = comparison_rows("e", {"claims": [starts, quick]}, runs_df, "quick", curves=curves)
    assert table["verdict"].tolist() == ["holds", "holds"]
    assert table["metric"].tolist() == ["angle_dh_1 (first row)", "test_error (how soon <= 0.01)"]
    assert comparison_rows("e", {"claims": [quick]}, runs_df, "quick")["verdict"].iloc[0].startswith("no finished run")


# --- the report's captions ---------------------------------------------------------------------------------------
def test_a_figures_caption_lists_the_rows_about_what_it_draws_with_their_source_and_length(tmp_path: Path):
    from biocredit.aggregate import caption_lines, comparison_rows, load_runs

    curve_run(tmp_path / "fa0", "fa", 0, [1.0, 0.5, 0.008, 0.001], angle=[88.0, 40.0, 30.0])
    curve_run(tmp_path / "bp0", "bp", 0, [1.0, 0.9, 0.02, 0.005])
    runs_df, curves = load_runs(sorted(tmp_path.iterdir()))
    exp = {"figure": "Fig. 2a",
           "reported": [{"method": "bp", "metric": "test_error", "value": 0.01, "tolerance": 0.01, "source": "Table 9"}],
           "claims": [{"text": "ends below 60", "metric": "angle_dh_1", "lower": ["fa"], "below": 60,
                       "figure": "Fig. 2b", "source": "Fig. 2b text"},
                      {"text": "fa as quick", "metric": "test_error", "reach": 0.01, "lower": ["fa"], "higher": ["bp"],
                       "source": "Fig. 2a text"}]}
    table = comparison_rows("e", exp, runs_df, "paper", curves=curves)
    # a number or claim of another of the paper's figures than the experiment's names its own
    assert table["figure"].tolist() == ["Fig. 2a", "Fig. 2b", "Fig. 2a"]
    every = caption_lines(table)
    assert len(every) == 3
    assert every[0] == ("test_error, bp: paper 0.01, ours 0.01 ± — (n = 1), tolerance ± 0.01: reproduced "
                        "(paper scale, 1 epoch; source: Table 9)")
    assert every[1] == "ends below 60 (fa): fa 30: holds (paper scale, 1 epoch; source: Fig. 2b text)"
    # a figure of the angle lists the angle's claim only; one of the error, the number and the "how soon" claim
    assert caption_lines(table, ["angle_dh_1"]) == [every[1]]
    assert caption_lines(table, ["test_error", "train_error"]) == [every[0], every[2]]
    assert caption_lines(table, []) == []
    # a number read at another epoch than the last names its reading after the metric: still the error's
    early = table.iloc[[0]].assign(metric="test_error at the epoch of lowest valid_error")
    assert len(caption_lines(early, ["test_error"])) == 1 and caption_lines(early, ["angle_dh_1"]) == []
