"""The search space of one stage as a keras_tuner.HyperModel, scored on the grid's reconstruction.

Hyperparameters (keras_tuner conditional ones: ``width_i`` and ``activation_i`` exist only
while ``layers > i``)::

    layers          Int  [min_layers, max_layers]
    width_0..5      Choice of the stage's widths (METHOD.md's list for its resolution)
    activation_0..5 Choice of swish, relu, elu
    positional_levels, triplane_resolution, triplane_channels
                    Choice, only for encoding settings given as lists (fine stage)

``fit()`` trains with vox_tf.stage_training.train_stage, then reconstructs the stage's grid once and
returns {objective, accuracy, iou, chamfer_l2, params, wrong_voxels}; the tuner maximizes
``objective`` (vox_tf.search_config.ObjectiveConfig).
"""

from pathlib import Path

import keras
import keras_tuner
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from vox_tf.metrics import parameter_count
from vox_tf.models import format_arch
from vox_tf.search_config import SearchConfig
from vox_tf.stage_training import StageData, compile_for_training, train_stage
from vox_tf.tensorboard_summaries import write_reconstruction_image
from vox_tf.train_config import TrainConfig

OBJECTIVE = "objective"
ENCODING_KEYS = ("positional_levels", "triplane_resolution", "triplane_channels")
NONE_CHOICE = -1
"""keras_tuner's Choice holds no None: -1 stands for "no such encoding"."""


def train_config(config: SearchConfig, encoding=None, coarse_arch="8:relu", fine_arch="8:relu",
                 verbose=0, **changes):
    """The vox_tf.train_config.TrainConfig of the search's training settings and an encoding.

    Args:
        encoding: dict of ENCODING_KEYS values; None takes the first value of each setting.
        changes: further TrainConfig fields (epochs_coarse, eval_every, ...).
    """
    encoding = encoding or config.encoding.first()
    settings = dict(**config.training.train_settings(), coarse_resolution=config.coarse_resolution,
                    coarse_triplane=config.encoding.coarse_triplane, seed=config.seed,
                    verbose=verbose, **encoding)
    return TrainConfig(coarse_arch, fine_arch, **{**settings, **changes})


def arch_from_values(values):
    """Hyperparameter values (dict) -> architecture text "units:activation,...".

    Example:
        >>> arch_from_values({"layers": 2, "width_0": 16, "activation_0": "elu",
        ...                   "width_1": 8, "activation_1": "relu", "width_2": 48})
        '16:elu,8:relu'
    """
    return format_arch([(values[f"width_{i}"], values[f"activation_{i}"])
                        for i in range(values["layers"])])


def encoding_from_values(values, config: SearchConfig):
    """The encoding a trial used: searched settings from ``values``, the rest from the config."""
    encoding = config.encoding.first()
    for key in ENCODING_KEYS:
        if key in values:
            encoding[key] = None if values[key] == NONE_CHOICE else values[key]
    return encoding


class StageHyperModel(keras_tuner.HyperModel):
    """Architectures of one stage (and, for the fine stage, encodings) for keras_tuner.

    Args:
        stage: "coarse" or "fine".
        data: vox_tf.stage_training.StageData the trials train on and are scored against.
        config: SearchConfig.
        search_encoding: declare list-valued encoding settings as hyperparameters.
        verbose: Keras progress output of each trial.
    """

    def __init__(self, stage, data: StageData, config: SearchConfig, search_encoding=False,
                 verbose=1):
        super().__init__(name=f"{stage}_stage")
        self.stage, self.config = stage, config
        self.data = data
        self.settings = config.stage(stage)
        self.search_encoding, self.verbose = search_encoding, verbose
        # The search's bar (vox_tf.console.progress_bar), advanced by each finished trial.
        self.progress = None
        self.best = None

    def declare_space(self, hp):
        """Declares the hyperparameters; returns (architecture text, encoding dict)."""
        s = self.settings
        layers = hp.Int("layers", s.min_layers, s.max_layers)
        widths = s.widths_at(self.data.resolution)
        arch = []
        for i in range(s.max_layers):
            # Conditional: width_i and activation_i only count while layers > i.
            with hp.conditional_scope("layers", list(range(i + 1, s.max_layers + 1))):
                width = hp.Choice(f"width_{i}", widths)
                activation = hp.Choice(f"activation_{i}", list(s.activations))
            if i < layers:
                arch.append((width, activation))
        encoding = self.config.encoding.first()
        if self.search_encoding:
            for key in ENCODING_KEYS:
                choices = self.config.encoding.choices(key)
                if len(choices) > 1:
                    value = hp.Choice(key, [NONE_CHOICE if c is None else c for c in choices])
                    encoding[key] = None if value == NONE_CHOICE else value
        return format_arch(arch), encoding

    def build(self, hp):
        arch, encoding = self.declare_space(hp)
        model = train_config(self.config, encoding).build(arch, self.stage)
        # Compiled here, inside the tuner's distribution-strategy scope (MirroredStrategy).
        return compile_for_training(model, train_config(
            self.config, encoding, jit_compile=self.config.training.jit_compile_trials))

    def fit(self, hp, model, *args, epochs=1, initial_epoch=0, callbacks=(), **kwargs):
        """Trains ``epochs - initial_epoch`` epochs and scores the reconstruction.

        Hyperband continues a promising trial from its parent's weights (loaded by the
        tuner) with initial_epoch > 0: only the remaining epochs are trained. The grid is
        reconstructed after the last epoch only, which is when the objective appears in
        the logs (so keras_tuner's best-epoch checkpoint holds the scored weights).
        """
        _, encoding = self.declare_space(hp)
        epochs_to_train = max(1, epochs - initial_epoch)
        config = train_config(self.config, encoding, eval_every=epochs_to_train,
                              jit_compile=self.config.training.jit_compile_trials,
                              verbose=self.verbose)
        scorer = ObjectiveLogger(self.settings.objective, self.data)
        for session in callbacks:
            # keras_tuner names each HParams session by its trial id alone, and both stages
            # number their trials from 0000: the dashboard would merge coarse 0000 with fine
            # 0000. The stage in the name keeps them apart.
            if isinstance(session, hparams_api.KerasCallback) and session._trial_id:
                session._trial_id = f"{self.stage} {session._trial_id}"
        result = train_stage(model, self.data, epochs_to_train, config,
                             callbacks=[scorer, *callbacks])
        # The trial's one grid evaluation (eval_every: its last epoch) is of the weights it ends
        # with, and the logger has rated them already.
        scored = scored_metrics(result.metrics, parameter_count(model), *scorer.rating)
        for board in callbacks:
            # keras_tuner points its TensorBoard callback at this trial's own directory.
            if isinstance(board, keras.callbacks.TensorBoard):
                writer = tf.summary.create_file_writer(str(Path(board.log_dir) / "train"))
                write_reconstruction_image(writer, result.prediction, self.data.target,
                                           step=epochs - 1)
                writer.close()
        self._report(scored)
        return scored

    def _report(self, scored):
        """Advances the search's progress bar, showing the best trial so far."""
        if self.best is None or scored[OBJECTIVE] > self.best[OBJECTIVE]:
            self.best = scored
        if self.progress is not None:
            self.progress.set_postfix_str(
                f"best: {self.best['wrong_voxels']:.0f} wrong, {self.best['params']:,.0f} params",
                refresh=False)
            self.progress.update(1)


def scored_metrics(metrics, params, value, judged=None):
    """What a trial reports to the tuner: the objective ``value`` and the figures behind it.

    ``judged``: the metrics the value was judged by (ObjectiveConfig.rate), when not
    ``metrics`` (the float32 model's, which the other figures stay); their wrong voxels are
    reported too, as wrong_voxels_judged.
    """
    scored = {OBJECTIVE: value,
              "accuracy": metrics["accuracy"], "iou": metrics["iou"],
              "chamfer_l2": metrics["chamfer_l2"], "wrong_voxels": float(metrics["wrong_voxels"]),
              "params": float(params)}
    if judged is not None and judged is not metrics:
        scored["wrong_voxels_judged"] = float(judged["wrong_voxels"])
    return scored


class ObjectiveLogger(keras.callbacks.Callback):
    """Adds the objective to the epoch logs whenever the grid was evaluated (TensorBoard shows it),
    and the wrong voxels it was judged by when not the float32 ones (ObjectiveConfig.rate).

    Attributes:
        rating: (objective value, the metrics it judged when not the float32 ones, else None)
            of the latest evaluation, what scored_metrics takes as ``value`` and ``judged``;
            None before the first.
    """

    def __init__(self, objective, data):
        super().__init__()
        self.objective, self.data = objective, data
        self.rating = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "accuracy" in logs and "iou" in logs:
            value, judged = self.objective.rate(self.model, self.data, logs)
            logs[OBJECTIVE] = value
            if judged is logs:
                judged = None
            else:
                logs["wrong_voxels_judged"] = judged["wrong_voxels"]
            self.rating = value, judged
            logs["params"] = parameter_count(self.model)
