"""PNG previews of voxel grids: three orthographic projections per grid, for a person to read.

A plain grid is drawn coloured by depth (dark blue near index 0, yellow far), so its shape
reads at a glance; an overlay (e.g. true positives, false positives, false negatives of a reconstruction) is
drawn with one colour per layer, later layers on top, and the voxel count of each in the legend.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402 - the backend must be chosen before pyplot-free figures load
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from vox_tf.files import atomic_output  # noqa: E402

AXIS_NAMES = "xyz"
PANEL_INCHES = 3.2
BACKGROUND = (1.0, 1.0, 1.0)
# Perceptually ordered, so depth reads as shape: near voxels dark blue, far ones yellow.
DEPTH_COLORS = matplotlib.colormaps["viridis"]


def save_projections(panels, path, title=None):
    """Writes a PNG of three orthographic max-projections (along x, y and z) per panel.

    Args:
        panels: {panel title: bool [X, Y, Z] grid} or, for overlays,
            {panel title: {layer label: (bool [X, Y, Z] grid, (r, g, b) in [0, 1])}}.
            One row of the image per panel.
        path: the .png to write (atomically).
        title: optional title over the whole figure.

    Example:
        >>> save_projections({"truth": gt, "errors": {"FP": (fp, (1, 0, 0)),
        ...                                          "FN": (fn, (0, 0, 1))}}, "cmp.png")
    """
    if not panels:
        raise ValueError("save_projections needs at least one panel")
    figure = Figure(figsize=(3 * PANEL_INCHES, len(panels) * PANEL_INCHES + (0.4 if title else 0)),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 3, squeeze=False)
    for row, (panel_title, content) in zip(axes, panels.items()):
        layers = content if isinstance(content, dict) else None
        for axis, ax in enumerate(row):
            if layers is None:
                image = _depth_shaded(np.asarray(content, bool), axis)
            else:
                image = _overlay(layers, axis)
            # image[h, v] -> imshow wants rows = vertical axis, drawn bottom-up.
            ax.imshow(np.swapaxes(image, 0, 1), origin="lower", interpolation="nearest")
            horizontal, vertical = (a for a in range(3) if a != axis)
            ax.set_xlabel(AXIS_NAMES[horizontal])
            ax.set_ylabel(AXIS_NAMES[vertical])
            ax.set_title(f"{panel_title}: along {AXIS_NAMES[axis]}", fontsize=9)
            ax.tick_params(labelsize=7)
        if layers is not None:
            handles = [Patch(color=color, label=f"{label} ({int(np.count_nonzero(grid)):,})")
                       for label, (grid, color) in layers.items()]
            row[-1].legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.8)
        else:
            row[0].text(0.02, 0.98, f"{int(np.count_nonzero(content)):,} voxels; colour: depth",
                        transform=row[0].transAxes, va="top", fontsize=7)
    if title:
        figure.suptitle(title)
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=100)


def _depth_shaded(grid, axis):
    """bool [X, Y, Z] -> rgb [H, V, 3]: white where empty, else coloured by the nearest depth."""
    occupied = grid.any(axis=axis)
    nearest = np.argmax(grid, axis=axis).astype(np.float64)  # first occupied seen from index 0
    # Stretch the colours over the depths actually seen, for contrast on small objects.
    seen = nearest[occupied]
    low, high = (seen.min(), seen.max()) if seen.size else (0.0, 1.0)
    colors = DEPTH_COLORS(0.05 + 0.9 * (nearest - low) / max(high - low, 1.0))[..., :3]
    return np.where(occupied[..., None], colors, BACKGROUND)


def _overlay(layers, axis):
    """{label: (bool grid, rgb)} -> rgb [H, V, 3], later layers painted over earlier ones."""
    image = None
    for grid, color in layers.values():
        seen = np.asarray(grid, bool).any(axis=axis)
        if image is None:
            image = np.broadcast_to(np.array(BACKGROUND), seen.shape + (3,)).copy()
        image[seen] = color
    return image
