"""vox_tf's compiled TensorFlow ops: exact surface voxelization and dual-voxel boundary labels.

Both are registered as not differentiable. Bad arguments (wrong rank or dtype, face indices
out of range, resolution out of [8, 1024]) raise ``tf.errors.InvalidArgumentError``.
"""

from typing import NamedTuple

import tensorflow as tf

from vox_tf import _oplib as _library

_ops = _library.load()

tf.no_gradient("VoxelizeMesh")
tf.no_gradient("DualVoxelBoundary")

OUTSIDE, INSIDE, OUTER_BOUNDARY, INNER_BOUNDARY = 0, 1, 2, 3


def voxelize_mesh(vertices, faces, resolution, fill=False):
    """Exact surface voxelization: voxels whose closed box a triangle intersects.

    Vertices must already be normalized to the grid's cube [-1, 1]^3 (see
    ``vox_tf.mesh_io``); parts of triangles outside the cube are ignored.

    Args:
        vertices: float32 [V, 3].
        faces: int32 [F, 3] vertex indices.
        resolution: R in [8, 1024].
        fill: also mark voxels enclosed by the surface (those not reachable from the grid
            border through empty voxels). Meant for watertight meshes.
    Returns:
        int32 [N, 3] indices (i, j, k along x, y, z), sorted lexicographically, unique.

    Example:
        >>> tri = np.array([[-1, -1, 0], [1, -1, 0], [-1, 1, 0]], np.float32)
        >>> voxelize_mesh(tri, [[0, 1, 2]], 8).shape  # z = 0 lies between two layers: 2 x 43
        TensorShape([86, 3])
    """
    vertices = _converted(vertices, tf.float32, "vertices", "is_floating")
    faces = _converted(faces, tf.int32, "faces", "is_integer")
    return _ops.voxelize_mesh(vertices, faces, resolution=resolution, fill=fill)


def _converted(value, dtype, name, kind):
    """``value`` as ``dtype``; InvalidArgumentError if its dtype is of the wrong kind."""
    tensor = tf.convert_to_tensor(value)
    if not getattr(tensor.dtype, kind):
        raise tf.errors.InvalidArgumentError(
            None, None, f"{name} must be {kind[3:]} numbers, got dtype {tensor.dtype.name}")
    return tf.cast(tensor, dtype)


def dual_voxel_boundary(occupancy, mask=None):
    """Labels every voxel as outside, inside, outer boundary or inner boundary.

    26-neighbourhood, outside the grid counted as empty (METHOD.md):
    0 OUTSIDE, 1 INSIDE, 2 OUTER_BOUNDARY (empty with an occupied neighbour),
    3 INNER_BOUNDARY (occupied with an empty neighbour).

    Args:
        occupancy: bool [X, Y, Z] (any dtype; nonzero is occupied).
        mask: optional bool [X, Y, Z]; voxels outside it are labelled 0. The neighbourhood is
            still read from the whole occupancy.
    Returns:
        int8 [X, Y, Z] labels.

    Example:
        >>> occ = np.zeros((3, 3, 3), bool); occ[1, 1, 1] = True
        >>> np.bincount(dual_voxel_boundary(occ).numpy().ravel())  # 26 outer, 1 inner
        array([ 0,  0, 26,  1])
    """
    occupancy = tf.cast(tf.convert_to_tensor(occupancy), tf.bool)
    mask = tf.zeros([0, 0, 0], tf.bool) if mask is None else tf.cast(mask, tf.bool)
    labels, _ = _ops.dual_voxel_boundary(occupancy, mask)
    return labels


class DualVoxelIndices(NamedTuple):
    """int32 [n, 3] voxel indices of each class; ``len(x.inner_boundary)`` is its count."""

    outside: tf.Tensor
    inside: tf.Tensor
    outer_boundary: tf.Tensor
    inner_boundary: tf.Tensor

    def counts(self):
        """{class name: number of voxels}."""
        return {name: int(value.shape[0]) for name, value in self._asdict().items()}


def dual_voxel_indices(occupancy, mask=None, classes=(OUTSIDE, INSIDE, OUTER_BOUNDARY,
                                                      INNER_BOUNDARY)):
    """Index lists of each dual-voxel class, without any dense float tensor.

    Args:
        occupancy, mask: as :func:`dual_voxel_boundary`.
        classes: which classes to list; the others come back empty ([0, 3]).
    Returns:
        DualVoxelIndices of int32 [n, 3] tensors, each sorted.
    """
    labels = dual_voxel_boundary(occupancy, mask)
    lists = []
    for label in (OUTSIDE, INSIDE, OUTER_BOUNDARY, INNER_BOUNDARY):
        if label in classes:
            lists.append(tf.cast(tf.where(tf.equal(labels, label)), tf.int32))
        else:
            lists.append(tf.zeros([0, 3], tf.int32))
    return DualVoxelIndices(*lists)


def built_with_cuda():
    """Whether the compiled library holds the CUDA kernel of dual_voxel_boundary."""
    return _library.built_with_cuda()


__all__ = ["voxelize_mesh", "dual_voxel_boundary", "dual_voxel_indices", "DualVoxelIndices",
           "OUTSIDE", "INSIDE", "OUTER_BOUNDARY", "INNER_BOUNDARY", "built_with_cuda"]
