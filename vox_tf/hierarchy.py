"""The two-stage reconstruction of METHOD.md: a coarse net at 32^3 masks where a fine net is asked.

Mask rule: the coarse net's prediction on the 32^3 grid, thresholded at 0.5 and upsampled
(nearest) to R, is the mask; the fine net is evaluated only inside it and everything outside
is empty. A trained pair is stored as one directory::

    coarse.keras  fine.keras  metadata.json

and read back with :func:`load` (exposed as ``vox_tf.load``).
"""

import json
from pathlib import Path

import keras
import numpy as np

from vox_tf.errors import MeshError
from vox_tf.files import atomic_output
from vox_tf.grid import VoxelGrid, indices_from_dense, points_to_indices, voxel_centers
from vox_tf.metrics import parameter_count
from vox_tf.models import arch_of, format_arch
from vox_tf.sampling import coarse_cells, grid_points, upsample_mask

COARSE_FILE = "coarse.keras"
FINE_FILE = "fine.keras"
METADATA_FILE = "metadata.json"
FORMAT = "vox_tf.hierarchical/1"
THRESHOLD = 0.5
PREDICT_BATCH = 1 << 16
"""Points per network call when reconstructing: ~10 MiB of activations for a 128-wide net."""


def probabilities(model, resolution, mask=None, batch_size=PREDICT_BATCH):
    """The model's probabilities at the voxel centres of the R^3 grid (only inside ``mask``).

    Args:
        model: keras.Model, float32 [B, 3] -> [B, 1] probabilities.
        resolution: R.
        mask: optional bool [R, R, R].
        batch_size: points per call; bounds memory whatever R.
    Returns:
        float32 [M], one per voxel of the mask (all R^3 without one) in np.flatnonzero order.

    Example:
        >>> probabilities(model, 32).shape
        (32768,)
    """
    # A direct call, not predict_on_batch: under MirroredStrategy Keras 3.15's
    # predict_on_batch returns every replica's outputs stacked (2B rows for B points).
    parts = [np.asarray(model(points, training=False))[:, 0]
             for points, _ in grid_points(resolution, mask=mask, batch_size=batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def occupancy_grid(model, resolution, mask=None, batch_size=PREDICT_BATCH):
    """Evaluates ``model`` at the voxel centres of the R^3 grid (only inside ``mask`` if given).

    Args:
        model: keras.Model, float32 [B, 3] -> [B, 1] probabilities.
        resolution: R.
        mask: optional bool [R, R, R]; voxels outside it are left empty and never evaluated.
        batch_size: points per call; bounds memory whatever R.
    Returns:
        bool [R, R, R], True where the probability exceeds 0.5.

    Example:
        >>> occupancy_grid(model, 32).shape
        (32, 32, 32)
    """
    grid = np.zeros((resolution,) * 3, dtype=bool)
    occupied = probabilities(model, resolution, mask, batch_size) > THRESHOLD
    if mask is None:
        return occupied.reshape(grid.shape)
    grid.reshape(-1)[np.flatnonzero(mask)] = occupied
    return grid


class HierarchicalReconstructor:
    """A coarse and a fine occupancy network that together reconstruct one R^3 voxel model.

    Args:
        coarse: keras.Model evaluated on the coarse_resolution^3 grid, or that grid's
            occupancy itself, bool [Rc, Rc, Rc] (a packed file's coarse stage: the stored
            prediction of the trained coarse net, so the mask is the same).
        fine: keras.Model evaluated inside the coarse mask at ``resolution``.
        resolution: R of the fine grid, at least coarse_resolution.
        center, scale: the normalization of the source mesh (see vox_tf.grid.VoxelGrid).
        coarse_resolution: Rc (32 in METHOD.md).
        source: where the voxels came from.
        metrics: dict of figures measured at training time, kept in the metadata.
        residual: optional int64 [W] sorted flat voxel numbers (i R^2 + j R + k) where the
            networks are wrong: a lossless packed model's correction, applied to every answer.

    Example:
        >>> rec = vox_tf.load("runs/bunny")
        >>> rec.predict_grid().sum()
    """

    def __init__(self, coarse, fine, resolution, center=(0.0, 0.0, 0.0), scale=1.0,
                 coarse_resolution=32, source="", metrics=None, residual=None):
        if resolution < coarse_resolution:
            raise ValueError(f"the fine resolution ({resolution}) is below the coarse "
                             f"resolution ({coarse_resolution})")
        self.coarse, self.fine = coarse, fine
        self.resolution, self.coarse_resolution = int(resolution), int(coarse_resolution)
        self.center = np.asarray(center, np.float64)
        self.scale = float(scale)
        self.source = source
        self.metrics = dict(metrics or {})
        self.residual = None if residual is None else np.asarray(residual, np.int64)
        self._mask = None

    @property
    def coarse_is_grid(self):
        """True when the coarse stage is a stored occupancy grid rather than a network."""
        return isinstance(self.coarse, np.ndarray)

    def coarse_grid(self):
        """bool [Rc, Rc, Rc]: the coarse net's occupancy."""
        if self.coarse_is_grid:
            return self.coarse.copy()
        return occupancy_grid(self.coarse, self.coarse_resolution)

    def mask(self):
        """bool [R, R, R]: the coarse occupancy upsampled (nearest); computed once and cached."""
        if self._mask is None:
            self._mask = upsample_mask(self.coarse_grid(), self.resolution)
        return self._mask

    def fine_probabilities(self, batch_size=PREDICT_BATCH):
        """float32 [M]: the fine net at the mask's voxels, in np.flatnonzero(mask) order."""
        return probabilities(self.fine, self.resolution, self.mask(), batch_size)

    def predict_grid(self, batch_size=PREDICT_BATCH):
        """bool [R, R, R]: the fine net inside the mask, empty outside (then the residual)."""
        grid = occupancy_grid(self.fine, self.resolution, mask=self.mask(), batch_size=batch_size)
        if self.residual is not None:
            grid.reshape(-1)[self.residual] ^= True
        return grid

    def occupancy(self, points_or_indices):
        """Random access: the occupancy of some voxels, without reconstructing the grid.

        Costs one coarse net call (a look-up when the coarse stage is a grid) and at most
        one fine network call per voxel asked.

        Args:
            points_or_indices: int [N, 3] voxel indices, or float [N, 3] points in [-1, 1]
                (each answered for the voxel containing it).
        Returns:
            bool [N], equal to predict_grid() at those voxels.

        Example:
            >>> rec.occupancy(np.array([[64, 64, 64]]))
            array([ True])
        """
        query = np.asarray(points_or_indices).reshape(-1, 3)
        indices = (query.astype(np.int64) if np.issubdtype(query.dtype, np.integer)
                   else points_to_indices(query, self.resolution).astype(np.int64))
        if indices.size and (indices.min() < 0 or indices.max() >= self.resolution):
            raise ValueError(f"voxel indices must be within [0, {self.resolution})")
        cells = coarse_cells(indices, self.coarse_resolution, self.resolution)
        inside = (self.coarse[cells[:, 0], cells[:, 1], cells[:, 2]] if self.coarse_is_grid
                  else _predict(self.coarse, voxel_centers(cells, self.coarse_resolution)))
        answer = np.zeros(len(indices), bool)
        answer[inside] = _predict(self.fine, voxel_centers(indices[inside], self.resolution))
        if self.residual is not None:
            flat = (indices[:, 0] * self.resolution + indices[:, 1]) * self.resolution + indices[:, 2]
            answer ^= np.isin(flat, self.residual)
        return answer

    def to_voxel_grid(self):
        """The reconstruction as a VoxelGrid, in the voxelize CLI's format and coordinates."""
        return VoxelGrid(self.resolution, indices_from_dense(self.predict_grid()), self.center,
                         self.scale, f"{self.source} (reconstruction)" if self.source else "reconstruction")

    @property
    def params_coarse(self):
        """The coarse net's parameters; 0 when the coarse stage is a stored grid."""
        return 0 if self.coarse_is_grid else parameter_count(self.coarse)

    @property
    def params_fine(self):
        return parameter_count(self.fine)

    def metadata(self):
        """The JSON-ready description written beside the two models."""
        return {"format": FORMAT, "resolution": self.resolution,
                "coarse_resolution": self.coarse_resolution,
                "center": self.center.tolist(), "scale": self.scale, "source": self.source,
                "coarse_arch": format_arch(arch_of(self.coarse)),
                "fine_arch": format_arch(arch_of(self.fine)),
                "params_coarse": self.params_coarse, "params_fine": self.params_fine,
                "metrics": self.metrics}

    def save(self, directory):
        """Writes coarse.keras, fine.keras and metadata.json into ``directory`` (each atomically)."""
        if self.coarse_is_grid:
            raise ValueError("the coarse stage is a stored grid, not a network: a packed model "
                             "is kept as its .vxz file")
        directory = Path(directory)
        for model, name in ((self.coarse, COARSE_FILE), (self.fine, FINE_FILE)):
            with atomic_output(directory / name) as tmp:
                model.save(tmp)
        with atomic_output(directory / METADATA_FILE) as tmp:
            tmp.write_text(json.dumps(self.metadata(), indent=2))
        return directory

    @classmethod
    def load(cls, directory):
        """Reads a directory written by :meth:`save`; MeshError naming it if it is not one."""
        directory = Path(directory)
        try:
            metadata = json.loads((directory / METADATA_FILE).read_text())
            if metadata.get("format") != FORMAT:
                raise ValueError(f"format {metadata.get('format')!r} is not {FORMAT}")
            coarse, fine = (keras.saving.load_model(directory / name, compile=False)
                            for name in (COARSE_FILE, FINE_FILE))
        except (OSError, ValueError, KeyError) as err:
            raise MeshError(directory, f"not a vox_tf model directory ({err})") from None
        return cls(coarse, fine, metadata["resolution"], metadata["center"], metadata["scale"],
                   metadata["coarse_resolution"], metadata.get("source", ""),
                   metadata.get("metrics"))


def _predict(model, points):
    """bool [N]: the model's probability at float32 [N, 3] points exceeds 0.5."""
    if len(points) == 0:
        return np.zeros(0, bool)
    return np.concatenate([np.asarray(model(points[start:start + PREDICT_BATCH], training=False))[:, 0]
                           for start in range(0, len(points), PREDICT_BATCH)]) > THRESHOLD


def load(path):
    """A saved HierarchicalReconstructor from its directory (``vox_tf.load``)."""
    return HierarchicalReconstructor.load(path)
