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
