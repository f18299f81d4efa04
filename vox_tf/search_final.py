"""The final training of a search's choice, and the runner-up that replaces a choice that falls short.

The filter chooses after a short retraining (20 epochs at 256^3), when a small network's wrong
voxels still say little about where it ends. On thingi32_441708 the reward chose a 21,223-parameter
fine net (9,924 wrong voxels after the filter) over a 46,183 one (4,851): fully trained, the small
one ended with ~6,900 (IoU 94.9 %; 150 epochs instead of 60: 95.6 %), worse than the larger one
already was. So when the chosen fine network's final reconstruction has more wrong voxels than
another filter candidate had after the filter, that candidate (the best by the objective among
such) is trained the same way and replaces it, from weights already more accurate than the
choice ended (a final training keeps its start's weights unless an evaluation beats them).
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


def runner_up(retrained, chosen_arch, final_accuracy):
    """The filter candidate that replaces a choice whose final training ended at ``final_accuracy``.

    Args:
        retrained: list of vox_tf.search_pipeline.Retrained, the fine filter's results.
        chosen_arch: the chosen one's architecture (never its own runner-up).
        final_accuracy: accuracy of the chosen one's final reconstruction (R^3 grid).
    Returns:
        the Retrained with the best objective among those whose filter accuracy is above
        ``final_accuracy``, or None when there is none (the choice stands).

    Example:
        >>> small = Retrained(Candidate("64:elu", {}, 0.01924, 0.999408, 21223), "00/model.keras")
        >>> large = Retrained(Candidate("128:elu", {}, 0.01923, 0.999711, 46183), "01/model.keras")
        >>> runner_up([small, large], "64:elu", 0.999588).candidate.arch
        '128:elu'
    """
    better = [r for r in retrained
              if r.candidate.arch != chosen_arch and r.candidate.accuracy > final_accuracy]
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
        replacement = runner_up(fine.retrained, fine.arch, first["accuracy"])
        if replacement is None:
            return first, fine.arch, fine.encoding
        candidate = replacement.candidate
        phase(verbose, f"fine stage: {fine.arch} ended at IoU {100 * first['iou']:.3f} %, with more "
                       f"wrong voxels than {candidate.arch} had after the filter: training it instead")
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
