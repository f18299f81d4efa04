"""Pictures of voxel grids for a person: shaded 3D views and orthographic projections.

A shaded view draws the visible voxels from a camera above and to the side, lit from the upper
left (Lambert shading of the z-buffer's depth, matplotlib's LightSource), so the object reads as
a solid; errors keep their colours in it. A projection draws a grid along one axis, coloured by
depth (dark blue near index 0, yellow far) or, for an overlay such as true positives, false
positives and false negatives of a reconstruction, one colour per layer.

Everything renders headless (matplotlib's Agg) into an RGB array, which
:func:`save_png` writes and TensorBoard can log as is.
"""

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402 - the backend must be chosen before pyplot-free figures load
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import LightSource  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import imsave  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from vox_tf.files import atomic_output  # noqa: E402

AXIS_NAMES = "xyz"
PANEL_PIXELS = 300
BACKGROUND = (1.0, 1.0, 1.0)
# Perceptually ordered, so depth reads as shape: near voxels dark blue, far ones yellow.
DEPTH_COLORS = matplotlib.colormaps["viridis"]
SOLID_COLOR = (0.72, 0.72, 0.72)
# (label, rgb in [0, 1]); errors drawn after true positives so they stay visible.
ERROR_CLASSES = (("true positive", SOLID_COLOR),
                 ("false positive", (0.85, 0.1, 0.1)),
                 ("false negative", (0.1, 0.3, 0.9)))
# Shaded views draw at most this many voxels along an axis (larger grids are max-pooled, so a
# single wrong voxel still shows): the cost stays that of a 128^3 grid.
DRAW_RESOLUTION = 128
# Screen pixels per voxel edge, and each voxel splatted on 2 x 2 of them: no gaps between
# neighbouring voxels from any direction.
PIXELS_PER_VOXEL = 1.4
# A pixel spans more than one voxel of a surface seen at a slant, and shows only one of them:
# voxels of the later layers (the errors) win the depth test against the first layer's within
# this many voxels, so a lone wrong voxel never hides behind its neighbours.
LATER_LAYERS_NEARER_BY = 2.0
# Degrees: (azimuth about the up axis, elevation above the horizon) of each camera.
VIEWS = {"front": (35.0, 25.0), "side": (125.0, 25.0), "back": (215.0, 25.0)}
AMBIENT = 0.3
DEPTH_BLUR = 1.0  # pixels (about 0.7 voxel), see shaded_view
LIGHT = LightSource(azdeg=315, altdeg=45)
# World axes -> (right, up, towards the camera at azimuth 0), right-handed, per up axis.
_UP_FRAMES = {"x": np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]]),
              "y": np.eye(3),
              "z": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])}


@dataclass
class Panel:
    """One picture of a figure.

    Attributes:
        title: shown above it.
        image: float rgb [rows, columns, 3] in [0, 1].
        axes: (horizontal, vertical) axis names for a projection; empty hides the axes.
        note: small text in its upper left corner.
        legend: ((label, rgb), ...) drawn in its upper right corner.
    """

    title: str
    image: np.ndarray
    axes: tuple = ()
    note: str = ""
    legend: tuple = ()


def error_grids(pred, gt):
    """bool grids -> {label: bool grid} for true positives, false positives, false negatives."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    return dict(zip((label for label, _ in ERROR_CLASSES), (pred & gt, pred & ~gt, ~pred & gt)))


def render_preview(pred, gt, title=None, up="y"):
    """A reconstruction against its ground truth, as one RGB image.

    Top row: shaded 3D views of the ground truth and of the reconstruction from the front
    and the back, errors marked (false positives red, false negatives blue); then the three
    projections of the ground truth, the reconstruction and the errors.

    Args:
        pred: bool [R, R, R] reconstruction.
        gt: bool [R, R, R] ground truth.
        title: optional title over the whole figure.
        up: the axis drawn upwards in the 3D views: "y" (OBJ, glTF, most meshes) or "z" (most
            STL and CAD models, Thingi10K), or "x".
    Returns:
        uint8 [H, W, 3] (1236 x 900 pixels with a title).

    Example:
        >>> render_preview(pred, gt, "IoU 99.1 %").shape
        (1236, 900, 3)
    """
    errors = {label: (grid, color) for (label, color), grid in
              zip(ERROR_CLASSES, error_grids(pred, gt).values())}
    shaded = (shaded_panels("ground truth", {"ground truth": (gt, SOLID_COLOR)}, ["front"], up)
              + shaded_panels("reconstruction", errors, ["front", "back"], up))
    return render_panels([shaded, projection_panels("ground truth", gt),
                          projection_panels("reconstruction", pred),
                          projection_panels("errors", errors)], title)


def render_grid(grid, name, title=None, up="y"):
    """One voxel grid as one RGB image: shaded from three sides, then projected.

    Args:
        grid: bool [R, R, R].
        name: what it is, in the panel titles.
        title: optional title over the whole figure.
        up: the axis drawn upwards in the 3D views (see :func:`render_preview`).
    Returns:
        uint8 [H, W, 3].

    Example:
        >>> save_png(render_grid(voxels.dense(), "bunny 128^3"), "bunny.png")
    """
    return render_panels([shaded_panels(name, {name: (grid, SOLID_COLOR)}, up=up),
                          projection_panels(name, grid)], title)


def save_png(image, path):
    """Writes a uint8 [H, W, 3] image as a PNG, atomically."""
    with atomic_output(path) as tmp:
        imsave(tmp, image, format="png")


def render_panels(rows, title=None):
    """Lays out rows of :class:`Panel` into one RGB image, PANEL_PIXELS per panel.

    Args:
        rows: list of lists of Panel, one figure row each.
        title: optional title over the whole figure.
    Returns:
        uint8 [H, W, 3].
    """
    if not rows or not all(rows):
        raise ValueError("render_panels needs at least one panel per row")
    columns = max(len(row) for row in rows)
    inches = PANEL_PIXELS / 100
    title_inches = 0.36 if title else 0.0
    figure = Figure(figsize=(columns * inches, len(rows) * inches + title_inches), dpi=100)
    canvas = FigureCanvasAgg(figure)
    # Fixed margins rather than a layout engine: laying out twelve panels is what costs time.
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.04 * 4 / len(rows), wspace=0.3,
                           hspace=0.35, top=1 - (0.03 * 4 / len(rows) + title_inches
                                                 / figure.get_figheight()))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_axes, row in zip(axes, rows):
        for ax, panel in zip(row_axes, row):
            _draw(ax, panel)
        for ax in row_axes[len(row):]:
            ax.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=11)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _draw(ax, panel):
    ax.imshow(panel.image, interpolation="nearest")
    ax.set_title(panel.title, fontsize=8)
    if panel.axes:
        rows, columns = panel.image.shape[:2]
        ax.set_xlabel(panel.axes[0], fontsize=7, labelpad=1)
        ax.set_ylabel(panel.axes[1], fontsize=7, labelpad=1)
        ax.set_xticks([0, columns - 1])
        ax.set_yticks([0, rows - 1], [rows - 1, 0])  # row 0 is the top: the highest index
        ax.tick_params(labelsize=6, length=2, pad=1)
    else:
        ax.set_axis_off()
    if panel.note:
        ax.text(0.02, 0.98, panel.note, transform=ax.transAxes, va="top", fontsize=6)
    if panel.legend:
        ax.legend(handles=[Patch(color=color, label=label) for label, color in panel.legend],
                  loc="upper right", fontsize=6, framealpha=0.8, handlelength=1)


def projection_panels(name, content):
    """Three orthographic max-projections (along x, y and z) of a grid or of layers.

    Args:
        name: what is projected, in the titles.
        content: bool [X, Y, Z] (coloured by depth) or {layer label: (bool [X, Y, Z] grid,
            (r, g, b) in [0, 1])} (one colour per layer, later layers on top).
    Returns:
        list of 3 Panel; the vertical axis points up.
    """
    layers = content if isinstance(content, dict) else None
    panels = []
    for axis in range(3):
        if layers is None:
            grid = np.asarray(content, bool)
            image = _depth_shaded(grid, axis)
            note, legend = f"{int(np.count_nonzero(grid)):,} voxels; colour: depth", ()
        else:
            image = _overlay(layers, axis)
            note = ""
            legend = tuple((f"{label} ({int(np.count_nonzero(grid)):,})", color)
                           for label, (grid, color) in layers.items()) if axis == 2 else ()
        # image[h, v] -> rows = the vertical axis, highest on top.
        horizontal, vertical = (AXIS_NAMES[a] for a in range(3) if a != axis)
        panels.append(Panel(f"{name}: along {AXIS_NAMES[axis]}", np.swapaxes(image, 0, 1)[::-1],
                            (horizontal, vertical), note if axis == 0 else "", legend))
    return panels


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


def shaded_panels(name, layers, views=tuple(VIEWS), up="y"):
    """Shaded 3D views of coloured voxel layers, one Panel per view (see :func:`shaded_view`)."""
    labels, colors = _labelled(layers)
    return [Panel(f"{name}, {view} ({up} up)", shaded_view(labels, colors, *VIEWS[view], up=up))
            for view in views]


def shaded_view(labels, colors, azimuth, elevation, up="y"):
    """Labelled voxels seen in orthographic projection, lit and shaded.

    Only voxels with an empty face neighbour can be seen, so only those are projected; a
    z-buffer keeps the nearest per pixel (labels above 1 count LATER_LAYERS_NEARER_BY voxels
    nearer), and the normals of the depth image, blurred by DEPTH_BLUR, give Lambert shading
    (AMBIENT light plus LIGHT from the upper left).

    Args:
        labels: int [n, n, n], 0 empty, else the row of ``colors`` to paint the voxel with.
        colors: float rgb [L, 3] in [0, 1].
        azimuth: degrees about the up axis; 0 looks from the +z side (with y up).
        elevation: degrees of the camera above the horizon.
        up: the world axis drawn upwards, "x", "y" or "z".
    Returns:
        float rgb [H, W, 3] in [0, 1], white background, fitted to the visible voxels.

    Example:
        >>> cube = np.zeros((32, 32, 32), bool)
        >>> cube[8:24, 8:24, 8:24] = True
        >>> shaded_view(np.int8(cube), np.array([BACKGROUND, SOLID_COLOR]), 35, 25).shape
        (34, 32, 3)
    """
    occupied = labels > 0
    padded, inner = np.pad(occupied, 1), slice(1, -1)
    enclosed = (padded[2:, inner, inner] & padded[:-2, inner, inner] & padded[inner, 2:, inner]
                & padded[inner, :-2, inner] & padded[inner, inner, 2:] & padded[inner, inner, :-2])
    visible = np.argwhere(occupied & ~enclosed)
    if not visible.size:
        return np.ones((PANEL_PIXELS // 2, PANEL_PIXELS // 2, 3))
    camera = _camera(visible + 0.5 - occupied.shape[0] / 2, azimuth, elevation, up)
    label = labels[tuple(visible.T)]
    depth, label = _zbuffer(camera * PIXELS_PER_VOXEL, label,
                            np.where(label > 1, LATER_LAYERS_NEARER_BY * PIXELS_PER_VOXEL, 0.0))
    seen = ~np.isnan(depth)
    # Background pixels take their nearest seen depth, so silhouettes get no false cliff.
    nearest = ndimage.distance_transform_edt(~seen, return_distances=False, return_indices=True)
    # A slight blur of the depth smooths the one-voxel terraces into the surface they step
    # along, so the shape reads; the voxels still show in the outline and the projections.
    shade = LIGHT.hillshade(ndimage.gaussian_filter(depth[tuple(nearest)], DEPTH_BLUR))
    rgb = colors[label] * (AMBIENT + (1 - AMBIENT) * shade)[..., None]
    return np.where(seen[..., None], rgb, BACKGROUND)


def _labelled(layers):
    """{label: (bool [R, R, R] grid, rgb)} -> (int8 [n, n, n], rgb [L + 1, 3]), n <= DRAW_RESOLUTION.

    A voxel's label is its last layer's number (1, 2, ...; 0 empty); a pooled cell takes the
    highest label within it, so the later layers (the errors) win over the earlier ones.
    """
    labels = None
    for number, (grid, _) in enumerate(layers.values(), start=1):
        grid = np.asarray(grid, bool)
        if labels is None:
            labels = np.zeros(grid.shape, np.int8)
        labels[grid] = number
    colors = np.array([BACKGROUND] + [color for _, color in layers.values()], np.float64)
    return _max_pooled(labels, DRAW_RESOLUTION), colors


def _max_pooled(labels, size):
    """int [R, R, R] -> int [n, n, n], n <= size, each cell the maximum of its voxels."""
    resolution = labels.shape[0]
    factor = -(-resolution // size)
    if factor == 1:
        return labels
    cells = -(-resolution // factor)
    pooled = np.zeros((cells * factor,) * 3, labels.dtype)
    pooled[:resolution, :resolution, :resolution] = labels
    for axis in range(3):
        # Strided slices, one per offset in a cell: far faster than reshaping and reducing.
        offsets = [pooled[(slice(None),) * axis + (slice(k, None, factor),)] for k in range(factor)]
        pooled = np.maximum.reduce(offsets)
    return pooled


def _camera(points, azimuth, elevation, up):
    """[N, 3] world points -> [N, 3] (right, up, towards the camera), in the same units."""
    a, e = np.radians(azimuth), np.radians(elevation)
    turn = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return points @ _UP_FRAMES[up].T @ turn.T @ tilt.T


def _zbuffer(camera, values, nearer_by):
    """Splats points 2 x 2 pixels each and keeps, per pixel, the nearest after moving each
    point ``nearer_by`` towards the camera (for the depth test only).

    Args:
        camera: float [N, 3] (right, up, towards the camera) in pixels.
        values: int [N] to paint.
        nearer_by: float [N] depth head start.
    Returns:
        (depth float [H, W], nan where nothing is; value int [H, W]).
    """
    low, high = camera[:, :2].min(axis=0), camera[:, :2].max(axis=0)
    width, height = (np.floor(high - low).astype(int) + 3).tolist()
    column = np.floor(camera[:, 0] - low[0]).astype(np.int64)
    row = np.floor(high[1] - camera[:, 1]).astype(np.int64)  # row 0 at the top
    pixel = np.concatenate([(row + dr) * width + column + dc for dr in (0, 1) for dc in (0, 1)])
    order = np.lexsort((np.tile(-(camera[:, 2] + nearer_by), 4), pixel))  # nearest first
    first = order[np.r_[True, pixel[order][1:] != pixel[order][:-1]]]
    image_depth = np.full(height * width, np.nan)
    image_value = np.zeros(height * width, np.int64)
    image_depth[pixel[first]] = np.tile(camera[:, 2], 4)[first]
    image_value[pixel[first]] = np.tile(values, 4)[first]
    return image_depth.reshape(height, width), image_value.reshape(height, width)
