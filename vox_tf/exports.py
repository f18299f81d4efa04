"""What a training run leaves for a person: figures, the reconstruction, and where it is wrong.

All files are written atomically (vox_tf.files.atomic_output); point clouds and meshes are
in the source mesh's original coordinates so they overlay on it in any viewer.
"""

import json
import math
from pathlib import Path

import numpy as np
import trimesh
from skimage import measure

from vox_tf.files import atomic_output
from vox_tf.grid import VoxelGrid, indices_from_dense, voxel_centers
from vox_tf.preview import ERROR_CLASSES, error_grids, render_preview, save_png

RESULTS_FILE = "results.json"
RECONSTRUCTION_NPZ = "reconstruction.npz"
RECONSTRUCTION_BINVOX = "reconstruction.binvox"
RECONSTRUCTION_MESH = "reconstruction.ply"
ERRORS_FILE = "errors.ply"
PREVIEW_FILE = "preview.png"


def write_results(path, results):
    """Writes ``results`` as indented JSON; inf/nan (e.g. chamfer of an empty prediction) become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(clean, indent=2, sort_keys=True))


def error_cloud(pred, voxels: VoxelGrid, max_true_positives=None, seed=0):
    """Voxel centres of TP, FP and FN (vs ``voxels``), in the mesh's original coordinates.

    Args:
        pred: bool [R, R, R] reconstruction; voxels: the ground truth and its normalization.
        max_true_positives: keep at most this many true positives (a random sample), every
            wrong voxel always; None keeps all.
    Returns:
        (float [N, 3] points, uint8 [N, 3] colours of ERROR_CLASSES).

    Example:
        >>> points, colors = error_cloud(voxels.dense(), voxels)   # all grey
    """
    points, colors = [], []
    rng = np.random.default_rng(seed)
    for (label, color), grid in zip(ERROR_CLASSES, error_grids(pred, voxels.dense()).values()):
        indices = np.argwhere(grid)
        if (label == "true positive" and max_true_positives is not None
                and len(indices) > max_true_positives):
            indices = indices[rng.choice(len(indices), max_true_positives, replace=False)]
        points.append(voxels.to_original(voxel_centers(indices, voxels.resolution)))
        colors.append(np.tile(np.round(np.array(color) * 255).astype(np.uint8), (len(indices), 1)))
    return np.concatenate(points), np.concatenate(colors)


def write_error_cloud(path, pred, voxels: VoxelGrid):
    """:func:`error_cloud` as a coloured point cloud file (.ply)."""
    points, colors = error_cloud(pred, voxels)
    opaque = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    cloud = trimesh.PointCloud(points, colors=opaque)
    with atomic_output(path) as tmp:
        cloud.export(tmp)


def reconstruction_mesh(pred, voxels: VoxelGrid):
    """Marching cubes of the bool grid at level 0.5 -> trimesh.Trimesh in original coordinates.

    The grid is padded by one empty voxel so the surface closes at the grid's border. Vertices
    sit at voxel-centre coordinates (-1 + (2 i + 1) / R), mapped back through the voxels'
    center and scale. An empty grid gives an empty mesh.
    """
    pred = np.asarray(pred, bool)
    if not pred.any():
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    vertices, faces, _, _ = measure.marching_cubes(np.pad(pred, 1).astype(np.float32), level=0.5)
    normalized = -1.0 + (2.0 * (vertices - 1.0) + 1.0) / pred.shape[0]
    return trimesh.Trimesh(voxels.to_original(normalized), faces, process=False)


def write_reconstruction_mesh(path, pred, voxels: VoxelGrid):
    """Writes :func:`reconstruction_mesh` (.ply or .obj by the suffix)."""
    mesh = reconstruction_mesh(pred, voxels)
    with atomic_output(path) as tmp:
        mesh.export(tmp)


def write_preview(path, pred, gt, title=None, up="y"):
    """PNG of :func:`vox_tf.preview.render_preview`: shaded 3D views with the errors marked,
    then ground truth | reconstruction | TP/FP/FN overlay, three projections each."""
    save_png(render_preview(pred, gt, title, up), path)


def write_all(directory, pred, voxels: VoxelGrid, results):
    """results.json, reconstruction.npz and .binvox, reconstruction.ply, errors.ply and preview.png
    in ``directory``."""
    directory, pred = Path(directory), np.asarray(pred, bool)
    reconstruction = VoxelGrid(voxels.resolution, indices_from_dense(pred), voxels.center,
                               voxels.scale, f"{voxels.source} (reconstruction)")
    reconstruction.save(directory / RECONSTRUCTION_NPZ)
    reconstruction.save(directory / RECONSTRUCTION_BINVOX)
    write_reconstruction_mesh(directory / RECONSTRUCTION_MESH, pred, voxels)
    write_error_cloud(directory / ERRORS_FILE, pred, voxels)
    title = (f"IoU {100 * results['iou']:.2f} %, {results['params']:,} parameters"
             if "iou" in results and "params" in results else None)
    write_preview(directory / PREVIEW_FILE, pred, voxels.dense(), title)
    write_results(directory / RESULTS_FILE, results)
