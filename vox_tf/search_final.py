"""The final training of a search's choice, and the runner-up that replaces a choice that falls short.

The filter chooses after a short retraining (20 epochs at 256^3), when a small network's wrong
voxels still say little about where it ends. On thingi32_441708 the reward chose a 21,223-parameter
fine net (9,924 wrong voxels after the filter) over a 46,183 one (4,851): fully trained, the small
one ended with ~6,900 (IoU 94.9 %; 150 epochs instead of 60: 95.6 %), worse than the larger one
already was. So when the chosen fine network's final reconstruction has more wrong voxels than
another filter candidate had after the filter, that candidate (the best by the objective among
such) is trained the same way and replaces it, from weights already more accurate than the
choice ended (a final training keeps its start's weights unless an evaluation beats them).
The reward can also take a net that ends short of where the grid needs, ahead of the rest
yet: on mgn10_125611504997669_LongCoat at c = 5e7 a 21,223-parameter net ended at IoU 97.878 %
(1,729 wrong voxels), while a 46,183 one had 1,871 after the filter. With ``filter.min_iou``
a choice that ends below it is replaced by the best (by the objective) of the candidates that
were more accurate than it after the filter.
The replaced run is kept in DIR/search/fine_final_superseded, the decision in
DIR/search/fine_runner_up.json: a re-run keeps to it and resumes the training in progress.
"""

import json
import os
from pathlib import Path

import keras

from vox_tf.console import phase
from vox_tf.files import atomic_output
from vox_tf.grid import VoxelGrid
from vox_tf.run_layout import MODEL_DIR, RUNNER_UP_FILE, SEARCH_DIR, SUPERSEDED_DIR
from vox_tf.search_config import SearchConfig
from vox_tf.search_space import train_config
from vox_tf.train import train_hierarchy


def runner_up(retrained, chosen_arch, final, min_iou=None):
    """The filter candidate that replaces a choice whose final training ended at ``final``.

    Args:
        retrained: list of vox_tf.search_filter.Retrained, the fine filter's results, the
            chosen one's among them.
        chosen_arch: the chosen one's architecture (never its own runner-up).
        final: {"accuracy", "iou"} of the chosen one's final reconstruction (R^3 grid).
        min_iou: FilterConfig.min_iou (None: no floor).
    Returns:
        the Retrained with the best objective among those whose filter accuracy is above the
        final accuracy; when there is none and the final IoU is below ``min_iou``, among those
        more accurate than the choice after the filter. None when there is none (the choice
        stands).

    Example:
        >>> small = Retrained(Candidate("64:elu", {}, 0.01924, 0.999408, 21223), "00/model.keras")
        >>> large = Retrained(Candidate("128:elu", {}, 0.01923, 0.999711, 46183), "01/model.keras")
        >>> short = {"accuracy": 0.999588, "iou": 0.955}  # below the large one's filter accuracy
        >>> runner_up([small, large], "64:elu", short).candidate.arch
        '128:elu'
        >>> ended = {"accuracy": 0.999897, "iou": 0.979}  # above it, but below min_iou
        >>> runner_up([small, large], "64:elu", ended, 0.995).candidate.arch
        '128:elu'
    """
    chosen = next(r.candidate for r in retrained if r.candidate.arch == chosen_arch)
    others = [r for r in retrained if r.candidate.arch != chosen_arch]
    better = [r for r in others if r.candidate.accuracy > final["accuracy"]]
    if not better and min_iou is not None and final["iou"] < min_iou:
        better = [r for r in others if r.candidate.accuracy > chosen.accuracy]
    return max(better, key=lambda r: (r.candidate.score, -r.candidate.params), default=None)


def train_final(voxels: VoxelGrid, config: SearchConfig, run_dir, coarse, fine, epochs, verbose=1):
    """Trains the chosen pair into DIR/model, or the fine runner-up when the choice falls short.

    Args:
        coarse, fine: vox_tf.search_pipeline.StageChoice of each stage (fine.retrained: the
            filter's Retrained list).
        epochs: {"coarse": final epochs, "fine": final epochs}.
    Returns:
        (results of vox_tf.train.train_hierarchy, fine arch, fine encoding) of the run in
        DIR/model; with a runner-up, results["superseded"] holds the replaced one's fine_arch,
        iou, accuracy and params.
    """
    run_dir = Path(run_dir)
    model_dir, superseded_dir = run_dir / MODEL_DIR, run_dir / SEARCH_DIR / SUPERSEDED_DIR
    decision_path = run_dir / SEARCH_DIR / RUNNER_UP_FILE

    def train(fine_arch, encoding, start):
        final = train_config(config, encoding, coarse.arch, fine_arch, verbose=verbose,
                             epochs_coarse=epochs["coarse"], epochs_fine=epochs["fine"],
                             **config.training.final_settings())
        return train_hierarchy(voxels, final, model_dir, start=start)

    if decision_path.exists():  # a re-run after the choice was replaced: keep to that
        decision = json.loads(decision_path.read_text())
    else:
        first = train(fine.arch, fine.encoding, {"coarse": coarse.model, "fine": fine.model})
        min_iou = config.fine.filter.min_iou
        replacement = runner_up(fine.retrained, fine.arch, first, min_iou)
        if replacement is None:
            return first, fine.arch, fine.encoding
        candidate = replacement.candidate
        why = (f"with more wrong voxels than {candidate.arch} had after the filter"
               if candidate.accuracy > first["accuracy"] else
               f"below filter.min_iou ({100 * min_iou:.1f} %)")
        phase(verbose, f"fine stage: {fine.arch} ended at IoU {100 * first['iou']:.3f} %, {why}: "
                       f"training {candidate.arch} instead")
        decision = {"fine_arch": candidate.arch, "encoding": candidate.encoding,
                    "superseded": {key: first[key] for key in ("fine_arch", "iou", "accuracy", "params")}}
        with atomic_output(decision_path) as tmp:
            tmp.write_text(json.dumps(decision, indent=2))
    if not superseded_dir.exists():
        os.replace(model_dir, superseded_dir)
    model_path = next(r.model_path for r in fine.retrained
                      if (r.candidate.arch, r.candidate.encoding) == (decision["fine_arch"],
                                                                      decision["encoding"]))
    # Its coarse network is the final one (kept as it is when it has no wrong voxel).
    start = {"coarse": keras.saving.load_model(superseded_dir / "coarse.keras", compile=False),
             "fine": keras.saving.load_model(model_path, compile=False)}
    results = train(decision["fine_arch"], decision["encoding"], start)
    results["superseded"] = decision["superseded"]
    return results, decision["fine_arch"], decision["encoding"]
