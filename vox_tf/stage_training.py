"""Training one stage (coarse or fine) of METHOD.md and judging it on its reconstructed grid.

:func:`coarse_stage_data` / :func:`fine_stage_data` build what a stage trains on and is judged
against; :func:`train_stage` trains a model on it with the grid evaluation, the schedule,
TensorBoard and the resume checkpoint (vox_tf.training_callbacks). vox_tf.train runs both
stages for fixed architectures; the search trains its candidates with the same function.

Optimizer: ``keras.optimizers.Adam(weight_decay=1e-5)``. In Keras 3 every optimizer's
``weight_decay`` is the decoupled kind (w -= lr * wd * w, as AdamW), so AdamW would be the
same update; Adam keeps the reference's name and AdamW's different default decay out of
sight. (PyTorch's Adam, used by the reference, adds wd * w to the gradient instead. Measured on
bunny 128^3, fine stage, 4 seeds: that coupled form ended with more wrong voxels than the
decoupled one or none, within the seeds' spread; so the decoupled form stays.)
"""

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from vox_tf.console import keras_verbosity, progress_bar
from vox_tf.error_focus import ErrorFocus
from vox_tf.errors import MeshError
from vox_tf.grid import VoxelGrid
from vox_tf.hierarchy import occupancy_grid
from vox_tf.metrics import grid_metrics
from vox_tf.run_layout import BACKUP_DIR
from vox_tf.sampling import coarse_grid, coarse_samples, fine_samples, upsample_mask
from vox_tf.train_config import TrainConfig
from vox_tf.training_callbacks import (EpochProgress, GridEvaluation, PeriodicBackup, RelativePlateau,
                                       cosine_decay)

# Training steps per call from Keras into TensorFlow. One step of these small nets is a few
# milliseconds, so the per-call overhead of Keras's Python loop is a large share of it; 8 steps
# per call trained 1.3x more samples/s (bench/train_speed.py, 2 cores). Every callback of the
# trainer runs per epoch, and each step is the same update as with 1, so nothing else changes.
STEPS_PER_EXECUTION = 8


@dataclass
class StageData:
    """What one stage trains on and is judged against.

    Attributes:
        name: "coarse" or "fine".
        resolution: R of the grid the stage reconstructs.
        dataset: tf.data.Dataset of (points float32 [B, 3], labels float32 [B, 1]), one epoch.
        target: bool [R, R, R] ground truth.
        mask: bool [R, R, R] where the network is evaluated (None: everywhere); empty outside.
        focus: the vox_tf.error_focus.ErrorFocus that ``dataset`` draws from, if any; each
            grid evaluation of train_stage updates it.
        samples: samples per epoch of ``dataset`` (None when unknown).
    """

    name: str
    resolution: int
    dataset: tf.data.Dataset
    target: np.ndarray
    mask: np.ndarray | None = None
    focus: ErrorFocus | None = None
    samples: int | None = None

    def reconstruct(self, model):
        """bool [R, R, R] the model's reconstruction under this stage's mask rule."""
        return occupancy_grid(model, self.resolution, mask=self.mask)

    def aim_focus(self, model):
        """Aims the error focus, if any, at ``model``'s wrong voxels from the next pass on."""
        if self.focus is not None:
            self.focus.update(self.reconstruct(model))

    def judge(self, model, with_chamfer=True):
        """(bool [R, R, R] reconstruction, its vox_tf.metrics.grid_metrics against the target)."""
        prediction = self.reconstruct(model)
        return prediction, grid_metrics(prediction, self.target, with_chamfer=with_chamfer)

    def evaluate(self, model, with_chamfer=True):
        """vox_tf.metrics.grid_metrics of the reconstruction against the target."""
        return self.judge(model, with_chamfer)[1]


def coarse_stage_data(voxels: VoxelGrid, config: TrainConfig):
    """Stage 1: every voxel of the max-pooled Rc^3 grid, boundary voxels repeated."""
    samples = coarse_samples(voxels, config.coarse_resolution)
    return StageData("coarse", config.coarse_resolution,
                     samples.dataset(config.batch_size, config.seed),
                     coarse_grid(voxels, config.coarse_resolution), samples=len(samples))


def fine_stage_data(voxels: VoxelGrid, coarse_model, config: TrainConfig):
    """Stage 2: the voxels inside the trained coarse model's mask, at the full resolution."""
    mask = upsample_mask(occupancy_grid(coarse_model, config.coarse_resolution), voxels.resolution)
    if not mask.any():
        raise ValueError("the coarse stage predicts no occupied voxel, so the fine stage has "
                         "nothing to learn: train the coarse stage longer or wider")
    target = voxels.dense()
    focus = ErrorFocus(config.focus, target, mask) if config.focus else None
    samples = fine_samples(voxels, mask)
    return StageData("fine", voxels.resolution,
                     samples.dataset(config.batch_size, config.seed, focus), target, mask, focus,
                     len(samples))


def compile_for_training(model, config: TrainConfig):
    """Adam (decoupled weight decay), binary cross-entropy, XLA per config.jit_compile."""
    # Keras 3.15's multi-step loop fails to trace under a MirroredStrategy (--mirrored).
    steps = 1 if tf.distribute.has_strategy() else STEPS_PER_EXECUTION
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, weight_decay=config.weight_decay),
                  loss=keras.losses.BinaryCrossentropy(), jit_compile=config.jit_compile,
                  steps_per_execution=steps)
    return model


def endless_epochs(dataset, steps_per_execution=1):
    """(dataset, steps per epoch) for model.fit: one epoch's dataset repeated without end.

    Given one finite epoch, Keras makes a new iterator every epoch, and tf.data rewrites and
    instantiates the whole pipeline each time: 20-50 ms, a tenth of a 128^3 fine epoch. Over
    the repeated stream Keras keeps one iterator for the whole fit. An epoch is the dataset's
    batches rounded to whole calls of ``steps_per_execution`` steps, so one pass give or take
    half a call; the stream runs on across epoch ends, each pass in a new order. A pass draws
    its error-focus share (vox_tf.error_focus) when it starts, so a grid evaluation re-aims
    the focus from the next pass on. A dataset of fewer batches than one call stays as it is
    (steps None), or an epoch would be several passes.

    Example:
        >>> stream, steps = endless_epochs(tf.data.Dataset.range(65), 8)
        >>> steps, int(stream.cardinality()) == tf.data.INFINITE_CARDINALITY
        (64, True)
    """
    batches = int(dataset.cardinality())
    if batches < 1:
        raise ValueError(f"the epoch's batch count must be known and positive, got {batches}")
    if batches < steps_per_execution:
        return dataset, None
    return dataset.repeat(), round(batches / steps_per_execution) * steps_per_execution


@dataclass
class StageResult:
    """Outcome of :func:`train_stage`.

    Attributes:
        metrics: grid_metrics of the weights the model ends with (the best evaluated ones).
        history: Keras History.history of this call (per-epoch loss, lr, and the metrics on
            evaluated epochs).
        seconds: wall time of the stage, evaluations included, summed over resumed runs.
        epochs: epochs trained in total (fewer than asked when it stopped early).
        best_epoch: the epoch whose weights were kept.
        prediction: bool [R, R, R], the reconstruction of those weights.
    """

    metrics: dict
    history: dict
    seconds: float
    epochs: int
    best_epoch: int
    prediction: np.ndarray


def train_stage(model, data: StageData, epochs, config: TrainConfig, stage_dir=None, callbacks=(),
                warm_start=False, description=None):
    """Trains one stage and leaves ``model`` with its best evaluated weights.

    Args:
        model: from config.build(); compiled here unless already compiled.
        data: coarse_stage_data() or fine_stage_data().
        epochs: epoch budget.
        config: TrainConfig (optimizer, schedule, evaluation period, verbosity).
        stage_dir: where TensorBoard logs and the resume checkpoint go; None for neither
            (e.g. a search trial that is never resumed).
        callbacks: extra Keras callbacks, run after the built-in ones (they see the metrics).
        warm_start: ``model`` holds trained weights: judge them first, keep them if no later
            epoch beats them, and train nothing when they already have no wrong voxel.
        description: the epoch bar's label at verbosity 1 (vox_tf.console); None for no bar
            (a search trial, whose progress is the search's bar).
    Returns:
        StageResult.

    Example:
        >>> data = coarse_stage_data(voxels, config)
        >>> result = train_stage(config.build("32:swish"), data, 40, config)
        >>> result.metrics["accuracy"]
    """
    if not model.compiled:
        compile_for_training(model, config)
    if config.lr_schedule == "cosine":
        plateau = None
        schedule = keras.callbacks.LearningRateScheduler(
            cosine_decay(config.learning_rate, config.min_lr, epochs))
    else:
        plateau = schedule = RelativePlateau(monitor="loss", factor=config.lr_factor,
                                             patience=config.lr_patience, min_lr=config.min_lr)
    evaluation = GridEvaluation(data, config.eval_every, stage_dir, plateau,
                                image_dir=None if stage_dir is None else Path(stage_dir) / "train")
    if warm_start:
        started = time.monotonic()
        evaluation.keep(model, *data.judge(model), 0)
        if evaluation.best_metrics["wrong_voxels"] == 0:
            return StageResult(evaluation.best_metrics, {}, time.monotonic() - started, 0, 0,
                               evaluation.best_prediction)
    all_callbacks = [evaluation, schedule]
    if description is not None:
        all_callbacks.append(EpochProgress(
            progress_bar(config.verbose, epochs, description, "epoch"), evaluation))
    if stage_dir is not None:
        stage_dir = Path(stage_dir)
        all_callbacks += [keras.callbacks.TensorBoard(log_dir=str(stage_dir), write_graph=False),
                          PeriodicBackup(str(stage_dir / BACKUP_DIR), config.eval_every)]
    # shuffle=False: the datasets reshuffle themselves every epoch.
    stream, steps = endless_epochs(data.dataset, model.steps_per_execution)
    history = model.fit(stream, steps_per_epoch=steps, epochs=epochs,
                        callbacks=all_callbacks + list(callbacks), shuffle=False,
                        verbose=keras_verbosity(config.verbose))
    if evaluation.best_metrics is None:
        # No epoch was evaluated (a zero budget): judge the weights as they are.
        evaluation.keep(model, *data.judge(model), evaluation.epochs_done)
    elif evaluation.best_weights is not None and evaluation.best_epoch != evaluation.last_epoch:
        model.set_weights(evaluation.best_weights)
    prediction = evaluation.best_prediction
    if prediction is None:  # best weights restored from an interrupted run's checkpoint
        prediction = data.reconstruct(model)
    return StageResult(evaluation.best_metrics, history.history, evaluation.seconds(),
                       evaluation.epochs_done, evaluation.best_epoch, prediction)


def check_resolutions(voxels: VoxelGrid, config: TrainConfig):
    if voxels.resolution < config.coarse_resolution:
        raise MeshError(voxels.source or "voxels",
                        f"resolution {voxels.resolution} is below the coarse stage's "
                        f"{config.coarse_resolution}")
    if len(voxels.indices) == 0:
        raise MeshError(voxels.source or "voxels", "holds no occupied voxel")
