"""The figures of ``edgevit inspect`` (matplotlib, written as PNG files beside its page)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _grid_figure(images: list[np.ndarray], titles: list[str], path: Path, suptitle: str, cmap=None, vmin=None,
                 vmax=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t in zip(axes.ravel(), images, titles):
        ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(t, fontsize=7)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_filters(comps: np.ndarray, ratio: np.ndarray, path: Path, layer: str) -> None:
    imgs = []
    for c in comps:
        img = np.moveaxis(c, 0, -1)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
        imgs.append(img)
    _grid_figure(imgs, [f"PC{i + 1} {r * 100:.1f}%" for i, r in enumerate(ratio)], path,
                 f"Principal components of {layer} filters (RGB)")


def draw_position_similarity(sim: np.ndarray, path: Path) -> None:
    gh, gw = sim.shape[:2]
    imgs = [sim[i, j] for i in range(gh) for j in range(gw)]
    _grid_figure(imgs, [f"({i},{j})" for i in range(gh) for j in range(gw)], path,
                 "Position embedding cosine similarity (each tile: one patch vs all)", cmap="viridis", vmin=-1, vmax=1)


def draw_attention_distance(dist: np.ndarray, path: Path, input_px: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    layers, heads = dist.shape
    for h in range(heads):
        ax.scatter(np.arange(layers) + 1, dist[:, h], label=f"head {h + 1}", s=28)
    ax.set_xlabel("layer (block)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, max(float(dist.max()) * 1.15, 1.0))
    ax.set_title(f"Mean attention distance per head ({input_px}px input)")
    ax.set_xticks(np.arange(layers) + 1)
    if heads <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_sqnr(errors: list, path: Path, worst: int = 3) -> None:
    """``errors``: :class:`edgevit.inspection.LayerError` per layer, in model order; the ``worst`` in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = [min(e.sqnr_db, 80.0) for e in errors]
    order = np.argsort(vals)[:worst]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(errors)), 4.2))
    colors = ["tab:red" if i in order else "tab:blue" for i in range(len(errors))]
    ax.bar(range(len(errors)), vals, color=colors)
    ax.set_xticks(range(len(errors)))
    ax.set_xticklabels([e.name for e in errors], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB), higher is better")
    ax.set_title(f"INT8 vs FP32 per layer output (red: the {worst} worst)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
