"""figures.save_figure: the same figure gives the same bytes, so regenerated results diff cleanly in git."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt

from biocredit.figures import save_figure


def _draw(stem: Path) -> dict[str, bytes]:
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [3, 1, 2], label="FA")
    ax.legend()
    return {p.suffix: p.read_bytes() for p in save_figure(fig, stem, provenance="scale smoke; commit abc")}


def test_the_same_figure_twice_gives_identical_png_and_pdf(tmp_path: Path):
    first = _draw(tmp_path / "a" / "fig")
    time.sleep(1.1)  # a creation date with one-second resolution would differ now
    second = _draw(tmp_path / "b" / "fig")
    assert set(first) == {".png", ".pdf"}
    assert first[".pdf"].startswith(b"%PDF") and first[".png"].startswith(b"\x89PNG")
    assert first == second


def test_weight_rows_are_kept_as_float16_z_scores_that_give_the_weights_back(tmp_path: Path):
    """figure_data keeps each unit's weights z-scored in float16 with its mean and sd: what the figure draws (per
    unit contrast) to float16's precision, and the weights back as mean + sd·z; a constant row stays finite."""
    import numpy as np
    import torch

    from biocredit.figures import _pack_rows, load_figure_data, save_figure_data

    g = torch.Generator().manual_seed(0)
    M = torch.randn(5, 784, generator=g) * torch.tensor([[1e-4], [1e-2], [1.0], [3.0], [0.0]]) + 0.5
    packed = _pack_rows(M)
    assert packed["z"].dtype == np.float16 and packed["mean"].dtype == np.float32
    back = packed["mean"][:, None] + packed["sd"][:, None] * packed["z"].astype(np.float64)
    err = np.abs(back - M.double().numpy()).max(1) / (M.double().std(1).numpy() + 1e-30)
    assert (err[:4] < 2e-3).all(), err  # relative to each row's own spread, however small
    assert np.isfinite(packed["z"]).all() and (packed["z"][4] == 0).all() and packed["sd"][4] == 0

    meta = {"kind": "receptive_fields", "titles": [["½‖z − x‖²", ""]]}
    path = save_figure_data(tmp_path / "d" / "f.npz", packed, meta)
    arrays, meta_back = load_figure_data(path)  # no pickle needed
    assert meta_back == meta and np.array_equal(arrays["z"], packed["z"])


def test_a_method_at_zero_error_throughout_is_named_on_a_log_axis_not_dropped_silently(tmp_path: Path, monkeypatch):
    """On a log axis a curve that is 0 at every point after epoch 0 (the discrete net's baseline 1 fits its training
    set by the first evaluation) has nothing to draw: the figure is still drawn, the other methods' curves are, and
    the panel says which method is 0 throughout (this raised 'cannot convert float NaN to integer' before)."""
    import pandas as pd

    import biocredit.figures as figures

    epochs = [0, 10, 20]
    stats = pd.DataFrame({
        "method": ["dtp"] * 3 + ["bp_sign"] * 3,
        "epoch": epochs * 2,
        "train_error_mean": [90.0, 0.5, 0.2, 90.0, 0.0, 0.0],
        "train_error_sd": [0.0] * 6, "train_error_min": [90.0, 0.4, 0.1, 90.0, 0.0, 0.0],
        "train_error_max": [90.0, 0.6, 0.3, 90.0, 0.0, 0.0], "n": [3] * 6,
    })
    exp = {"title": "discrete net", "dataset": "mnist",
           "methods": {"dtp": {"label": "DTP", "rule": "dtp"}, "bp_sign": {"label": "Baseline 1", "rule": "backprop"}}}
    seen = {}

    def capture(fig, out_stem, provenance=""):
        ax = fig.axes[0]
        seen["lines"] = [line.get_label() for line in ax.get_lines()]
        seen["texts"] = [t.get_text() for t in ax.texts]
        return save_figure(fig, out_stem, provenance)

    monkeypatch.setattr(figures, "save_figure", capture)
    paths = figures.plot_curves(stats, exp, {"name": "err", "metrics": ["train_error"], "log_y": True},
                                tmp_path / "err")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    assert seen["lines"] == ["DTP (n = 3)"]
    assert len(seen["texts"]) == 1 and "Baseline 1" in seen["texts"][0] and "DTP" not in seen["texts"][0]


def test_a_panel_with_no_finished_run_says_so_instead_of_drawing_nothing(tmp_path: Path, monkeypatch):
    """Partial tables (only BP has finished): the FA-vs-BP angle panel has no curve; it names the methods it
    waits for. A panel with any curve is drawn as before, with no such note."""
    import pandas as pd

    import biocredit.figures as figures

    stats = pd.DataFrame({"method": ["bp"] * 2, "epoch": [0, 1], "test_error_mean": [90.0, 5.0],
                          "test_error_sd": [0.0, 0.0], "n": [1, 1]})
    exp = {"title": "mnist", "dataset": "mnist",
           "methods": {"bp": {"label": "Backprop", "rule": "backprop"}, "fa": {"label": "FA", "rule": "feedback_alignment"}}}
    texts = {}

    def capture(fig, out_stem, provenance=""):
        texts[out_stem.name] = [t.get_text() for t in fig.axes[0].texts]
        return save_figure(fig, out_stem, provenance)

    monkeypatch.setattr(figures, "save_figure", capture)
    figures.plot_curves(stats, exp, {"name": "angle", "metric": "angle_dh_1", "methods": ["fa"]}, tmp_path / "angle")
    figures.plot_curves(stats, exp, {"name": "err", "metric": "test_error"}, tmp_path / "err")
    assert texts["angle"] == ["no finished run: FA"]
    assert texts["err"] == []  # BP is drawn; FA's absence is not written over a panel that has data


def test_a_figure_with_its_own_title_is_drawn_under_it_and_the_others_under_the_experiments(tmp_path: Path,
                                                                                            monkeypatch):
    """Lillicrap's MNIST experiment draws Fig. 2a and Fig. 2b: each is titled as the paper's figure it is."""
    import pandas as pd

    import biocredit.figures as figures

    stats = pd.DataFrame({"method": ["fa"] * 2, "epoch": [0, 1], "angle_dh_1_mean": [80.0, 40.0],
                          "angle_dh_1_sd": [0.0, 0.0], "test_error_mean": [90.0, 5.0], "test_error_sd": [0.0, 0.0],
                          "n": [1, 1]})
    exp = {"title": "MNIST (Fig. 2a)", "dataset": "mnist", "methods": {"fa": {"label": "FA", "rule": "feedback_alignment"}}}
    titles = {}

    def capture(fig, out_stem, provenance=""):
        titles[out_stem.name] = fig._suptitle.get_text()
        return save_figure(fig, out_stem, provenance)

    monkeypatch.setattr(figures, "save_figure", capture)
    figures.plot_curves(stats, exp, {"name": "err", "metric": "test_error"}, tmp_path / "err")
    figures.plot_curves(stats, exp, {"name": "angle", "metric": "angle_dh_1", "title": "MNIST (Fig. 2b)"},
                        tmp_path / "angle")
    assert titles == {"err": "MNIST (Fig. 2a)", "angle": "MNIST (Fig. 2b)"}


def _tick_labels(ymin: float, ymax: float) -> list[str]:
    from biocredit.figures import plain_log_y

    fig, ax = plt.subplots()
    ax.plot([0, 1], [ymin, ymax])
    plain_log_y(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in [*ax.yaxis.get_majorticklabels(), *ax.yaxis.get_minorticklabels()]
              if t.get_text() and ymin <= t.get_position()[1] <= ymax]
    plt.close(fig)
    return labels


def test_a_short_log_axis_is_labelled_with_plain_numbers_and_a_long_one_with_powers_of_ten():
    """Fig. 2a's test error (1.5-20 %) reads 2, 3, 10, 20, not "2 × 10⁰"; an NSE falling to 1e-14 keeps 10⁻ⁿ on
    every label, so no axis mixes the two styles."""
    short = _tick_labels(1.5, 20)
    assert "10" in short and "2" in short and "20" in short
    assert not any("times" in s or "^" in s for s in short)
    long = _tick_labels(1e-14, 1)
    assert long and all(s.startswith("$") and "10^" in s for s in long)


def test_the_provenance_line_names_a_few_commits_and_the_file_that_lists_them_all():
    """A run resumed over many sessions carries many commits: the figure's line names three and says how many
    more, and where the rest are, so it fits under the figure; seeds are ranges, partial tables say so."""
    from biocredit.cli import figure_note, seed_ranges

    assert seed_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert seed_ranges(list(range(20))) == "0-19"
    prov = {"seeds": [0, 1, 2], "git_commits": [f"{k:x}" * 40 for k in range(16)], "devices": ["cpu"],
            "config_hashes": ["a" * 16, "b" * 16, "c" * 16], "runs": 7, "partial": True,
            "missing_runs": [f"r{k}" for k in range(73)]}
    note = figure_note("paper", prov, "lillicrap_mnist")
    assert note.startswith("scale paper; PARTIAL: 7 of 80 runs; seeds 0-2; ")
    assert f"commit {'0' * 12},{'1' * 12},{'2' * 12} +13 more;" in note
    assert f"config {'a' * 16},{'b' * 16} +1 more (all in tables/lillicrap_mnist_provenance.json)" in note
    assert '3' * 12 not in note and 'c' * 16 not in note
    prov.update(git_commits=["f" * 40], config_hashes=["a" * 16], partial=False)
    assert figure_note("quick", prov, "x") == f"scale quick; seeds 0-2; commit {'f' * 12}; device cpu; config {'a' * 16}"


def test_a_weight_figure_names_the_seed_it_was_drawn_from_not_the_whole_table(tmp_path: Path):
    """The receptive fields are seed 0's weights: the line under them names seed 0's runs and their commits,
    not every seed of the table."""
    import pandas as pd

    from biocredit.cli import weight_figure_note
    from biocredit.figures import save_figure_data

    data = tmp_path / "fig.npz"
    save_figure_data(data, {}, {"kind": "receptive_fields", "seed": 0, "runs": {"bp": "r/bp/seed0", "fa": "r/fa/seed0"}})
    rows = [{"method": m, "seed": s, "git_commit": f"{m}{s}".ljust(40, "0"),
             "git_commits": f"{m}{s}".ljust(40, "0") + (";" + "e" * 40 if m == "fa" else ""),
             "device": "cpu", "config_hash": f"h{m}{s}"} for m in ("bp", "fa", "shallow") for s in (0, 1)]
    pd.DataFrame(rows).to_csv(tmp_path / "exp_runs.csv", index=False)
    note = weight_figure_note("paper", data, tmp_path, "exp")
    assert note == (f"scale paper; bp, fa: seed 0; commit {'bp0'.ljust(12, '0')},{'fa0'.ljust(12, '0')},{'e' * 12}; "
                    "device cpu; config hbp0,hfa0")
    (tmp_path / "exp_runs.csv").unlink()
    assert weight_figure_note("paper", data, tmp_path, "exp") == ""
