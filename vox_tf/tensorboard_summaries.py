"""What vox_tf shows in TensorBoard beyond Keras' scalars: pictures, 3D errors, the search's HParams.

    images  "reconstruction": true positives grey, false positives red, false negatives blue,
            projected along x, y and z; at every grid evaluation of a training (watch it form)
            and once per search trial (its last state); the run's preview.png at the end
    mesh    "errors": the final reconstruction's voxel centres as a point cloud coloured the
            same way (TensorBoard's mesh plugin), in the mesh's original coordinates
    hparams one experiment over both stages of a search, at the root of DIR/tensorboard, so
            the HParams dashboard lists the coarse and the fine trials side by side
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

from vox_tf.exports import ERROR_CLASSES, error_cloud, error_grids
from vox_tf.grid import VoxelGrid
from vox_tf.preview import projection_panels

IMAGE_TAG = "reconstruction"
MESH_TAG = "errors"
IMAGE_MIN_SIDE = 192
"""Projections of small grids are upscaled (nearest) to at least this many pixels a side."""
MAX_TRUE_POSITIVE_POINTS = 200_000
"""The point cloud keeps every wrong voxel but at most this many correct ones (browser memory)."""


def error_projections(pred, target):
    """Reconstruction vs truth -> uint8 [S, 3 S, 3]: TP/FP/FN max-projections along x, y, z.

    Errors are painted over correct voxels, so a single wrong voxel behind the surface shows.

    Args:
        pred, target: bool [R, R, R].
    Returns:
        uint8 [S, 3 S, 3], S = R scaled up to at least IMAGE_MIN_SIDE.

    Example:
        >>> error_projections(np.ones((4, 4, 4), bool), np.ones((4, 4, 4), bool)).shape
        (192, 576, 3)
    """
    layers = {label: (grid, color) for (label, color), grid in
              zip(ERROR_CLASSES, error_grids(pred, target).values())}
    panels = [panel.image for panel in projection_panels("errors", layers)]
    strip = np.concatenate(panels, axis=1)
    scale = max(1, -(-IMAGE_MIN_SIDE // strip.shape[0]))
    strip = strip.repeat(scale, axis=0).repeat(scale, axis=1)
    return np.round(255 * strip).astype(np.uint8)


def write_image(writer, image, step, tag=IMAGE_TAG, description=None):
    """Appends one uint8 [H, W, 3] picture to ``writer`` (a tf.summary file writer)."""
    with writer.as_default():
        tf.summary.image(tag, np.asarray(image, np.uint8)[None], step=step, description=description)


def write_reconstruction_image(writer, pred, target, step):
    """:func:`error_projections` of a reconstruction as the "reconstruction" image at ``step``."""
    write_image(writer, error_projections(pred, target), step,
                description="grey: right, red: false positive, blue: false negative; "
                            "projections along x, y, z")


def write_png(writer, png_path, step, tag="preview"):
    """A PNG file (e.g. a run's preview.png) as an image summary."""
    image = tf.io.decode_png(tf.io.read_file(str(png_path)), channels=3)
    write_image(writer, image.numpy(), step, tag)


def write_error_cloud(writer, pred, voxels: VoxelGrid, step):
    """vox_tf.exports.error_cloud of the reconstruction as a point cloud for the mesh plugin.

    Args:
        pred: bool [R, R, R] reconstruction; voxels: the ground truth (and its normalization).
    """
    from tensorboard.plugins.mesh import summary_v2 as mesh_summary

    points, colors = error_cloud(pred, voxels, max_true_positives=MAX_TRUE_POSITIVE_POINTS)
    with writer.as_default():
        # Points as large as a voxel, so the cloud reads as the voxel model.
        material = {"cls": "PointsMaterial", "size": 2.0 / voxels.resolution / voxels.scale}
        mesh_summary.mesh(MESH_TAG, vertices=points.astype(np.float32)[None], colors=colors[None],
                          config_dict={"material": material}, step=step,
                          description="grey: right, red: false positive, blue: false negative")


def write_hparams_config(logdir, spaces, metrics):
    """Declares one HParams experiment over several keras_tuner search spaces.

    Replaces an earlier declaration in ``logdir`` (TensorBoard keeps the first one it reads):
    the fine stage re-declares the experiment with the coarse stage's space and its own. A
    hyperparameter of both stages (layers, width_0, ...) gets the union of their domains.

    Args:
        logdir: the root every trial's log directory is under.
        spaces: keras_tuner.HyperParameters, one per stage (``tuner.oracle.get_space()``).
        metrics: tag names logged by each trial under its ``train`` run (e.g. "epoch_iou").
    """
    from keras_tuner.src.engine.tuner_utils import convert_hyperparams_to_hparams
    from tensorboard.plugins.hparams import api as hp_api

    domains = {}
    for space in spaces:
        for hparam in convert_hyperparams_to_hparams(space, hp_api):
            domains.setdefault(hparam.name, []).append(hparam.domain)
    hparams = [hp_api.HParam(name, _union(found, hp_api)) for name, found in domains.items()]
    declared = [hp_api.Metric(tag, group="train", display_name=tag.removeprefix("epoch_"))
                for tag in metrics]
    logdir = Path(logdir)
    for old in logdir.glob("events.out.tfevents.*"):
        old.unlink()
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hp_api.hparams_config(hparams=hparams, metrics=declared)


def _union(domains, hp_api):
    """The smallest HParams domain holding every one of ``domains`` (discrete or interval)."""
    if all(isinstance(d, hp_api.Discrete) for d in domains):
        return hp_api.Discrete(sorted({v for d in domains for v in d.values}))
    low = min(min(d.values) if isinstance(d, hp_api.Discrete) else d.min_value for d in domains)
    high = max(max(d.values) if isinstance(d, hp_api.Discrete) else d.max_value for d in domains)
    interval = hp_api.IntInterval if isinstance(low, int) and isinstance(high, int) else hp_api.RealInterval
    return interval(low, high)
