"""Settings of ``python -m vox_tf.search``: typed dataclasses read from a YAML file.

Every key is documented in tuner_configs/README.md. Loading checks everything up front:
an unknown key or a bad value raises :class:`vox_tf.errors.MeshError` naming the file and the
key (``"quick.yaml: coarse.hyperband.max_epochs: must be an integer >= 1, got 0"``), so a
typo never surfaces an hour into a search.

Example:
    >>> config = load_config(DEFAULT_CONFIG)
    >>> config.fine.hyperband.max_epochs
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vox_tf.errors import MeshError
from vox_tf.metrics import parameter_count
from vox_tf.models import ACTIVATIONS
from vox_tf.quantization import BITS
from vox_tf.train_config import LR_SCHEDULES, TrainConfig
from vox_tf.typed_config import (BadValue, from_dict, is_int, merged, require, require_int,
                                 require_one_of)

CONFIG_DIR = Path(__file__).resolve().parent / "tuner_configs"
"""Where the shipped configs live inside the package (tuner_configs/ is installed there)."""


def _shipped_config_dir():
    # A source checkout keeps the configs at the repository root, beside the package.
    repo = Path(__file__).resolve().parents[1] / "tuner_configs"
    return CONFIG_DIR if CONFIG_DIR.is_dir() else repo


DEFAULT_CONFIG = _shipped_config_dir() / "quick.yaml"

WIDTHS = {32: (8, 16, 24, 32, 40, 48), 64: (8, 16, 32, 40, 48, 64), 128: (16, 32, 40, 48, 64),
          256: (16, 32, 48, 64, 128), 512: (32, 48, 64, 96, 128)}
"""Layer widths searched per resolution (METHOD.md); other resolutions use the nearest list."""

OBJECTIVES = ("reward", "packed_reward", "accuracy", "iou")
FILTER_CHOICES = ("accuracy", "objective")
"""How the filter chooses among its retrained candidates (FilterConfig.choose)."""
BY_RESOLUTION = "by_resolution"


def widths_for(resolution):
    """METHOD.md's width list for the grid resolution nearest to ``resolution``.

    Example:
        >>> widths_for(128)
        (16, 32, 40, 48, 64)
    """
    return WIDTHS[min(WIDTHS, key=lambda r: (abs(r - resolution), r))]


@dataclass
class ObjectiveConfig:
    """What a trial is scored by, on its reconstruction of the grid (direction: max).

    kind "reward": (accuracy - a) + (b - params) / c, METHOD.md's size-aware reward;
    "packed_reward": the same for the network as a packed file at ``bits`` bits holds it: its
    bytes there (vox_tf.packed_model.network_bytes) instead of its parameter count, b and c in
    bytes, and the accuracy of its weights at those bits (:meth:`judged`);
    "accuracy" or "iou": that metric alone.
    """

    kind: str = "reward"
    a: float = 0.98
    b: float = 7553.0
    c: float = 21121.0
    bits: int = 8

    def check(self):
        require_one_of(self, "kind", OBJECTIVES)
        require(self.c > 0, "c", "must be > 0")
        require_one_of(self, "bits", BITS)

    def size(self, model):
        """What the reward prices: packed bytes for "packed_reward", else parameters."""
        if self.kind == "packed_reward":
            from vox_tf.packed_model import network_bytes  # constriction only when used

            return network_bytes(model, self.bits)
        return parameter_count(model)

    def judged(self, model, data, metrics):
        """The metrics :meth:`score` judges ``model`` by. "packed_reward": those of its weights
        quantized as a packed file of ``bits`` holds them before its fine-tuning
        (vox_tf.quantization.quantize_model), reconstructed on ``data`` (a
        vox_tf.stage_training.StageData; no chamfer), so that the search pays for what the bits
        lose: a net that is cheap in bytes but loses at 4 bits is no longer the best buy
        (bunny 128^3, plainly quantized at 4 bits: the searched 15,799-parameter fine net 5,644
        wrong voxels, 80:relu x3 2,922, 96:relu x3 2,642; after vox_tf.pack's training at the
        levels 315, 5 and 0). The tri-plane nodes that no voxel reads, which a file zeroes
        before quantizing, are quantized as they are: their channels' scales may be coarser
        than the file's. Other kinds: ``metrics``, the float32 model's.
        """
        if self.kind != "packed_reward":
            return metrics
        from vox_tf.quantization import quantize_model

        weights = model.get_weights()
        try:
            model.set_weights([q.dequantize() for q in quantize_model(model, self.bits)])
            return data.evaluate(model, with_chamfer=False)
        finally:
            model.set_weights(weights)

    def rate(self, model, data, metrics):
        """(objective value, the metrics it judged) of ``model``, whose float32 ``metrics`` on
        ``data`` are known: :meth:`score` of :meth:`judged` at :meth:`size`, the one way a
        trial, its log and the filter rate a network."""
        judged = self.judged(model, data, metrics)
        return self.score(judged, self.size(model)), judged

    def score(self, metrics, size):
        """The objective value of one reconstruction (metrics of vox_tf.metrics.grid_metrics)
        for a network of ``size`` (:meth:`size`)."""
        if self.kind in ("reward", "packed_reward"):
            return (metrics["accuracy"] - self.a) + (self.b - size) / self.c
        return float(metrics[self.kind])


@dataclass
class HyperbandConfig:
    """keras_tuner.Hyperband's budget: epochs of the longest trial, reduction factor, iterations."""

    max_epochs: int = 40
    factor: int = 3
    iterations: int = 1

    def check(self):
        require_int(self, "max_epochs", 1)
        require_int(self, "factor", 2)
        require_int(self, "iterations", 1)


@dataclass
class FilterConfig:
    """Retrain the ``top`` best trials' architectures for ``epochs``, then choose one.

    choose "accuracy" (METHOD.md's rule): the smallest whose accuracy is within ``tolerance``
    of the best one's; "objective": the one with the best objective (the stage's reward,
    which prices parameters against wrong voxels) after the retraining.
    most_accurate: also retrain the most accurate trial when it is not among the top, so
    that a choice too small for the grid has a runner-up with the capacity it lacks
    (vox_tf.search_final).
    min_iou: (fine stage) a choice whose final training ends below this IoU is replaced by
    a filter candidate that was more accurate after the filter (vox_tf.search_final).
    """

    top: int = 10
    epochs: int = 100
    tolerance: float = 1e-4
    choose: str = "accuracy"
    most_accurate: bool = False
    min_iou: float | None = None

    def check(self):
        require_int(self, "top", 1)
        require_int(self, "epochs", 1)
        require(self.tolerance >= 0, "tolerance", "must be >= 0")
        require_one_of(self, "choose", FILTER_CHOICES)
        require(self.min_iou is None or 0 < self.min_iou <= 1, "min_iou",
                "must be in (0, 1], or null")


@dataclass
class StageSearchConfig:
    """Search space and budget of one stage (coarse or fine).

    widths: layer widths to choose from (None: METHOD.md's list for the stage's resolution).
    final_samples: when set, the final training runs as many epochs as it takes to show this
        many samples, if that is more than final_epochs: a grid with a smaller mask gets more
        epochs in the same time.
    """

    min_layers: int = 1
    max_layers: int = 6
    widths: list | None = None
    activations: list = field(default_factory=lambda: list(ACTIVATIONS))
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    hyperband: HyperbandConfig = field(default_factory=HyperbandConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    final_epochs: int = 250
    final_samples: int | None = None

    def check(self):
        require_int(self, "min_layers", 1)
        require_int(self, "max_layers", self.min_layers)
        if self.widths is not None:
            require(len(self.widths) > 0 and all(is_int(w) and w >= 1 for w in self.widths),
                    "widths", "must be a non-empty list of positive integers")
        require(len(self.activations) > 0 and set(self.activations) <= set(ACTIVATIONS),
                "activations", f"must be a non-empty list from {', '.join(ACTIVATIONS)}")
        require_int(self, "final_epochs", 1)
        if self.final_samples is not None:
            require_int(self, "final_samples", 1)

    def final_epochs_for(self, samples_per_epoch):
        """Epochs of the final training when one epoch shows ``samples_per_epoch`` samples.

        Example:
            >>> StageSearchConfig(final_epochs=60, final_samples=10**8).final_epochs_for(10**6)
            100
        """
        if self.final_samples is None:
            return self.final_epochs
        return max(self.final_epochs, -(-self.final_samples // samples_per_epoch))

    def widths_at(self, resolution):
        return list(self.widths) if self.widths is not None else list(widths_for(resolution))


@dataclass
class EncodingConfig:
    """Input encodings. A list searches those values (in the fine stage; see the README).

    positional_levels: L of the positional encoding, null for none.
    triplane_resolution: lattice cells per side of the tri-planes, null for none.
    triplane_channels: features per plane.
    coarse_triplane: whether the coarse network gets the tri-planes too (never searched).
    """

    positional_levels: int | None | list = 6
    triplane_resolution: int | None | list = 32
    triplane_channels: int | list = 2
    coarse_triplane: bool = True

    def check(self):
        for name in ("positional_levels", "triplane_resolution", "triplane_channels"):
            values = self.choices(name)
            allow_none = name != "triplane_channels"
            require(len(values) > 0 and all((v is None and allow_none) or (is_int(v) and v >= 0)
                                            for v in values),
                    name, "must be a non-negative integer" + (", null" if allow_none else "")
                    + " or a list of them")

    def choices(self, name):
        """The values of one setting as a list (one element when it is not searched)."""
        value = getattr(self, name)
        return list(value) if isinstance(value, list) else [value]

    def first(self):
        """The unsearched setting: the first value of each list."""
        return {name: self.choices(name)[0] for name in
                ("positional_levels", "triplane_resolution", "triplane_channels")}


_TRAIN = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
"""vox_tf.train_config.TrainConfig's defaults: those of the TrainingConfig keys it shares."""


@dataclass
class TrainingConfig:
    """Training settings shared by trials, the filter step and the final training (vox_tf.train).

    Each key means what the vox_tf.train_config.TrainConfig field of the same name means, and
    defaults to it (METHOD.md's values). jit_compile applies to the filter and final training;
    jit_compile_trials to search trials, whose short runs rarely repay XLA's compile time
    (seconds per new model on a CPU). final_learning_rate: the learning rate the final
    training's schedule restarts from, for both stages (None: learning_rate).
    """

    batch_size: int = _TRAIN["batch_size"]
    learning_rate: float = _TRAIN["learning_rate"]
    weight_decay: float = _TRAIN["weight_decay"]
    lr_schedule: str = _TRAIN["lr_schedule"]
    lr_factor: float = _TRAIN["lr_factor"]
    lr_patience: int = _TRAIN["lr_patience"]
    min_lr: float = _TRAIN["min_lr"]
    focus: float = _TRAIN["focus"]
    eval_every: int = _TRAIN["eval_every"]
    jit_compile: bool = _TRAIN["jit_compile"]
    jit_compile_trials: bool = False
    final_learning_rate: float | None = None

    def check(self):
        for name in ("batch_size", "lr_patience", "eval_every"):
            require_int(self, name, 1)
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require_one_of(self, "lr_schedule", LR_SCHEDULES)
        require(0 < self.lr_factor < 1, "lr_factor", "must be in (0, 1)")
        require(0 <= self.min_lr <= self.learning_rate, "min_lr",
                f"must be in [0, learning_rate], got {self.min_lr!r}")
        require(0 <= self.focus < 1, "focus", f"must be in [0, 1), got {self.focus!r}")
        if self.final_learning_rate is not None:
            require(0 < self.final_learning_rate and self.min_lr <= self.final_learning_rate,
                    "final_learning_rate", f"must be > 0 and >= min_lr, got {self.final_learning_rate!r}")

    def final_settings(self):
        """TrainConfig fields of the final training that differ from the trials' and filter's."""
        return {} if self.final_learning_rate is None else {"learning_rate": self.final_learning_rate}

    def train_settings(self):
        """The TrainConfig fields these settings give (all but jit_compile_trials, final_learning_rate)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in _TRAIN}


@dataclass
class SearchConfig:
    """The whole search: grid, encodings, training, and each stage's space and budget."""

    resolution: int = 128
    fill: bool = False
    coarse_resolution: int = 32
    seed: int = 0
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    coarse: StageSearchConfig = field(default_factory=StageSearchConfig)
    fine: StageSearchConfig = field(default_factory=lambda: StageSearchConfig(
        hyperband=HyperbandConfig(max_epochs=60), filter=FilterConfig(epochs=200),
        final_epochs=1000))
    by_resolution: dict = field(default_factory=dict)

    def __post_init__(self):
        # JSON (a search.json record, a config written as JSON) keeps mapping keys as strings.
        self.by_resolution = {int(key) if isinstance(key, str) and key.isdigit() else key: value
                              for key, value in self.by_resolution.items()}

    def check(self):
        require_int(self, "resolution", 8)
        require_int(self, "coarse_resolution", 1)
        require(self.coarse_resolution <= self.resolution, "coarse_resolution",
                f"must not exceed resolution ({self.resolution})")
        require(self.coarse.objective.kind != "packed_reward", "coarse.objective.kind",
                "packed_reward prices a network's bytes, and a packed file keeps the coarse "
                "stage as its occupancy grid, not its network: use reward")
        require(self.coarse.filter.min_iou is None, "coarse.filter.min_iou",
                "only the fine stage's choice is replaced by a runner-up: use null")
        # Every entry is checked now, not when a grid of its resolution turns up.
        for key, overrides in self.by_resolution.items():
            where = f"{BY_RESOLUTION}.{key}"
            require(is_int(key) and key >= 8, where, "keys must be grid resolutions (integers >= 8)")
            require(isinstance(overrides, dict) and "resolution" not in overrides
                    and BY_RESOLUTION not in overrides, where,
                    "must be a mapping of config keys other than resolution and by_resolution")
            try:
                from_dict(SearchConfig, merged({**self.to_dict(), BY_RESOLUTION: {}}, overrides))
            except ValueError as err:
                raise BadValue(f"{where}.{str(err).split(': ', 1)[0]}",
                               str(err).split(": ", 1)[-1]) from None

    def for_resolution(self, resolution):
        """This config for a grid of ``resolution``: its by_resolution entry applied.

        The entry of the largest resolution <= ``resolution`` is laid over the other keys
        (quick.yaml's make 256^3 and 512^3 searches use METHOD.md's fine space); ``resolution``
        becomes the config's. Applying it twice changes nothing.

        Example:
            >>> load_config().for_resolution(256).fine.max_layers
            6
        """
        data = self.to_dict()
        applied = [r for r in self.by_resolution if r <= resolution]
        if applied:
            data = merged(data, self.by_resolution[max(applied)])
        return from_dict(SearchConfig, {**data, "resolution": int(resolution)})

    def stage(self, name):
        return getattr(self, name)

    def to_dict(self):
        return dataclasses.asdict(self)


def load_config(path=None):
    """Reads a YAML search config; ``None`` reads the shipped quick config.

    Missing keys take the defaults of the dataclasses (METHOD.md's values). The result is for
    the file's ``resolution``; :meth:`SearchConfig.for_resolution` adapts it to a grid's own
    (the search does so for every grid it is given).

    Raises:
        MeshError: "<file>: <key>: <reason>" for a missing or unreadable file, bad YAML, an
            unknown key, a wrong type or an out-of-range value.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise MeshError(path, f"cannot read the config ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise MeshError(path, f"not valid YAML ({err})") from None
    try:
        config = from_dict(SearchConfig, merged(SearchConfig().to_dict(), data if data is not None else {}))
        return config.for_resolution(config.resolution)
    except ValueError as err:
        raise MeshError(path, str(err)) from None


def describe(config: SearchConfig):
    """One line on what a search will use, for the run's console output.

    Example:
        >>> describe(load_config().for_resolution(256))
        'search at 256^3: coarse 2-3 layers of 16,24,32,40; fine 2-6 layers of 16,32,48,64,128; ...'
    """
    stages = []
    for name in ("coarse", "fine"):
        s = config.stage(name)
        at = config.coarse_resolution if name == "coarse" else config.resolution
        stages.append(f"{name} {s.min_layers}-{s.max_layers} layers of "
                      f"{','.join(map(str, s.widths_at(at)))}, Hyperband {s.hyperband.max_epochs} "
                      f"epochs, filter {s.filter.top} x {s.filter.epochs}, final {s.final_epochs}"
                      + ("" if s.final_samples is None else f" or {s.final_samples:,} samples"))
    return f"search at {config.resolution}^3: " + "; ".join(stages)
