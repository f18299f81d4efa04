"""Plain NumPy/SciPy references for the compiled ops, written from METHOD.md, not from the C++.

They are slow on purpose (brute force, float64) and exist only to check ``vox_tf.ops``.
"""

import numpy as np
from scipy import ndimage

# The 13 candidate separating axes of a triangle and a box (Akenine-Moller): the 3 box
# normals, the triangle normal, and the 9 cross products edge x box axis.
_BOX_AXES = np.eye(3)


def voxelize_reference(vertices, faces, resolution):
    """Voxels whose CLOSED box a triangle intersects (touching counts), by the separating-axis test.

    Grid coordinates g = (float64(v) + 1) * (R / 2), so voxel i spans [i, i + 1] with centre
    i + 0.5 and half-size 0.5. A triangle and a box are apart only when, on one of the 13 axes,
    the triangle's projection lies strictly beyond the box's (min(p) > rad or max(p) < -rad).

    Args:
        vertices: float [V, 3] in (roughly) [-1, 1]^3.
        faces: int [F, 3].
        resolution: R.
    Returns:
        int32 [N, 3], sorted, unique.

    Example:
        >>> voxelize_reference([[-1, -1, 0], [1, -1, 0], [-1, 1, 0]], [[0, 1, 2]], 8).shape
        (72, 3)
    """
    grid_vertices = (np.asarray(vertices, np.float32).astype(np.float64) + 1.0) * (resolution * 0.5)
    found = []
    for triangle in grid_vertices[np.asarray(faces, np.int64).reshape(-1, 3)]:
        candidates = _bounding_box_voxels(triangle, resolution)
        if len(candidates):
            found.append(candidates[_touches(triangle, candidates)])
    if not found:
        return np.zeros((0, 3), np.int32)
    return np.unique(np.concatenate(found), axis=0).astype(np.int32)


def _bounding_box_voxels(triangle, resolution):
    """int64 [M, 3]: voxels whose closed box meets the triangle's bounding box."""
    low = np.maximum(np.ceil(triangle.min(axis=0)) - 1, 0).astype(np.int64)
    high = np.minimum(np.floor(triangle.max(axis=0)), resolution - 1).astype(np.int64)
    if (high < low).any():
        return np.zeros((0, 3), np.int64)
    axes = [np.arange(lo, hi + 1) for lo, hi in zip(low, high)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _touches(triangle, voxels):
    """bool [M]: whether ``triangle`` (float64 [3, 3], grid coordinates) meets each closed voxel."""
    half = 0.5
    corners = triangle[None, :, :] - (voxels[:, None, :] + half)  # [M, 3 corners, 3]
    edges = [triangle[1] - triangle[0], triangle[2] - triangle[1], triangle[0] - triangle[2]]
    axes = list(_BOX_AXES) + [np.cross(edges[0], edges[1])]
    axes += [np.cross(edge, box_axis) for edge in edges for box_axis in _BOX_AXES]
    apart = np.zeros(len(voxels), bool)
    for axis in axes:
        projections = corners @ axis  # [M, 3]
        radius = half * np.abs(axis).sum()
        apart |= (projections.min(axis=1) > radius) | (projections.max(axis=1) < -radius)
    return ~apart


def fill_reference(indices, resolution):
    """Surface voxels plus every empty voxel not reachable from the grid border through empty ones.

    Empty space connects through faces only (6-neighbourhood), so a one-voxel-thick shell that is
    merely 26-connected still seals its inside.

    Returns:
        int32 [N, 3], sorted, unique.
    """
    occupied = np.zeros((resolution,) * 3, bool)
    indices = np.asarray(indices).reshape(-1, 3)
    occupied[indices[:, 0], indices[:, 1], indices[:, 2]] = True
    components, _ = ndimage.label(~occupied, structure=ndimage.generate_binary_structure(3, 1))
    border = np.concatenate([
        components[0].ravel(), components[-1].ravel(), components[:, 0].ravel(),
        components[:, -1].ravel(), components[:, :, 0].ravel(), components[:, :, -1].ravel()])
    outside = np.isin(components, border[border > 0])
    return np.argwhere(~outside).astype(np.int32)


def boundary_reference(occupancy, mask=None):
    """Dual-voxel labels with the 26-neighbourhood, outside the grid counted as empty.

    0 outside, 1 inside, 2 outer boundary (empty with an occupied neighbour), 3 inner boundary
    (occupied with an empty neighbour); 0 wherever ``mask`` is False.

    Args:
        occupancy: bool [X, Y, Z].
        mask: optional bool [X, Y, Z].
    Returns:
        int8 [X, Y, Z].
    """
    occupied = np.asarray(occupancy, bool)
    cube = np.ones((3, 3, 3), bool)
    # border_value=0: beyond the grid is empty, for dilation and erosion alike.
    near_occupied = ndimage.binary_dilation(occupied, structure=cube, border_value=0)
    all_occupied = ndimage.binary_erosion(occupied, structure=cube, border_value=0)
    labels = np.zeros(occupied.shape, np.int8)
    labels[~occupied & near_occupied] = 2
    labels[occupied & all_occupied] = 1
    labels[occupied & ~all_occupied] = 3
    if mask is not None:
        labels[~np.asarray(mask, bool)] = 0
    return labels


def uncovered_points(points, occupied, tolerance=1e-6):
    """Points [N, 3] in [-1, 1] lying in no occupied closed voxel of bool [R, R, R] ``occupied``.

    A point on a voxel face (within ``tolerance`` voxels) belongs to both neighbours, so either
    being occupied covers it. Used to check that every point sampled on a surface is voxelized.
    """
    resolution = occupied.shape[0]
    grid = (np.asarray(points, np.float64) + 1.0) * (resolution / 2.0)
    low = np.clip(np.floor(grid - tolerance), 0, resolution - 1).astype(np.int64)
    high = np.clip(np.floor(grid + tolerance), 0, resolution - 1).astype(np.int64)
    covered = np.zeros(len(grid), bool)
    for x in (low[:, 0], high[:, 0]):
        for y in (low[:, 1], high[:, 1]):
            for z in (low[:, 2], high[:, 2]):
                covered |= occupied[x, y, z]
    return np.asarray(points)[~covered]
