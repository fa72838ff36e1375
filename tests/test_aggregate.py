"""Verdicts of the paper-comparison table: claims with t-tests over seeds."""

from __future__ import annotations

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
