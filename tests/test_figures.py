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
