"""The voxel grid of METHOD.md: R^3 voxels over [-1, 1]^3 (files: vox_tf.voxel_formats).

Index i in [0, R) covers [-1 + 2i/R, -1 + 2(i+1)/R) along its axis; its centre is
-1 + (2i + 1)/R. Occupied voxels are kept as a sorted int32 [N, 3] index list (i, j, k along
x, y, z), never as a dense float grid.
"""

from dataclasses import dataclass, field

import numpy as np

from vox_tf.voxel_formats import read_voxel_file, write_voxel_file

MIN_RESOLUTION = 8
MAX_RESOLUTION = 1024


def voxel_centers(indices, resolution):
    """Voxel indices -> centres in [-1, 1].

    Args:
        indices: int array [N, 3].
        resolution: R.
    Returns:
        float32 [N, 3].

    Example:
        >>> voxel_centers(np.array([[0, 1, 3]]), 4)
        array([[-0.75, -0.25,  0.75]], dtype=float32)
    """
    return (-1.0 + (2.0 * np.asarray(indices, np.float64) + 1.0) / resolution).astype(np.float32)


def points_to_indices(points, resolution):
    """Points in [-1, 1]^3 -> int32 [N, 3] index of the voxel containing each (clamped to the grid).

    Example:
        >>> points_to_indices(np.array([[-0.75, -0.25, 0.75]]), 4)
        array([[0, 1, 3]], dtype=int32)
    """
    idx = np.floor((np.asarray(points, np.float64) + 1.0) * (resolution / 2.0))
    return np.clip(idx, 0, resolution - 1).astype(np.int32)


def dense_from_indices(indices, resolution):
    """int [N, 3] indices -> bool [R, R, R] occupancy.

    Example:
        >>> dense_from_indices(np.array([[0, 0, 1]]), 2)[0, 0]
        array([False,  True])
    """
    grid = np.zeros((resolution,) * 3, dtype=bool)
    indices = np.asarray(indices)
    grid[indices[:, 0], indices[:, 1], indices[:, 2]] = True
    return grid


def indices_from_dense(grid):
    """bool [X, Y, Z] occupancy -> sorted int32 [N, 3] indices of the occupied voxels."""
    return np.argwhere(np.asarray(grid, bool)).astype(np.int32)


def check_resolution(resolution):
    """Raises ValueError unless ``resolution`` is an int in [MIN_RESOLUTION, MAX_RESOLUTION]."""
    if int(resolution) != resolution or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"resolution must be an integer in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution}")
    return int(resolution)


@dataclass
class VoxelGrid:
    """Occupied voxels of one model, with the transform back to its original coordinates.

    Attributes:
        resolution: R.
        indices: int32 [N, 3], sorted, unique.
        center: float64 [3]; normalized = (original - center) * scale.
        scale: float.
        source: where the voxels came from (a file name), for messages.
    """

    resolution: int
    indices: np.ndarray
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0
    source: str = ""

    def dense(self):
        """bool [R, R, R] occupancy."""
        return dense_from_indices(self.indices, self.resolution)

    def centers(self):
        """float32 [N, 3] centres of the occupied voxels in [-1, 1]."""
        return voxel_centers(self.indices, self.resolution)

    def to_original(self, points):
        """Normalized points -> the mesh's original coordinates."""
        return np.asarray(points, np.float64) / self.scale + self.center

    def save(self, path):
        """Writes the voxels, atomically: a vox_tf .npz or a .binvox, by the suffix.

        See :mod:`vox_tf.voxel_formats`; .binvox keeps the voxels, center and scale.

        Example:
            >>> VoxelGrid(8, np.array([[1, 2, 3]], np.int32)).save("tiny.binvox")
        """
        write_voxel_file(path, self.resolution, self.indices, self.center, self.scale,
                         self.source)

    @classmethod
    def load(cls, path):
        """Reads a vox_tf .npz, a dense-grid .npz (``arr_0``) or a .binvox.

        Raises MeshError naming the file and the reason if it is none of them, or if its grid
        is not a cube of a resolution in [MIN_RESOLUTION, MAX_RESOLUTION].

        Example:
            >>> VoxelGrid.load("tiny.binvox").indices
            array([[1, 2, 3]], dtype=int32)
        """
        return cls(**read_voxel_file(path, (MIN_RESOLUTION, MAX_RESOLUTION)))
