"""The search of one voxel model, phase by phase (the engine of ``python -m vox_tf.search``).

Phases of one run (METHOD.md, "Architecture search"), each stage in turn, coarse first:

1. search: keras_tuner.Hyperband over the stage's space (vox_tf.search_space), each trial
   scored on its reconstruction of the grid;
2. filter (vox_tf.search_filter): the ``top`` best architectures (and, with
   ``most_accurate``, the most accurate trial's) retrained ``epochs`` each; the smallest whose
   accuracy is within ``tolerance`` of the best is chosen (or, with ``choose: objective``, the
   best by the stage's objective).
   The fine stage is searched inside the mask of the chosen coarse network;
3. final: both chosen networks trained on by vox_tf.train.train_hierarchy, from their filter
   weights (a stage already without a wrong voxel is kept as it is), up to ``final_epochs``
   (or the epochs that show ``final_samples`` samples, when more).
   A fine choice whose final reconstruction has more wrong voxels than another filter
   candidate had after the filter (or, with ``min_iou``, ends below that IoU) is replaced by
   a runner-up, trained the same way (vox_tf.search_final).

Run directory (DIR = --out)::

    search.json                  config and voxel fingerprint; a re-run must match them
    search/coarse/ search/fine/  keras_tuner projects (oracle.json, trial_*/)
    search/coarse_filter/NN/ search/fine_filter/NN/   filter retraining (model.keras, done.json)
    search/fine_final_superseded/ search/fine_runner_up.json   a fine choice's final run that
                                 a runner-up replaced, and that runner-up
    tensorboard/coarse/ tensorboard/fine/   every trial: loss curves + HParams dashboard
    model/                       the final run of vox_tf.train: vox_tf.load("DIR/model"),
                                 its TensorBoard logs, reconstruction.npz/.ply, errors.ply
    results.json preview.png     the trainer's results plus coarse_arch, fine_arch, trials,
                                 seconds_search; the trainer's preview

Re-running the same command resumes: finished trials, filter runs and stages are reused.
"""

import contextlib
import gc
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_tuner
from keras_tuner.src.distribute import utils as keras_tuner_distribute

from vox_tf.console import phase, progress_bar
from vox_tf.exports import PREVIEW_FILE, RESULTS_FILE, write_results
from vox_tf.files import atomic_output
from vox_tf.grid import VoxelGrid
from vox_tf.search_config import SearchConfig, describe
from vox_tf.search_filter import completed_candidates, filter_candidates
from vox_tf.search_final import train_final
from vox_tf.search_space import OBJECTIVE, StageHyperModel, train_config
from vox_tf.run_layout import (MODEL_DIR, RUN_FILE, SEARCH_DIR, TENSORBOARD_DIR, check_same_run,
                               voxel_fingerprint)
from vox_tf.stage_training import check_resolutions, coarse_stage_data, fine_stage_data
from vox_tf.tensorboard_summaries import write_hparams_config
from vox_tf.tuner_resume import adopt_finished_trials

HPARAMS_METRICS = tuple(f"epoch_{name}" for name in
                        (OBJECTIVE, "wrong_voxels", "params", "iou", "accuracy", "chamfer_l2", "loss"))
"""Scalars of each trial (keras.callbacks.TensorBoard, under its train/ run) in the HParams table."""


@dataclass
class StageChoice:
    """What the search and filter of one stage chose."""

    arch: str
    encoding: dict
    model: keras.Model
    trials: int
    seconds_search: float
    seconds_filter: float
    candidates: list
    retrained: list
    space: keras_tuner.HyperParameters


def make_tuner(hypermodel, config: SearchConfig, stage, run_dir, distribution_strategy=None):
    """keras_tuner.Hyperband on ``hypermodel`` with its project in DIR/search/<stage>.

    An existing project is resumed, its finished trials kept even when a kill cut their saving
    short (vox_tf.tuner_resume).
    """
    hyperband = config.stage(stage).hyperband
    tuner = keras_tuner.Hyperband(
        hypermodel, objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        max_epochs=hyperband.max_epochs, factor=hyperband.factor,
        hyperband_iterations=hyperband.iterations, seed=config.seed,
        directory=str(Path(run_dir) / SEARCH_DIR), project_name=stage, overwrite=False,
        distribution_strategy=distribution_strategy,
        # A trial that fails (e.g. out of memory) is recorded and the search goes on.
        max_consecutive_failed_trials=3)
    if distributed_role() != "worker":
        adopt_finished_trials(tuner)
    return tuner


def hyperband_trials(oracle):
    """How many trials keras_tuner's Hyperband runs in all (the search's progress bar total)."""
    brackets = oracle._get_num_brackets()
    per_iteration = sum(oracle._get_size(bracket, round_)
                        for bracket in range(brackets) for round_ in range(bracket + 1))
    return oracle.hyperband_iterations * per_iteration


def finished_trials(tuner):
    return sum(1 for t in tuner.oracle.trials.values()
               if t.status == keras_tuner.engine.trial.TrialStatus.COMPLETED)




def distributed_role():
    """"chief", "worker" or None (one process), from Keras Tuner's environment variables.

    KERASTUNER_TUNER_ID ("chief" for the chief, any other id for a worker),
    KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (where the chief's oracle listens).
    """
    if not keras_tuner_distribute.has_chief_oracle():
        return None
    return "chief" if keras_tuner_distribute.is_chief_oracle() else "worker"


@contextlib.contextmanager
def collector_skips_live_objects():
    """Within: the garbage collector leaves alone every object alive on entry (gc.freeze).

    Keras Tuner collects garbage twice before every trial (keras.backend.clear_session, then
    gc.collect); each pass walked the ~400k objects of TensorFlow, Keras and the data, 0.2-0.4 s,
    14 s of a 128^3 search's 93 s of trials. Objects made inside are collected as usual, and
    on exit the frozen ones are collectable again (a batch runs many searches in one process).

    Example:
        >>> with collector_skips_live_objects():
        ...     tuner.search()  # each trial's gc.collect() walks only what the trials made
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def search_stage(stage, data, config: SearchConfig, run_dir, verbose=1, distribution_strategy=None,
                 other_spaces=()):
    """Hyperband then filter for one stage; returns StageChoice.

    In distributed mode the chief serves the trials (Keras Tuner's oracle) and then filters;
    a worker runs trials until the oracle has none left and returns None.

    Args:
        other_spaces: the search spaces of the stages searched before (keras_tuner
            HyperParameters), declared with this one in the HParams dashboard.
    """
    run_dir = Path(run_dir)
    started = time.monotonic()
    hypermodel = StageHyperModel(stage, data, config, search_encoding=stage == "fine",
                                 verbose=verbose)
    tuner = make_tuner(hypermodel, config, stage, run_dir, distribution_strategy)
    logdir = run_dir / TENSORBOARD_DIR
    space = tuner.oracle.get_space()
    if distributed_role() != "worker":
        write_hparams_config(logdir, [*other_spaces, space], HPARAMS_METRICS)
    phase(verbose, f"{stage} search: Hyperband, max_epochs "
                   f"{config.stage(stage).hyperband.max_epochs}, grid {data.resolution}^3")
    # A worker's oracle is a client of the chief's: it counts only the trials it runs.
    worker = distributed_role() == "worker"
    total = None if worker else hyperband_trials(tuner.oracle)
    with progress_bar(verbose, total, f"{stage} search", "trial") as bar:
        bar.update(0 if worker else finished_trials(tuner))
        hypermodel.progress = bar
        with collector_skips_live_objects():
            tuner.search(callbacks=[keras.callbacks.TensorBoard(log_dir=str(logdir / stage),
                                                                write_graph=False)],
                         verbose=1 if verbose >= 2 else 0)
    if distributed_role() == "worker":
        return None
    candidates = completed_candidates(tuner)
    if not candidates:
        raise RuntimeError(f"{stage} search: no trial finished; see {tuner.project_dir}")
    seconds_search = time.monotonic() - started
    started = time.monotonic()
    chosen, model, retrained = filter_candidates(stage, data, candidates, config, run_dir, verbose)
    # Distributed workers wait for this file to start the next stage's trials.
    with atomic_output(run_dir / SEARCH_DIR / f"{stage}_choice.keras") as tmp:
        model.save(tmp)
    trials = finished_trials(tuner)
    phase(verbose, f"{stage} stage: chose {chosen.arch} ({chosen.params:,} params, accuracy "
                   f"{chosen.accuracy:.6f}) from {trials} trials")
    return StageChoice(chosen.arch, chosen.encoding, model, trials, seconds_search,
                       time.monotonic() - started, candidates, retrained, space)


def wait_for_choice(run_dir, stage, poll_seconds=1.0):
    """A worker's wait for the chief's chosen model of ``stage`` (its next search needs it)."""
    path = Path(run_dir) / SEARCH_DIR / f"{stage}_choice.keras"
    print(f"waiting for the chief to choose the {stage} network ({path})", file=sys.stderr)
    while not path.exists():
        time.sleep(poll_seconds)
    return keras.saving.load_model(path, compile=False)


def search_record(config: SearchConfig, voxels: VoxelGrid):
    """What search.json records and a resumed search must match: the config and the voxels."""
    return {"config": config.to_dict(), "voxels": voxel_fingerprint(voxels)}


def check_run(run_dir, config: SearchConfig, voxels: VoxelGrid):
    """Raises ValueError if ``run_dir`` holds a search with another config or other voxels."""
    check_same_run(Path(run_dir) / RUN_FILE, search_record(config, voxels), "search")


def run_search(voxels: VoxelGrid, config: SearchConfig, run_dir, verbose=1,
               distribution_strategy=None):
    """The whole search on one voxel model into ``run_dir``; resumable.

    The config is taken at the grid's own resolution (SearchConfig.for_resolution: the
    default config searches METHOD.md's fine space at 256^3 and 512^3), and says so.

    Returns:
        dict, the content of DIR/results.json: vox_tf.train's results (iou, chamfer_l2,
        params_coarse, params_fine, seconds_coarse, seconds_fine, ...) plus coarse_arch,
        fine_arch, trials (both stages), trials_coarse/fine, seconds_search (search and
        filter of both stages), seconds per phase, and the encoding.

    Example:
        >>> run_search(VoxelGrid.load("bunny128.npz"), load_config(), "runs/bunny")["iou"]
    """
    run_dir = Path(run_dir)
    check_resolutions(voxels, train_config(config))
    config = config.for_resolution(voxels.resolution)
    check_run(run_dir, config, voxels)
    phase(verbose, describe(config))
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(run_dir / RUN_FILE) as tmp:
        tmp.write_text(json.dumps(search_record(config, voxels), indent=2))
    started = time.monotonic()
    coarse_settings = train_config(config)
    coarse_data = coarse_stage_data(voxels, coarse_settings)
    coarse = search_stage("coarse", coarse_data, config, run_dir, verbose, distribution_strategy)
    coarse_model = coarse.model if coarse else wait_for_choice(run_dir, "coarse")
    fine_data = fine_stage_data(voxels, coarse_model, coarse_settings)
    fine = search_stage("fine", fine_data, config, run_dir, verbose, distribution_strategy,
                        other_spaces=[coarse.space] if coarse else [])
    if fine is None:  # a distributed worker: the chief filters and trains the final networks
        return None
    seconds_search = time.monotonic() - started

    phase(verbose, f"final training: coarse {coarse.arch}, fine {fine.arch}")
    epochs = {"coarse": config.coarse.final_epochs_for(coarse_data.samples),
              "fine": config.fine.final_epochs_for(fine_data.samples)}
    results, fine_arch, fine_encoding = train_final(voxels, config, run_dir, coarse, fine, epochs,
                                                    verbose)
    results.update({
        "coarse_arch": coarse.arch, "fine_arch": fine_arch, **fine_encoding,
        "trials": coarse.trials + fine.trials, "trials_coarse": coarse.trials,
        "trials_fine": fine.trials, "seconds_search": seconds_search,
        "seconds_search_coarse": coarse.seconds_search, "seconds_filter_coarse": coarse.seconds_filter,
        "seconds_search_fine": fine.seconds_search, "seconds_filter_fine": fine.seconds_filter,
        "seconds_total": time.monotonic() - started,
    })
    write_results(run_dir / RESULTS_FILE, results)
    with atomic_output(run_dir / PREVIEW_FILE) as tmp:
        shutil.copyfile(run_dir / MODEL_DIR / PREVIEW_FILE, tmp)
    return results


def summary_line(results, out):
    return (f"IoU {100 * results['iou']:.3f} %  chamfer {results['chamfer_l2']:.3g}  "
            f"params {results['params_coarse']:,} + {results['params_fine']:,}  "
            f"arch {results['coarse_arch']} | {results['fine_arch']}  "
            f"trials {results['trials']}  seconds {results['seconds_total']:.0f}  -> {out}")


