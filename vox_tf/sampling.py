"""Training samples of both stages, and the stream of voxel centres for reconstruction.

METHOD.md, two-stage reconstruction:

- Coarse stage: the grid max-pooled to Rc = 32. Every coarse voxel is a sample; the dual-voxel
  boundary voxels (inner + outer boundary, 26-neighbourhood) appear
  ``repeats = ceil(#non-boundary / #boundary)`` times per epoch, the others once.
  A grid finer than 32 but not a multiple of it is pooled conservatively (a coarse voxel is
  occupied if any occupied fine voxel overlaps it); a grid coarser than 32 (R = 8, 16) keeps
  its own resolution for the coarse stage, since pooling *up* would invent detail.
- Fine stage, given a mask (bool R^3, normally the upsampled coarse prediction):
  kernel = mask AND occupied; support = kernel plus its outer dual-voxel boundary;
  non-support = mask minus support. Support appears ``ceil(#non-support / #support)`` times,
  non-support once. As METHOD.md says, the support is not clipped to the mask: kernel voxels on
  the mask's edge have boundary neighbours just outside it, and those are trained too
  (with their true label), so the network is sharp right up to the mask's edge.

Optionally (vox_tf.error_focus, the fine stage's ``focus`` setting) part of each epoch is drawn
from the voxels the network currently gets wrong and their neighbours instead.

Samples are kept as flat voxel numbers (i * R^2 + j * R + k, int32) and become float32 centres
only batch by batch inside tf.data, so no R^3 x 3 float tensor ever exists; dense bool/int8
R^3 grids are used while the sets are built.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from vox_tf import ops
from vox_tf.grid import VoxelGrid

COARSE_RESOLUTION = 32
TRAIN_BATCH_SIZE = 4096
EVAL_BATCH_SIZE = 65536


def as_voxel_grid(voxels):
    """A VoxelGrid, a voxel .npz path, or a voxel_dataset example -> VoxelGrid.

    Args:
        voxels: :class:`VoxelGrid`; a path (str or Path) of the .npz that
            ``python -m vox_tf.voxelize`` writes; or a mapping with at least ``resolution`` and
            ``indices`` ([N, 3] integers), e.g. one example of ``tfds.load("voxel_dataset/...")``
            (tensors or NumPy).
    Returns:
        VoxelGrid with int32 indices.

    Example:
        >>> as_voxel_grid({"resolution": 32, "indices": np.zeros((1, 3), np.uint8)}).indices.dtype
        dtype('int32')
    """
    if isinstance(voxels, VoxelGrid):
        return voxels
    if isinstance(voxels, (str, Path)):
        return VoxelGrid.load(voxels)
    fields = {key: np.asarray(value) for key, value in voxels.items()}
    source = fields.get("source", fields.get("name", np.str_("")))
    source = source.item() if source.ndim == 0 else ""
    return VoxelGrid(
        resolution=int(fields["resolution"]),
        indices=fields["indices"].reshape(-1, 3).astype(np.int32),
        center=fields.get("center", np.zeros(3)).astype(np.float64),
        scale=float(fields.get("scale", 1.0)),
        source=source.decode() if isinstance(source, bytes) else str(source))


def coarse_resolution_for(resolution, coarse_resolution=COARSE_RESOLUTION):
    """The coarse stage's resolution for an R-grid: ``coarse_resolution``, or R if smaller.

    Example:
        >>> coarse_resolution_for(256), coarse_resolution_for(16)
        (32, 16)
    """
    return min(int(resolution), int(coarse_resolution))


def coarse_grid(voxels, coarse_resolution=COARSE_RESOLUTION):
    """Occupancy max-pooled to the coarse stage's grid.

    A coarse voxel is occupied when an occupied fine voxel overlaps it (plain max-pooling when
    R is a multiple of ``coarse_resolution``). For R <= ``coarse_resolution`` the grid is
    returned at R itself.

    Args:
        voxels: anything :func:`as_voxel_grid` takes.
    Returns:
        bool [Rc, Rc, Rc], Rc = :func:`coarse_resolution_for` (R).

    Example:
        >>> coarse_grid(VoxelGrid(64, np.array([[63, 0, 2]], np.int32))).nonzero()
        (array([31]), array([0]), array([1]))
    """
    voxels = as_voxel_grid(voxels)
    fine = voxels.resolution
    coarse = coarse_resolution_for(fine, coarse_resolution)
    indices = voxels.indices.astype(np.int64)
    first = indices * coarse // fine
    last = ((indices + 1) * coarse - 1) // fine  # at most first + 1, since fine >= coarse
    grid = np.zeros((coarse,) * 3, bool)
    for step in np.ndindex(2, 2, 2):
        cells = np.minimum(first + np.array(step), last)
        grid[cells[:, 0], cells[:, 1], cells[:, 2]] = True
    return grid


def coarse_cells(fine_indices, coarse_resolution, resolution):
    """The coarse voxel (index) holding the centre of each fine voxel (index), per axis.

    Example:
        >>> coarse_cells(np.arange(4), 2, 4)
        array([0, 0, 1, 1])
    """
    return (2 * np.asarray(fine_indices, np.int64) + 1) * coarse_resolution // (2 * resolution)


def upsample_mask(coarse_occupancy, resolution):
    """Nearest-neighbour upsampling: each fine voxel takes the coarse voxel holding its centre.

    Args:
        coarse_occupancy: bool [Rc, Rc, Rc].
        resolution: R >= Rc.
    Returns:
        bool [R, R, R].

    Example:
        >>> upsample_mask(np.array([[[True, False]] * 2] * 2), 4)[0, 0]
        array([ True,  True, False, False])
    """
    coarse_occupancy = np.asarray(coarse_occupancy, bool)
    coarse = coarse_occupancy.shape[0]
    if coarse_occupancy.shape != (coarse,) * 3 or resolution < coarse:
        raise ValueError(f"need a cubic coarse grid no finer than {resolution}, "
                         f"got shape {coarse_occupancy.shape}")
    cell = coarse_cells(np.arange(resolution), coarse, resolution)
    return coarse_occupancy[np.ix_(cell, cell, cell)]


@dataclass
class SampleSet:
    """The training voxels of one stage and how often each appears in an epoch.

    Attributes:
        resolution: R of the grid the voxels live on.
        repeated: int32 [S] flat voxel numbers (i * R^2 + j * R + k) shown ``repeats`` times
            per epoch (boundary voxels of the coarse stage, support of the fine stage).
        repeated_labels: bool [S] occupancy of those voxels.
        once: int32 [M] flat voxel numbers shown once per epoch.
        once_labels: bool [M].
        repeats: ceil(M / S), at least 1 (1 when S == 0).
    """

    resolution: int
    repeated: np.ndarray
    repeated_labels: np.ndarray
    once: np.ndarray
    once_labels: np.ndarray
    repeats: int

    @classmethod
    def balanced(cls, resolution, occupancy, repeated, once):
        """Builds the set from bool [R^3] occupancy and flat voxel numbers of the two groups."""
        repeats = max(1, -(-len(once) // len(repeated))) if len(repeated) else 1
        flat = occupancy.reshape(-1)
        return cls(resolution, repeated.astype(np.int32), flat[repeated], once.astype(np.int32),
                   flat[once], int(repeats))

    def __len__(self):
        """Samples per epoch: repeats * S + M."""
        return self.repeats * len(self.repeated) + len(self.once)

    def counts(self):
        """{"repeated": S, "once": M, "repeats": r, "samples": r * S + M}."""
        return {"repeated": len(self.repeated), "once": len(self.once),
                "repeats": self.repeats, "samples": len(self)}

    def dataset(self, batch_size=TRAIN_BATCH_SIZE, seed=None, focus=None):
        """Batches of (points float32 [B, 3] voxel centres, labels float32 [B, 1]).

        One pass is one epoch (every sample once, in a new random order each time the
        dataset is iterated); the last batch may be smaller. ``seed`` makes the sequence of
        epoch orders reproducible. With ``focus`` (vox_tf.error_focus.ErrorFocus) an epoch keeps its
        length but draws part of it from the focus set.
        """
        voxels = tf.constant(np.concatenate([self.repeated, self.once]))
        labels = tf.constant(np.concatenate([self.repeated_labels, self.once_labels]))
        distinct, total = len(self.repeated), len(self)
        shown_repeated = self.repeats * distinct
        resolution = self.resolution
        id_dtype = tf.int32 if total < 2**31 else tf.int64

        def samples_to_batch(ids):
            # Sample ids [0, r*S) cycle over the repeated voxels; the rest map onto `once`;
            # negative ids are ErrorFocus draws.
            regular = tf.maximum(ids, 0)
            regular = tf.where(regular < shown_repeated, tf.math.floormod(regular, max(distinct, 1)),
                               regular - shown_repeated + distinct)
            flat, label = tf.gather(voxels, regular), tf.gather(labels, regular)
            if focus is not None:
                flat, label = focus.substitute(ids, flat, label)
            return _centers_from_flat(flat, resolution), tf.cast(label, tf.float32)[:, None]

        def epoch(epoch_seed):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(total, dtype=id_dtype), seed=tf.stack([epoch_seed, 0]))
            if focus is not None:
                order = focus.draw(order, epoch_seed)
            return _batches(order, total, batch_size)

        # A fresh epoch seed on every iteration, so each epoch is shuffled anew.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        # flat_map hides the batch count; Keras needs it for full progress bars and to know
        # where an epoch ends.
        return _stream(seeds.flat_map(epoch)
                       .apply(tf.data.experimental.assert_cardinality(-(-total // batch_size))),
                       samples_to_batch)


def coarse_samples(voxels, coarse_resolution=COARSE_RESOLUTION):
    """The coarse stage's :class:`SampleSet`: all Rc^3 voxels, boundary voxels repeated.

    Example:
        >>> coarse_samples(VoxelGrid(32, np.array([[5, 5, 5]], np.int32))).counts()
        {'repeated': 27, 'once': 32741, 'repeats': 1213, 'samples': 65492}
    """
    grid = coarse_grid(voxels, coarse_resolution)
    labels = ops.dual_voxel_boundary(grid).numpy().reshape(-1)
    boundary = labels >= ops.OUTER_BOUNDARY
    return SampleSet.balanced(grid.shape[0], grid, np.flatnonzero(boundary),
                              np.flatnonzero(~boundary))


def fine_samples(voxels, mask):
    """The fine stage's :class:`SampleSet`: support repeated, the rest of the mask once.

    Args:
        voxels: anything :func:`as_voxel_grid` takes.
        mask: bool [R, R, R], the voxels the fine network answers for.

    Example:
        >>> block = VoxelGrid(16, np.argwhere(np.ones((2, 2, 2))).astype(np.int32))
        >>> fine_samples(block, np.ones((16,) * 3, bool)).counts()["repeated"]  # 3^3 kernel+ring
        27
    """
    voxels = as_voxel_grid(voxels)
    resolution = voxels.resolution
    mask = np.asarray(mask, bool)
    if mask.shape != (resolution,) * 3:
        raise ValueError(f"mask must be bool [{resolution}]^3 like the voxels, got {mask.shape}")
    occupancy = voxels.dense()
    labels = ops.dual_voxel_boundary(np.logical_and(mask, occupancy)).numpy().reshape(-1)
    support = np.flatnonzero(labels)  # every class but OUTSIDE
    # In place, so that at 512^3 no further 128 MiB temporaries pile up.
    rest = labels == ops.OUTSIDE
    del labels
    np.logical_and(rest, mask.reshape(-1), out=rest)
    rest = np.flatnonzero(rest)
    return SampleSet.balanced(resolution, occupancy, support, rest)


def grid_points(resolution, mask=None, batch_size=EVAL_BATCH_SIZE):
    """Every voxel centre of the mask (or of the whole grid) once, in index order, in batches.

    Args:
        resolution: R.
        mask: optional bool [R, R, R].
    Returns:
        tf.data.Dataset of (points float32 [B, 3], indices int32 [B, 3]).

    Example:
        >>> sum(len(i) for _, i in grid_points(16))
        4096
    """
    if mask is None:
        flat = tf.range(resolution**3, dtype=tf.int32)
    else:
        mask = np.asarray(mask, bool)
        if mask.shape != (resolution,) * 3:
            raise ValueError(f"mask must be bool [{resolution}]^3, got {mask.shape}")
        flat = tf.constant(np.flatnonzero(mask).astype(np.int32))
    total = int(flat.shape[0])

    def to_points(batch):
        return _centers_from_flat(batch, resolution), _indices_from_flat(batch, resolution)

    return _stream(_batches(flat, total, batch_size), to_points)


def _stream(batches, to_tensors):
    """``batches`` mapped by ``to_tensors`` in parallel and prefetched, as every stream of
    this module runs: without the autotuning thread (:func:`without_autotune`)."""
    return without_autotune(batches.map(to_tensors, num_parallel_calls=tf.data.AUTOTUNE)
                            .prefetch(tf.data.AUTOTUNE))


def without_autotune(dataset):
    """The dataset with tf.data's autotuning thread off (AUTOTUNE settings keep their start values).

    Every epoch and every reconstruction makes a new iterator, and destroying the last one
    waits for that thread's sleep to end: on 2 cores the first step of one epoch in three
    stalled ~2 s with both cores idle (thingi32_92763's fine stage, 927k samples an epoch:
    3.6 s a mean epoch with autotuning, 2.7 s without).

    Example:
        >>> without_autotune(tf.data.Dataset.range(3)).options().autotune.enabled
        False
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _batches(values, total, batch_size):
    """Dataset of consecutive slices [b * B, (b + 1) * B) of a 1-D tensor of length total."""
    def batch(b):
        return values[b * batch_size:(b + 1) * batch_size]

    return tf.data.Dataset.range(-(-total // batch_size)).map(batch)


def _indices_from_flat(flat, resolution):
    flat = tf.cast(flat, tf.int32)
    return tf.stack([flat // (resolution * resolution), flat // resolution % resolution,
                     flat % resolution], axis=1)


def _centers_from_flat(flat, resolution):
    # float64 then float32, exactly as vox_tf.grid.voxel_centers rounds.
    indices = tf.cast(_indices_from_flat(flat, resolution), tf.float64)
    return tf.cast(-1.0 + (2.0 * indices + 1.0) / resolution, tf.float32)
