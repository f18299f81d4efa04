"""Training both stages of METHOD.md for fixed architectures: ``python -m vox_tf.train``.

    python -m vox_tf.train --voxel bunny128.npz --coarse-arch 40:relu,8:relu,40:swish \\
        --fine-arch 128:elu,64:swish --out runs/bunny

The same as a Python API: :func:`train_hierarchy` for the whole run, and, per stage,
:func:`coarse_stage_data` / :func:`fine_stage_data` + :func:`train_stage` (what the search uses
to train one candidate architecture and read its reconstruction metrics).

Run directory layout (DIR = --out)::

    config.json                 settings and voxel fingerprint; a re-run must match them
    coarse/ fine/               TensorBoard event files of each stage (train/), its resume
                                checkpoint (backup/, state.json, best.npz) and stage.json once done
    coarse.keras fine.keras metadata.json   the trained pair (vox_tf.load(DIR))
    results.json reconstruction.npz reconstruction.ply errors.ply preview.png

Re-running the same command resumes: a finished stage (stage.json written) is reused, an
interrupted one continues from its last checkpoint (taken every eval_every epochs, with the
grid evaluation), up to the epoch budget of the new command.

Optimizer: ``keras.optimizers.Adam(weight_decay=1e-5)``. In Keras 3 every optimizer's
``weight_decay`` is the decoupled kind (w -= lr * wd * w, as AdamW), so AdamW would be the
same update; Adam keeps the reference's name and AdamW's different default decay out of
sight. (PyTorch's Adam, used by the reference, adds wd * w to the gradient instead. Measured on
bunny 128^3, fine stage, 4 seeds: that coupled form ended with more wrong voxels than the
decoupled one or none, within the seeds' spread; so the decoupled form stays.)
"""

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from vox_tf.errors import MeshError
from vox_tf.exports import write_all
from vox_tf.files import atomic_output
from vox_tf.grid import VoxelGrid
from vox_tf.hierarchy import HierarchicalReconstructor, occupancy_grid
from vox_tf.metrics import grid_metrics, parameter_count, storage_bytes
from vox_tf.models import TriPlaneConfig, as_arch, build_occupancy_model, format_arch
from vox_tf.sampling import coarse_dataset, coarse_grid, fine_dataset, upsample_mask

STAGES = ("coarse", "fine")
LOGGED_METRICS = ("iou", "chamfer_l2", "accuracy", "precision", "recall", "wrong_voxels")
CONFIG_FILE = "config.json"
STAGE_FILE = "stage.json"
STATE_FILE = "state.json"
BEST_WEIGHTS_FILE = "best.npz"
BACKUP_DIR = "backup"
RESUMABLE_CHANGES = ("verbose", "eval_every", "epochs_coarse", "epochs_fine")
LR_SCHEDULES = ("plateau", "cosine")


@dataclass
class TrainConfig:
    """Settings of one two-stage training run (defaults: METHOD.md).

    Attributes:
        coarse_arch, fine_arch: hidden layers, "units:activation,..." (see vox_tf.models).
        epochs_coarse, epochs_fine: epoch budget per stage (early stop may end sooner).
        batch_size: points per training step.
        eval_every: reconstruct the grid and log its metrics every this many epochs (and
            after the last); also how often "no wrong voxel" can stop a stage and how often
            the resume checkpoint is taken.
        learning_rate, weight_decay: Adam's.
        lr_schedule: "plateau" (METHOD.md's): ReduceLROnPlateau on the training loss by
            lr_factor after lr_patience epochs without a relative improvement (see
            :class:`RelativePlateau`), down to min_lr. "cosine": from learning_rate down to
            min_lr along half a cosine over the stage's epoch budget (see :func:`cosine_decay`),
            which reaches zero wrong voxels in fewer epochs when the budget is short.
        lr_factor, lr_patience: the plateau schedule's; unused by "cosine".
        min_lr: the lowest learning rate of either schedule.
        positional_levels: PE level L (input included), None for no positional encoding.
        triplane_resolution, triplane_channels: tri-plane lattice; resolution None for none.
        coarse_triplane: whether the coarse network gets the tri-plane features too (the
            reference's does). At 32^3 positional encoding alone suffices: without the planes
            (3 x 2 x 33 x 33 = 6,534 parameters) a coarse net is a third of the size.
        coarse_resolution: Rc of the first stage.
        jit_compile: XLA for training steps and prediction (measured faster on CPU, see
            bench/train_speed.py).
        seed: weights initialisation and shuffling.
        verbose: Keras progress output, 0 silent, 1 bars, 2 one line per epoch.
    """

    coarse_arch: str
    fine_arch: str
    epochs_coarse: int = 250
    epochs_fine: int = 1000
    batch_size: int = 4096
    eval_every: int = 5
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    lr_schedule: str = "plateau"
    lr_factor: float = 0.7
    lr_patience: int = 10
    min_lr: float = 1e-7
    positional_levels: int | None = 6
    triplane_resolution: int | None = 32
    triplane_channels: int = 2
    coarse_triplane: bool = True
    coarse_resolution: int = 32
    jit_compile: bool = True
    seed: int = 0
    verbose: int = 1

    def __post_init__(self):
        # Normalized text form, so equal architectures compare equal in config.json.
        self.coarse_arch = format_arch(as_arch(self.coarse_arch))
        self.fine_arch = format_arch(as_arch(self.fine_arch))
        for name in ("epochs_coarse", "epochs_fine", "batch_size", "eval_every", "lr_patience",
                     "coarse_resolution", "triplane_channels"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")

    def triplane(self, stage="fine"):
        """TriPlaneConfig of a stage's network, or None when it has no tri-planes."""
        if self.triplane_resolution is None or (stage == "coarse" and not self.coarse_triplane):
            return None
        return TriPlaneConfig(self.triplane_resolution, self.triplane_channels)

    def build(self, arch, stage="fine"):
        """An uncompiled occupancy model, named ``stage``, with that stage's encodings."""
        return build_occupancy_model(arch, self.positional_levels, self.triplane(stage), name=stage)

    def identity(self):
        """The settings a resumed run must share with the interrupted one.

        Epoch budgets are not among them: re-running with a larger or smaller budget
        continues an unfinished stage up to the new one (a finished stage stays as it is).
        """
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_CHANGES}


@dataclass
class StageData:
    """What one stage trains on and is judged against.

    Attributes:
        name: "coarse" or "fine".
        resolution: R of the grid the stage reconstructs.
        dataset: tf.data.Dataset of (points float32 [B, 3], labels float32 [B, 1]), one epoch.
        target: bool [R, R, R] ground truth.
        mask: bool [R, R, R] where the network is evaluated (None: everywhere); empty outside.
    """

    name: str
    resolution: int
    dataset: tf.data.Dataset
    target: np.ndarray
    mask: np.ndarray | None = None

    def reconstruct(self, model):
        """bool [R, R, R] the model's reconstruction under this stage's mask rule."""
        return occupancy_grid(model, self.resolution, mask=self.mask)

    def evaluate(self, model, with_chamfer=True):
        """vox_tf.metrics.grid_metrics of the reconstruction against the target."""
        return grid_metrics(self.reconstruct(model), self.target, with_chamfer=with_chamfer)


def coarse_stage_data(voxels: VoxelGrid, config: TrainConfig):
    """Stage 1: every voxel of the max-pooled Rc^3 grid, boundary voxels repeated."""
    return StageData("coarse", config.coarse_resolution,
                     coarse_dataset(voxels, batch_size=config.batch_size,
                                    coarse_resolution=config.coarse_resolution, seed=config.seed),
                     coarse_grid(voxels, config.coarse_resolution))


def fine_stage_data(voxels: VoxelGrid, coarse_model, config: TrainConfig):
    """Stage 2: the voxels inside the trained coarse model's mask, at the full resolution."""
    mask = upsample_mask(occupancy_grid(coarse_model, config.coarse_resolution), voxels.resolution)
    if not mask.any():
        raise ValueError("the coarse stage predicts no occupied voxel, so the fine stage has "
                         "nothing to learn: train the coarse stage longer or wider")
    return StageData("fine", voxels.resolution,
                     fine_dataset(voxels, mask, batch_size=config.batch_size, seed=config.seed),
                     voxels.dense(), mask)


def compile_for_training(model, config: TrainConfig):
    """Adam (decoupled weight decay), binary cross-entropy, XLA per config.jit_compile."""
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, weight_decay=config.weight_decay),
                  loss=keras.losses.BinaryCrossentropy(), jit_compile=config.jit_compile)
    return model


class RelativePlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that counts an epoch as better when the loss drops by a *fraction*.

    Keras' ``min_delta`` is absolute (1e-4 by default): once the fine stage's loss is near
    1e-3 every plateau check fails and the learning rate decays to nothing while the grid
    still has wrong voxels (bunny 128^3: 1e-3 -> 3e-6 by epoch 430, stalled at 71 wrong).
    The reference's PyTorch scheduler uses threshold_mode "rel", threshold 1e-4: better
    means loss < best * (1 - 1e-4), whatever the loss's scale.

    Args:
        threshold: the relative improvement that resets the patience counter.
        **kwargs: keras.callbacks.ReduceLROnPlateau's (monitor, factor, patience, min_lr...).
    """

    def __init__(self, threshold=1e-4, **kwargs):
        super().__init__(mode="min", min_delta=0.0, **kwargs)
        self.threshold = threshold

    def _is_improvement(self, monitor_value, reference_value):
        # Overrides keras' MonitorCallback test (absolute min_delta).
        return reference_value is None or monitor_value < reference_value * (1 - self.threshold)


def cosine_decay(learning_rate, min_lr, epochs):
    """The cosine schedule: epoch index (from 0) -> learning rate, for keras' LearningRateScheduler.

    Starts at ``learning_rate`` and reaches ``min_lr`` after the last of ``epochs`` epochs.
    A pure function of the epoch, so a resumed stage picks up where it was.

    Example:
        >>> decay = cosine_decay(1e-2, 0.0, 100)
        >>> decay(0), round(decay(50), 6)
        (0.01, 0.005)
    """
    def rate(epoch, _current=None):
        return min_lr + 0.5 * (learning_rate - min_lr) * (1 + math.cos(math.pi * epoch / epochs))

    return rate


def is_checkpoint_epoch(epoch, every, epochs):
    """Whether epoch (from 0) ends a period of ``every`` epochs or the whole budget."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


class PeriodicBackup(keras.callbacks.BackupAndRestore):
    """keras.callbacks.BackupAndRestore that saves only on GridEvaluation's epochs.

    A weights file per epoch costs ~20 ms plus TensorBoard's share, a tenth of a small fine
    net's epoch at 128^3; saving with GridEvaluation's state also keeps the two in step.
    """

    def __init__(self, backup_dir, every):
        super().__init__(backup_dir, delete_checkpoint=False)
        self.every = every

    def on_epoch_end(self, epoch, logs=None):
        if is_checkpoint_epoch(epoch, self.every, self.params["epochs"]):
            super().on_epoch_end(epoch, logs)


class GridEvaluation(keras.callbacks.Callback):
    """Every ``every`` epochs (and after the last) reconstructs the grid and logs its metrics.

    Adds iou, chamfer_l2, accuracy, precision, recall and wrong_voxels to the epoch logs (so
    the progress bar and TensorBoard show them), keeps the weights with the fewest wrong
    voxels, and stops training once no voxel is wrong. With ``state_dir`` it persists its
    state (best weights, elapsed seconds, the plateau callback's counters) on those epochs,
    when :class:`PeriodicBackup` checkpoints the model, and restores it when training resumes.
    """

    def __init__(self, data: StageData, every, state_dir=None, plateau=None):
        super().__init__()
        self.data, self.every, self.plateau = data, every, plateau
        self.state_dir = Path(state_dir) if state_dir else None
        self.best_metrics, self.best_epoch, self.best_weights = None, None, None
        self.last_metrics, self.last_epoch = None, None
        self.epochs_done, self.elapsed_before = 0, 0.0
        self._pending_plateau = None

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()
        state_path = self.state_dir / STATE_FILE if self.state_dir else None
        if state_path and state_path.exists():
            state = json.loads(state_path.read_text())
            self.elapsed_before, self.epochs_done = state["elapsed"], state["epochs_done"]
            self.best_metrics, self.best_epoch = state["best_metrics"], state["best_epoch"]
            self._pending_plateau = state.get("plateau")
            best_path = self.state_dir / BEST_WEIGHTS_FILE
            if best_path.exists():
                with np.load(best_path) as saved:
                    self.best_weights = [saved[f"w{i}"] for i in range(len(saved.files))]

    def on_epoch_begin(self, epoch, logs=None):
        # The plateau callback resets its counters in on_train_begin, after this callback's;
        # put back the interrupted run's counters before its first epoch ends instead.
        if self._pending_plateau and self.plateau is not None:
            for key, value in self._pending_plateau.items():
                setattr(self.plateau, key, value)
        self._pending_plateau = None

    def seconds(self):
        return self.elapsed_before + time.monotonic() - self.started

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        self.epochs_done = epoch + 1
        if not is_checkpoint_epoch(epoch, self.every, self.params["epochs"]):
            return
        metrics = self.data.evaluate(self.model)
        self.last_metrics, self.last_epoch = metrics, epoch + 1
        logs.update({key: metrics[key] for key in LOGGED_METRICS})
        if self.best_metrics is None or metrics["wrong_voxels"] < self.best_metrics["wrong_voxels"]:
            self.keep(self.model, metrics, epoch + 1)
            self._save_best()
        if metrics["wrong_voxels"] == 0:
            self.model.stop_training = True
        self._save_state()

    def keep(self, model, metrics, epoch):
        """Holds ``model``'s current weights, judged ``metrics`` after ``epoch`` epochs, as the best."""
        self.best_metrics, self.best_epoch = metrics, epoch
        self.best_weights = [np.array(w) for w in model.get_weights()]

    def _save_best(self):
        if self.state_dir:
            with atomic_output(self.state_dir / BEST_WEIGHTS_FILE) as tmp:
                np.savez(tmp, **{f"w{i}": w for i, w in enumerate(self.best_weights)})

    def _save_state(self):
        if not self.state_dir:
            return
        plateau = None
        if self.plateau is not None:
            plateau = {"wait": self.plateau.wait, "cooldown_counter": self.plateau.cooldown_counter,
                       "best": None if self.plateau.best is None else float(self.plateau.best)}
        state = {"elapsed": self.seconds(), "epochs_done": self.epochs_done,
                 "best_metrics": self.best_metrics,
                 "best_epoch": self.best_epoch, "plateau": plateau}
        with atomic_output(self.state_dir / STATE_FILE) as tmp:
            tmp.write_text(json.dumps(state))


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
    """

    metrics: dict
    history: dict
    seconds: float
    epochs: int
    best_epoch: int


def train_stage(model, data: StageData, epochs, config: TrainConfig, stage_dir=None, callbacks=(),
                warm_start=False):
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
    evaluation = GridEvaluation(data, config.eval_every, stage_dir, plateau)
    if warm_start:
        started = time.monotonic()
        evaluation.keep(model, data.evaluate(model), 0)
        if evaluation.best_metrics["wrong_voxels"] == 0:
            return StageResult(evaluation.best_metrics, {}, time.monotonic() - started, 0, 0)
    all_callbacks = [evaluation, schedule]
    if stage_dir is not None:
        stage_dir = Path(stage_dir)
        all_callbacks += [keras.callbacks.TensorBoard(log_dir=str(stage_dir), write_graph=False),
                          PeriodicBackup(str(stage_dir / BACKUP_DIR), config.eval_every)]
    # shuffle=False: the datasets reshuffle themselves every epoch.
    history = model.fit(data.dataset, epochs=epochs, callbacks=all_callbacks + list(callbacks),
                        shuffle=False, verbose=config.verbose)
    if evaluation.best_metrics is None:
        # No epoch was evaluated (a zero budget): judge the weights as they are.
        evaluation.best_metrics, evaluation.best_epoch = data.evaluate(model), evaluation.epochs_done
    elif evaluation.best_weights is not None and evaluation.best_epoch != evaluation.last_epoch:
        model.set_weights(evaluation.best_weights)
    return StageResult(evaluation.best_metrics, history.history, evaluation.seconds(),
                       evaluation.epochs_done, evaluation.best_epoch)


def voxel_fingerprint(voxels: VoxelGrid):
    """A short digest of the occupied voxels, to tell a resumed run's input from another."""
    digest = hashlib.sha256(np.ascontiguousarray(voxels.indices, np.int32).tobytes()).hexdigest()
    return {"resolution": int(voxels.resolution), "occupied": int(len(voxels.indices)),
            "sha256": digest[:16]}


def check_same_run(record_path, current, what="run"):
    """Raises ValueError if the JSON record at ``record_path`` was written for other settings.

    Args:
        record_path: the run's record (config.json of a training, search.json of a search).
        current: {section: {key: value}} that a resumed run must match, e.g. config, voxels.
        what: the kind of run, for the message.
    """
    path = Path(record_path)
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    current = json.loads(json.dumps(current))  # the JSON form, as the record holds it
    changed = [f"{section}.{key}" for section in current
               for key in current[section] if previous.get(section, {}).get(key) != current[section][key]]
    if changed:
        raise ValueError(f"{path.parent} holds a {what} with other settings ({', '.join(changed)}); "
                         "re-run it unchanged to resume, or choose another --out")


def run_record(config: TrainConfig, voxels: VoxelGrid):
    """What config.json records and a resumed run must match: the settings and the voxels."""
    return {"config": config.identity(), "voxels": voxel_fingerprint(voxels)}


def check_run_dir(out_dir, config: TrainConfig, voxels: VoxelGrid):
    """Raises ValueError if ``out_dir`` holds a run with other settings or voxels."""
    check_same_run(Path(out_dir) / CONFIG_FILE, run_record(config, voxels))


def check_resolutions(voxels: VoxelGrid, config: TrainConfig):
    if voxels.resolution < config.coarse_resolution:
        raise MeshError(voxels.source or "voxels",
                        f"resolution {voxels.resolution} is below the coarse stage's "
                        f"{config.coarse_resolution}")
    if len(voxels.indices) == 0:
        raise MeshError(voxels.source or "voxels", "holds no occupied voxel")


def _run_stage(name, data, arch, epochs, config, out_dir, start=None):
    """Trains a stage into out_dir, or reuses it when a previous run finished it.

    ``start``: a trained keras.Model to continue from when its weights fit ``arch`` with this
    config's encodings (see :func:`train_hierarchy`); otherwise training starts afresh.
    """
    model_path, stage_dir = out_dir / f"{name}.keras", out_dir / name
    done_path = stage_dir / STAGE_FILE
    if done_path.exists() and model_path.exists():
        print(f"{name} stage: already trained, reusing {model_path}", file=sys.stderr)
        return keras.saving.load_model(model_path, compile=False), json.loads(done_path.read_text())
    print(f"{name} stage: {arch} at {data.resolution}^3, up to {epochs} epochs", file=sys.stderr)
    keras.utils.set_random_seed(config.seed)
    model = config.build(arch, name)
    warm = start is not None and [w.shape for w in start.weights] == [w.shape for w in model.weights]
    if warm:
        model.set_weights(start.get_weights())
    result = train_stage(model, data, epochs, config, stage_dir=stage_dir, warm_start=warm)
    with atomic_output(model_path) as tmp:
        model.save(tmp)
    summary = {"metrics": result.metrics, "seconds": result.seconds, "epochs": result.epochs,
               "best_epoch": result.best_epoch, "params": parameter_count(model)}
    with atomic_output(done_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    # The checkpoint only serves an unfinished stage.
    shutil.rmtree(stage_dir / BACKUP_DIR, ignore_errors=True)
    for leftover in (STATE_FILE, BEST_WEIGHTS_FILE):
        (stage_dir / leftover).unlink(missing_ok=True)
    return model, summary


def train_hierarchy(voxels: VoxelGrid, config: TrainConfig, out_dir, start=None):
    """Trains both stages on ``voxels`` into ``out_dir`` and writes every output; resumable.

    Args:
        start: optional {"coarse": keras.Model, "fine": keras.Model} already trained (the
            search's choices): a stage whose model fits its architecture and encodings
            continues from those weights, keeps them unless an evaluated epoch beats them, and
            is not trained at all when they already reconstruct its grid with no wrong voxel.

    Returns:
        dict, the content of results.json: iou, chamfer_l2, accuracy, precision, recall (of
        the two-stage reconstruction over the full R^3 grid), params, params_coarse,
        params_fine, bytes_fp32/fp16/int8, seconds_coarse, seconds_fine, epochs per stage,
        the coarse stage's own metrics (coarse_*), the architectures and the voxel counts.

    Example:
        >>> config = TrainConfig("40:relu,8:relu,40:swish", "128:elu,64:swish")
        >>> train_hierarchy(VoxelGrid.load("bunny128.npz"), config, "runs/bunny")["iou"]
    """
    check_resolutions(voxels, config)
    check_run_dir(out_dir, config, voxels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(run_record(config, voxels), indent=2))

    start = start or {}
    coarse, coarse_summary = _run_stage("coarse", coarse_stage_data(voxels, config),
                                        config.coarse_arch, config.epochs_coarse, config, out_dir,
                                        start.get("coarse"))
    fine_data = fine_stage_data(voxels, coarse, config)
    fine, fine_summary = _run_stage("fine", fine_data, config.fine_arch, config.epochs_fine,
                                    config, out_dir, start.get("fine"))

    prediction = fine_data.reconstruct(fine)
    metrics = grid_metrics(prediction, fine_data.target)
    results = {
        **{key: metrics[key] for key in LOGGED_METRICS},
        "true_positives": metrics["true_positives"], "false_positives": metrics["false_positives"],
        "false_negatives": metrics["false_negatives"],
        "params": parameter_count([coarse, fine]),
        "params_coarse": parameter_count(coarse), "params_fine": parameter_count(fine),
        "bytes_fp32": storage_bytes([coarse, fine], "float32"),
        "bytes_fp16": storage_bytes([coarse, fine], "float16"),
        "bytes_int8": storage_bytes([coarse, fine], "int8"),
        "seconds_coarse": coarse_summary["seconds"], "seconds_fine": fine_summary["seconds"],
        "epochs_coarse": coarse_summary["epochs"], "epochs_fine": fine_summary["epochs"],
        **{f"coarse_{key}": coarse_summary["metrics"][key] for key in LOGGED_METRICS},
        "coarse_arch": config.coarse_arch, "fine_arch": config.fine_arch,
        "resolution": voxels.resolution, "coarse_resolution": config.coarse_resolution,
        "occupied_voxels": int(len(voxels.indices)), "predicted_voxels": int(prediction.sum()),
        "mask_voxels": int(fine_data.mask.sum()), "source": voxels.source,
    }
    reconstructor = HierarchicalReconstructor(coarse, fine, voxels.resolution, voxels.center,
                                              voxels.scale, config.coarse_resolution,
                                              voxels.source, results)
    reconstructor.save(out_dir)
    write_all(out_dir, prediction, voxels, results)
    return results


def _parser():
    defaults = TrainConfig("8:relu", "8:relu")
    p = argparse.ArgumentParser(
        prog="python -m vox_tf.train",
        description="Train the coarse and the fine occupancy network of one voxel model "
                    "(fixed architectures). Re-run the same command to resume.")
    p.add_argument("--voxel", required=True, help="voxel file (.npz of python -m vox_tf.voxelize)")
    p.add_argument("--coarse-arch", required=True, help='e.g. "40:relu,8:relu,40:swish"')
    p.add_argument("--fine-arch", required=True, help='e.g. "128:elu,64:swish"')
    p.add_argument("--epochs-coarse", type=int, default=defaults.epochs_coarse)
    p.add_argument("--epochs-fine", type=int, default=defaults.epochs_fine)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule,
                   help="plateau: METHOD.md's ReduceLROnPlateau; cosine: decay over the epoch "
                        "budget, fewer epochs to a clean reconstruction")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every,
                   help="epochs between grid reconstructions (metrics, early stop)")
    p.add_argument("--coarse-triplane", action=argparse.BooleanOptionalAction,
                   default=defaults.coarse_triplane,
                   help="tri-plane features for the coarse network too (the reference's default)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--no-jit", action="store_true", help="train without XLA")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=defaults.verbose,
                   help="0 silent, 1 progress bars, 2 one line per epoch")
    p.add_argument("--out", required=True, help="run directory")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    # Every check on the input runs before anything is written: bad input leaves no output.
    try:
        config = TrainConfig(args.coarse_arch, args.fine_arch, epochs_coarse=args.epochs_coarse,
                             epochs_fine=args.epochs_fine, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
                             coarse_triplane=args.coarse_triplane,
                             eval_every=args.eval_every, seed=args.seed,
                             jit_compile=not args.no_jit, verbose=args.verbose)
        voxels = VoxelGrid.load(args.voxel)
        check_resolutions(voxels, config)
        check_run_dir(args.out, config, voxels)
    except ValueError as err:  # MeshError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = train_hierarchy(voxels, config, args.out)
    print(f"IoU {100 * results['iou']:.3f} %  chamfer {results['chamfer_l2']:.3g}  "
          f"params {results['params_coarse']:,} + {results['params_fine']:,}  "
          f"seconds {results['seconds_coarse']:.0f} + {results['seconds_fine']:.0f}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
