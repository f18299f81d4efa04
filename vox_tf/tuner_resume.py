"""Resuming a keras_tuner project whose search was killed while it saved a finished trial.

Keras Tuner ends a trial by writing, in turn, the trial's trial.json (status COMPLETED, its
score), oracle.json (the trial no longer ongoing) and, after the first trial, tuner0.json. A kill
between those writes leaves a finished trial that a new tuner runs again from scratch: without
tuner0.json it does not reload the project at all (and overwrites trial_0000), and with a stale
oracle.json it sends the trial back for a retry. ``adopt_finished_trials`` takes such trials as
finished, as the killed search would have.
"""

from pathlib import Path

from keras_tuner.engine.trial import TrialStatus


def adopt_finished_trials(tuner):
    """Reload ``tuner``'s project if a kill left it unreloaded, and end its finished trials.

    Call it on a tuner just made with ``overwrite=False`` (not on a distributed worker, whose
    oracle is the chief's). Trials that are on disk as COMPLETED with a score but that the oracle
    would retry are recorded as ended instead; nothing is trained.

    Args:
        tuner: a keras_tuner.Tuner (e.g. keras_tuner.Hyperband).

    Returns:
        The ids of the trials adopted, sorted (empty when the last search ended cleanly).

    Example::

        tuner = keras_tuner.Hyperband(build, objective="val_loss", max_epochs=2,
                                      directory="runs", project_name="coarse")
        adopt_finished_trials(tuner)   # [] after a clean stop, ["0000"] after an unlucky kill
    """
    oracle = tuner.oracle
    project = Path(tuner.project_dir)
    if not oracle.trials and (project / "oracle.json").exists() and any(project.glob("trial_*/trial.json")):
        oracle.reload()
    adopted = []
    for trial_id in list(oracle._retry_queue):
        trial = oracle.trials[trial_id]
        if trial.status == TrialStatus.COMPLETED and trial.score is not None:
            # What Oracle.end_trial does after it saved trial.json.
            oracle._retry_queue.remove(trial_id)
            oracle._run_times[trial_id] += 1
            oracle.end_order.append(trial_id)
            adopted.append(trial_id)
    if adopted:
        tuner.save()
    return sorted(adopted)
