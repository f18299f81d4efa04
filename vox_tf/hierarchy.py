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
from vox_tf.grid import VoxelGrid, indices_from_dense
from vox_tf.metrics import parameter_count
from vox_tf.models import arch_of, format_arch
from vox_tf.sampling import grid_points, upsample_mask

COARSE_FILE = "coarse.keras"
FINE_FILE = "fine.keras"
METADATA_FILE = "metadata.json"
FORMAT = "vox_tf.hierarchical/1"
THRESHOLD = 0.5
PREDICT_BATCH = 1 << 16
"""Points per network call when reconstructing: ~10 MiB of activations for a 128-wide net."""


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
    for points, indices in grid_points(resolution, mask=mask, batch_size=batch_size):
        # A direct call, not predict_on_batch: under MirroredStrategy Keras 3.15's
        # predict_on_batch returns every replica's outputs stacked (2B rows for B points).
        occupied = np.asarray(model(points, training=False))[:, 0] > THRESHOLD
        i = indices.numpy()
        grid[i[:, 0], i[:, 1], i[:, 2]] = occupied
    return grid


class HierarchicalReconstructor:
    """A coarse and a fine occupancy network that together reconstruct one R^3 voxel model.

    Args:
        coarse: keras.Model evaluated on the coarse_resolution^3 grid.
        fine: keras.Model evaluated inside the coarse mask at ``resolution``.
        resolution: R of the fine grid, at least coarse_resolution.
        center, scale: the normalization of the source mesh (see vox_tf.grid.VoxelGrid).
        coarse_resolution: Rc (32 in METHOD.md).
        source: where the voxels came from.
        metrics: dict of figures measured at training time, kept in the metadata.

    Example:
        >>> rec = vox_tf.load("runs/bunny")
        >>> rec.predict_grid().sum()
    """

    def __init__(self, coarse, fine, resolution, center=(0.0, 0.0, 0.0), scale=1.0,
                 coarse_resolution=32, source="", metrics=None):
        if resolution < coarse_resolution:
            raise ValueError(f"the fine resolution ({resolution}) is below the coarse "
                             f"resolution ({coarse_resolution})")
        self.coarse, self.fine = coarse, fine
        self.resolution, self.coarse_resolution = int(resolution), int(coarse_resolution)
        self.center = np.asarray(center, np.float64)
        self.scale = float(scale)
        self.source = source
        self.metrics = dict(metrics or {})
        self._mask = None

    def coarse_grid(self):
        """bool [Rc, Rc, Rc]: the coarse net's occupancy."""
        return occupancy_grid(self.coarse, self.coarse_resolution)

    def mask(self):
        """bool [R, R, R]: the coarse occupancy upsampled (nearest); computed once and cached."""
        if self._mask is None:
            self._mask = upsample_mask(self.coarse_grid(), self.resolution)
        return self._mask

    def predict_grid(self, batch_size=PREDICT_BATCH):
        """bool [R, R, R]: the fine net inside the mask, empty outside."""
        return occupancy_grid(self.fine, self.resolution, mask=self.mask(), batch_size=batch_size)

    def to_voxel_grid(self):
        """The reconstruction as a VoxelGrid, in the voxelize CLI's format and coordinates."""
        return VoxelGrid(self.resolution, indices_from_dense(self.predict_grid()), self.center,
                         self.scale, f"{self.source} (reconstruction)" if self.source else "reconstruction")

    @property
    def params_coarse(self):
        return parameter_count(self.coarse)

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


def load(path):
    """A saved HierarchicalReconstructor from its directory (``vox_tf.load``)."""
    return HierarchicalReconstructor.load(path)
