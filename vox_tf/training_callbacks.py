"""The Keras callbacks of a stage's training: learning-rate schedules, grid evaluation, backups.

GridEvaluation reconstructs the stage's grid every ``eval_every`` epochs, logs its metrics,
keeps the best weights and stops at zero wrong voxels; PeriodicBackup checkpoints on those
same epochs so a killed stage resumes where its evaluation state was saved.
"""

import json
import math
import time
from pathlib import Path

import keras
import tensorflow as tf
import numpy as np

from vox_tf.files import atomic_output
from vox_tf.run_layout import BEST_WEIGHTS_FILE, STATE_FILE
from vox_tf.tensorboard_summaries import write_reconstruction_image

LOGGED_METRICS = ("iou", "chamfer_l2", "accuracy", "precision", "recall", "wrong_voxels")


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
    voxels, stops training once no voxel is wrong, and points the data's ErrorFocus (if any)
    at the voxels still wrong. With ``image_dir`` each evaluation
    is also a picture in TensorBoard (vox_tf.tensorboard_summaries). With ``state_dir`` it persists its
    state (best weights, elapsed seconds, the plateau callback's counters) on those epochs,
    when :class:`PeriodicBackup` checkpoints the model, and restores it when training resumes.
    """

    def __init__(self, data, every, state_dir=None, plateau=None, image_dir=None):
        super().__init__()
        self.data, self.every, self.plateau = data, every, plateau
        self.image_dir, self._images = image_dir, None
        self.state_dir = Path(state_dir) if state_dir else None
        self.best_metrics, self.best_epoch, self.best_weights = None, None, None
        self.best_prediction = None
        self.last_metrics, self.last_epoch = None, None
        self.epochs_done, self.elapsed_before = 0, 0.0
        self._pending_plateau = None

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()
        if self.data.focus is not None:
            # Search trials share one dataset: a new network starts from plain epochs.
            self.data.focus.reset()
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
        prediction, metrics = self.data.judge(self.model)
        self.last_metrics, self.last_epoch = metrics, epoch + 1
        logs.update({key: metrics[key] for key in LOGGED_METRICS})
        if self.data.focus is not None:
            self.data.focus.update(prediction)
        if self.image_dir is not None:
            # One writer for the whole stage: a writer per picture is an event file each.
            if self._images is None:
                self._images = tf.summary.create_file_writer(str(self.image_dir))
            write_reconstruction_image(self._images, prediction, self.data.target, epoch)
        if self.best_metrics is None or metrics["wrong_voxels"] < self.best_metrics["wrong_voxels"]:
            self.keep(self.model, prediction, metrics, epoch + 1)
            self._save_best()
        if metrics["wrong_voxels"] == 0:
            self.model.stop_training = True
        self._save_state()

    def on_train_end(self, logs=None):
        if self._images is not None:
            self._images.close()
            self._images = None

    def keep(self, model, prediction, metrics, epoch):
        """Holds ``model``'s current weights (``prediction``, judged ``metrics``) as the best."""
        self.best_metrics, self.best_epoch, self.best_prediction = metrics, epoch, prediction
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


class EpochProgress(keras.callbacks.Callback):
    """A tqdm bar over a stage's epochs (vox_tf.console), with the loss and the best grid so far.

    Args:
        bar: from vox_tf.console.progress_bar (disabled below/above verbosity 1).
        evaluation: the stage's GridEvaluation, whose best wrong-voxel count the bar shows.
    """

    def __init__(self, bar, evaluation: GridEvaluation):
        super().__init__()
        self.bar, self.evaluation = bar, evaluation

    def on_epoch_begin(self, epoch, logs=None):
        # A resumed stage starts past 0: the bar starts where it is.
        if self.bar.n == 0 and epoch > 0:
            self.bar.update(epoch)

    def on_epoch_end(self, epoch, logs=None):
        postfix = {"loss": f"{(logs or {}).get('loss', float('nan')):.3g}"}
        if self.evaluation.best_metrics is not None:
            postfix["best wrong voxels"] = self.evaluation.best_metrics["wrong_voxels"]
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()
