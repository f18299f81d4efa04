"""The settings of a two-stage training run (METHOD.md's defaults), as one typed config."""

import dataclasses
from dataclasses import dataclass

from vox_tf.models import TriPlaneConfig, as_arch, build_occupancy_model, format_arch

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
        focus: share of each fine-stage epoch drawn from the voxels the last grid evaluation
            got wrong and their 26-neighbours (vox_tf.error_focus); 0 for METHOD.md's fixed
            sampling. The coarse stage always samples the fixed way.
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
    focus: float = 0.0
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
        if not 0 <= self.focus < 1:
            raise ValueError(f"focus must be in [0, 1), got {self.focus}")
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
