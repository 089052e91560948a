"""The paper's Fig. 2: rows of images; columns RGB | one prediction per model | ground truth.

Predictions and labels are drawn in the Cityscapes palette (ignored pixels black), with a legend of
the classes that appear. The canvas has a fixed size, ``CELL_WIDTH`` pixels per column, so the file
is the same size whatever the content: no tight bounding box.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from rtda.data.dataset import SegmentationDataset
from rtda.data.images import BadSampleError
from rtda.data.labels import CLASS_COLORS, CLASS_NAMES, IGNORE_INDEX, colorize

CELL_WIDTH = 320  # pixels per column
LEGEND_HEIGHT = 60  # pixels below the grid
TITLE_HEIGHT = 24  # pixels above the grid
DPI = 100


def figure_size(columns: int, rows: int, aspect: float) -> tuple[int, int]:
    """(width, height) in pixels of a figure with ``columns`` x ``rows`` cells of height/width
    ``aspect``."""
    cell_height = round(CELL_WIDTH * aspect)
    return columns * CELL_WIDTH, TITLE_HEIGHT + rows * cell_height + LEGEND_HEIGHT


def _rows(dataset: SegmentationDataset, rows: int) -> list[int]:
    """``rows`` evenly spaced readable samples (a bad file is passed over)."""
    wanted = np.linspace(0, len(dataset) - 1, min(rows, len(dataset))).round().astype(int)
    chosen: list[int] = []
    for start in wanted:
        for index in range(int(start), len(dataset)):
            if index in chosen:
                continue
            try:
                dataset.load(index)
            except BadSampleError:
                continue
            chosen.append(index)
            break
    if not chosen:
        raise ValueError("no readable sample for the figure")
    return chosen


def draw_predictions_figure(models: Sequence[torch.nn.Module], titles: Sequence[str],
                            dataset: SegmentationDataset, out: str | os.PathLike, *,
                            rows: int = 4, device: str | torch.device = "cpu") -> tuple[int, int]:
    """Draws the figure for ``rows`` images of ``dataset`` (labelled, evaluation transform) and
    writes it to ``out`` (PNG). Returns its (width, height) in pixels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    from rtda.predict import predict_full_resolution

    indices = _rows(dataset, rows)
    cells = []  # per row: [rgb, prediction per model..., ground truth]
    seen: set[int] = set()
    with torch.inference_mode():
        for index in indices:
            image, label = dataset.load(index)
            tensor = dataset[index]["image"][None].to(device)
            predictions = [predict_full_resolution(m.eval(), tensor, [label.shape])[0].cpu().numpy()
                           for m in models]
            for ids in (*predictions, label):
                seen.update(int(v) for v in np.unique(ids) if v != IGNORE_INDEX)
            cells.append([np.asarray(image), *(colorize(p) for p in predictions), colorize(label)])
    height, width = cells[0][0].shape[:2]
    columns = len(models) + 2
    size = figure_size(columns, len(cells), height / width)
    figure = plt.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    grid_bottom = LEGEND_HEIGHT / size[1]
    grid_height = 1 - (LEGEND_HEIGHT + TITLE_HEIGHT) / size[1]
    column_titles = ["RGB", *titles, "ground truth"]
    for r, row in enumerate(cells):
        for c, picture in enumerate(row):
            bottom = grid_bottom + grid_height * (1 - (r + 1) / len(cells))
            axis = figure.add_axes((c / columns, bottom, 1 / columns, grid_height / len(cells)))
            axis.imshow(picture, interpolation="nearest", aspect="auto")
            axis.set_axis_off()
            if r == 0:
                axis.set_title(column_titles[c], fontsize=10, pad=4)
    handles = [Patch(color=np.asarray(CLASS_COLORS[i]) / 255, label=CLASS_NAMES[i])
               for i in sorted(seen)]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10),
                      fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.0))
    figure.savefig(out, dpi=DPI)
    plt.close(figure)
    return size
