"""The filter phase of a stage's search: its trials' candidates retrained longer, one chosen.

What a stage's Hyperband trials leave (keras_tuner) becomes a ranked list of Candidates; the
filter retrains the best of them for the stage's ``filter.epochs`` and chooses one
(vox_tf.search_config.FilterConfig). The search around it: vox_tf.search_pipeline.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_tuner

from vox_tf.console import phase
from vox_tf.files import atomic_output
from vox_tf.metrics import parameter_count
from vox_tf.run_layout import DONE_FILE, SEARCH_DIR, clear_resume_state
from vox_tf.search_config import SearchConfig
from vox_tf.search_space import arch_from_values, encoding_from_values, train_config
from vox_tf.stage_training import train_stage

@dataclass
class Candidate:
    """One architecture (with its encoding) and how it scored.

    Attributes:
        arch: "units:activation,...".
        encoding: dict positional_levels, triplane_resolution, triplane_channels.
        score: the objective; accuracy, params: behind it.
        trial_id: keras_tuner trial it came from ("" for filter results).
    """

    arch: str
    encoding: dict
    score: float
    accuracy: float
    params: int
    trial_id: str = ""


@dataclass
class Retrained:
    """One filter candidate after its retraining: the Candidate and its saved model."""

    candidate: Candidate
    model_path: Path


def completed_candidates(tuner):
    """Each distinct (architecture, encoding) of the finished trials at its best score, best first.

    Equal scores are common (nets that predict nothing score alike, and so do equal widths
    with other activations): they go in trial order, so that a resumed search, whose tuner
    reloads its trials in another order, ranks them as the first run did and reuses its
    filter retrainings.
    """
    best = {}
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        if trial.status != keras_tuner.engine.trial.TrialStatus.COMPLETED or trial.score is None:
            continue
        values = trial.hyperparameters.values
        arch = arch_from_values(values)
        encoding = encoding_from_values(values, tuner.hypermodel.config)
        key = (arch, json.dumps(encoding, sort_keys=True))
        metrics = trial.metrics
        candidate = Candidate(arch, encoding, float(trial.score),
                              float(metrics.get_best_value("accuracy")),
                              int(metrics.get_best_value("params")), trial.trial_id)
        if key not in best or candidate.score > best[key].score:
            best[key] = candidate
    return sorted(best.values(), key=lambda c: (-c.score, c.trial_id))


def filter_candidates(stage, data, candidates, config: SearchConfig, run_dir, verbose):
    """Retrains the top candidates longer; returns (chosen Candidate, its model, [Retrained]).

    The chosen one is the smallest whose accuracy is within the stage's tolerance of the best
    retrained accuracy, or the best retrained objective (``choose``; see :func:`choose`).
    Each retraining lives in DIR/search/<stage>_filter/NN (TensorBoard, resume checkpoint,
    model.keras, done.json) and is skipped once done.
    """
    settings = config.stage(stage).filter
    slate = filter_slate(candidates, settings)
    count = len(slate)
    top = min(settings.top, len(candidates))
    also = " and the most accurate" if count > top else ""
    phase(verbose, f"{stage} filter: the top {top}{also} retrained for {settings.epochs} epochs each")
    results, models = [], []
    for index, candidate in enumerate(slate):
        directory = Path(run_dir) / SEARCH_DIR / f"{stage}_filter" / f"{index:02d}"
        done_path, model_path = directory / DONE_FILE, directory / "model.keras"
        if done_path.exists() and model_path.exists():
            done = json.loads(done_path.read_text())
            if done["arch"] == candidate.arch and done["encoding"] == candidate.encoding:
                results.append(Candidate(**done["candidate"]))
                models.append(model_path)
                continue
            shutil.rmtree(directory)  # a different trial ranking: retrain this slot
        train_settings = train_config(config, candidate.encoding, verbose=verbose)
        keras.utils.set_random_seed(config.seed)
        model = train_settings.build(candidate.arch, stage)
        result = train_stage(model, data, settings.epochs, train_settings, stage_dir=directory,
                             description=f"{stage} filter {index + 1}/{count} {candidate.arch}")
        params = parameter_count(model)
        objective = config.stage(stage).objective
        value, _ = objective.rate(model, data, result.metrics)
        retrained = Candidate(candidate.arch, candidate.encoding, value,
                              result.metrics["accuracy"], params, candidate.trial_id)
        with atomic_output(model_path) as tmp:
            model.save(tmp)
        with atomic_output(done_path) as tmp:
            tmp.write_text(json.dumps({"arch": candidate.arch, "encoding": candidate.encoding,
                                       "candidate": retrained.__dict__, "metrics": result.metrics,
                                       "seconds": result.seconds, "epochs": result.epochs},
                                      indent=2))
        clear_resume_state(directory)
        results.append(retrained)
        models.append(model_path)
    chosen = choose(results, settings)
    model = keras.saving.load_model(models[results.index(chosen)], compile=False)
    return chosen, model, [Retrained(c, path) for c, path in zip(results, models)]


def filter_slate(candidates, settings):
    """The candidates the filter retrains: the ``top`` best, and with ``most_accurate`` the
    most accurate one after them when it is not among them.

    At 256^3 the reward's top 3 may all be nets too small for the grid (mgn10_125611494287978_
    ShirtNoCoat at c = 5e7: 17,655, 14,311 and 12,295 parameters; the first ended at IoU
    97.19 %), and then the final step has no runner-up to replace the choice with; the most
    accurate trial was a 46,183-parameter net.

    Example:
        >>> slate = filter_slate([Candidate("16:elu", {}, 0.0195, 0.9990, 300),
        ...                       Candidate("128:elu", {}, 0.0190, 0.9995, 9000)],
        ...                      vox_tf.search_config.FilterConfig(top=1, most_accurate=True))
        >>> [c.arch for c in slate]
        ['16:elu', '128:elu']
    """
    slate = candidates[:settings.top]
    if settings.most_accurate and candidates:
        best = max(candidates, key=lambda c: (c.accuracy, -c.params))
        if best not in slate:
            slate = slate + [best]
    return slate


def choose(candidates, settings):
    """The filter's choice among its retrained candidates (FilterConfig.choose).

    Example:
        >>> choose([Candidate("64:elu", {}, 0.0195, 0.99995, 900),
        ...         Candidate("16:elu", {}, 0.0199, 0.99990, 300)],
        ...        vox_tf.search_config.FilterConfig(choose="objective")).arch
        '16:elu'
    """
    if settings.choose == "objective":
        return max(candidates, key=lambda c: (c.score, -c.params))
    return pick_smallest(candidates, settings.tolerance)


def pick_smallest(candidates, tolerance):
    """The candidate with the fewest parameters among those within ``tolerance`` of the best accuracy.

    Example:
        >>> pick_smallest([Candidate("64:elu", {}, 0, 0.99995, 900),
        ...                Candidate("16:elu", {}, 0, 0.99990, 300)], 1e-4).arch
        '16:elu'
    """
    best = max(c.accuracy for c in candidates)
    eligible = [c for c in candidates if c.accuracy >= best - tolerance]
    return min(eligible, key=lambda c: (c.params, -c.accuracy))
