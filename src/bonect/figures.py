"""Pictures to check at a glance: the paper's Figure 1 layout (MR | CT | sCT | difference)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from bonect.converter.preprocess import head_mask
from bonect.converter.volume import Volume
from bonect.hounsfield import BONE_WINDOW as BONE_WINDOW_CW
from bonect.hounsfield import window_bounds

BONE_WINDOW = window_bounds(BONE_WINDOW_CW)  # W 2000 / L 500, as the paper shows its images


def _display_planes(
    volume: Volume, array: npt.NDArray[np.generic]
) -> dict[str, npt.NDArray[np.generic]]:
    """Axial, coronal and sagittal mid-slices through the head, oriented for display.

    The volume is first reoriented to the nearest anatomical axes (S→I, A→P, R→L) by permuting
    and flipping its axes, so that any acquisition plane is shown as a radiologist expects.
    """
    direction = volume.direction
    target = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # S→I, A→P, R→L
    order, flips = [], []
    for axis in target:
        dots = axis @ direction
        best = int(np.argmax(np.abs(dots)))
        order.append(best)
        flips.append(dots[best] < 0)
    data = np.transpose(np.asarray(array), order)
    for i, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis=i)
    spacing = np.asarray(volume.spacing)[order]
    k, j, i = (s // 2 for s in data.shape)
    return {
        "axial": data[k],
        "coronal": data[:, j],
        "sagittal": data[:, :, i],
        "_aspect_axial": spacing[1] / spacing[2],
        "_aspect_coronal": spacing[0] / spacing[2],
        "_aspect_sagittal": spacing[0] / spacing[1],
    }


def figure_one(
    path: Path,
    mr: Volume,
    ct: Volume,
    predictions: Mapping[str, Volume],
    *,
    title: str = "",
) -> Path:
    """Rows: axial, coronal, sagittal; columns: MR, CT, then sCT and |sCT - CT| per method."""
    mr_view = _display_planes(mr, mr.array)
    ct_view = _display_planes(mr, ct.array)
    pred_views = {name: _display_planes(mr, v.array) for name, v in predictions.items()}
    mr_high = float(
        np.percentile(mr.array[head_mask(np.asarray(mr.array, np.float32), mr.spacing)], 99)
    )
    columns = 2 + 2 * len(predictions)
    fig, axes = plt.subplots(3, columns, figsize=(2.6 * columns, 8.4), squeeze=False)
    for row, plane in enumerate(("axial", "coronal", "sagittal")):
        aspect = float(mr_view[f"_aspect_{plane}"])
        panels = [("MR", mr_view[plane], "gray", (0.0, mr_high))]
        panels.append(("CT", ct_view[plane], "gray", BONE_WINDOW))
        for name, view in pred_views.items():
            panels.append((f"sCT {name}", view[plane], "gray", BONE_WINDOW))
            diff = np.abs(
                np.asarray(view[plane], np.float32) - np.asarray(ct_view[plane], np.float32)
            )
            panels.append((f"|sCT - CT| {name}", diff, "magma", (0.0, 1000.0)))
        for col, (label, image, cmap, (lo, hi)) in enumerate(panels):
            ax = axes[row, col]
            shown = ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=9)
            if col == 0:
                ax.set_ylabel(plane, fontsize=9)
            if label.startswith("|sCT") and row == 2:
                fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.05, label="HU")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
