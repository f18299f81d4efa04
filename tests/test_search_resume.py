"""A search killed with SIGKILL after its first finished trial resumes from its saved trials."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

# 16^3 sphere (8^3 coarse stage), Hyperband of 5 trials per stage, a few epochs each.
CONFIG = {
    "resolution": 16, "coarse_resolution": 8,
    "encoding": {"positional_levels": 2, "triplane_resolution": None},
    "training": {"batch_size": 256, "learning_rate": 0.01, "jit_compile": False, "eval_every": 5},
    **{stage: {"max_layers": 2, "widths": [8, 16], "hyperband": {"max_epochs": 2, "factor": 2},
               "filter": {"top": 1, "epochs": 10}, "final_epochs": 10}
       for stage in ("coarse", "fine")},
}
# Enough coarse filter epochs that the coarse net never ends predicting nothing (test_search.TINY).
CONFIG["coarse"]["filter"]["epochs"] = 40
SPHERE = "import trimesh; trimesh.creation.icosphere(subdivisions=2).export('{path}')"


def search_command(tmp_path):
    """(the `python -m vox_tf.search` command on a small sphere with CONFIG, its --out)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    mesh = tmp_path / "sphere.obj"
    subprocess.run([sys.executable, "-c", SPHERE.format(path=mesh)], check=True)
    out = tmp_path / "run"
    return [sys.executable, "-m", "vox_tf.search", "--mesh", str(mesh), "--config", str(config),
            "--out", str(out), "--verbose", "0"], out


def finished_trials(project):
    ids = set()
    for path in Path(project).glob("trial_*/trial.json"):
        try:
            trial = json.loads(path.read_text())
        except json.JSONDecodeError:  # Keras Tuner is writing it in place: not finished yet
            continue
        if trial["status"] == "COMPLETED":
            ids.add(path.parent.name)
    return ids


def test_killed_search_resumes_without_rerunning_trials(tmp_path):
    command, out = search_command(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    project = out / "search" / "coarse"
    deadline = time.monotonic() + 120
    while not finished_trials(project) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = finished_trials(project)
    assert before, "no trial finished before the kill"
    stamps = {t: (project / t / "trial.json").stat().st_mtime_ns for t in before}
    assert not (out / "results.json").exists()

    # The re-run as a user types it (default verbosity, no TF_CPP_MIN_LOG_LEVEL) also shows
    # the console: a line and a bar per phase, and none of TensorFlow's C++ start-up log.
    quiet = [arg for arg in command if arg not in ("--verbose", "0")]
    user_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(quiet, env=user_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    console = (done.stdout + done.stderr).splitlines()
    assert len(console) <= 40, "\n".join(console)
    for noise in ("E0000", "W0000", "I0000", "absl::InitializeLog", "Running Trial", "UserWarning"):
        assert not any(noise in line for line in console), (noise, console)
    for phase in ("search at 16^3: coarse 1-2 layers of 8,16", "coarse search: Hyperband", "coarse filter:", "fine search: Hyperband",
                  "fine filter:", "final training:", "IoU "):
        assert any(line.startswith(phase) for line in console), (phase, console)
    results = json.loads((out / "results.json").read_text())
    after = finished_trials(project)
    # The trials finished before the kill are kept, untouched, and the search completed
    # with as many trials as Hyperband's schedule holds (5 per stage here).
    assert before <= after
    assert {t: (project / t / "trial.json").stat().st_mtime_ns for t in before} == stamps
    assert results["trials_coarse"] == len(after) == 5
    assert results["trials_fine"] == 5
    assert (out / "model" / "metadata.json").exists()


def _half_ended_trial(project_dir, write_tuner_file):
    """A project as a kill leaves it inside Oracle.end_trial: trial.json says COMPLETED with a
    score, oracle.json still has the trial ongoing (and, for the first trial, no tuner0.json)."""
    import keras
    import keras_tuner

    def build(hp):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(hp.Choice("units", [1, 2]))])
        model.compile(loss="mse")
        return model

    def tuner():
        return keras_tuner.Hyperband(build, objective=keras_tuner.Objective("score", "max"),
                                     max_epochs=2, factor=2, seed=1, directory=str(project_dir),
                                     project_name="stage", overwrite=False)

    first = tuner()
    if write_tuner_file:
        first.save()
    trial = first.oracle.create_trial("tuner0")
    first.oracle.update_trial(trial.trial_id, {"score": 0.5})
    trial.status = "COMPLETED"
    first.oracle.score_trial(trial)
    first.oracle._save_trial(trial)
    return tuner, trial.trial_id


@pytest.mark.parametrize("write_tuner_file", [False, True], ids=["first_trial", "later_trial"])
def test_a_trial_killed_while_being_saved_is_kept_not_rerun(tmp_path, write_tuner_file):
    from vox_tf.tuner_resume import adopt_finished_trials

    tuner, finished = _half_ended_trial(tmp_path, write_tuner_file)
    trial_file = tmp_path / "stage" / f"trial_{finished}" / "trial.json"
    stamp = trial_file.stat().st_mtime_ns
    resumed = tuner()
    assert adopt_finished_trials(resumed) == [finished]
    assert finished in resumed.oracle.end_order
    assert resumed.oracle.trials[finished].score == 0.5
    following = resumed.oracle.create_trial("tuner0")
    assert following.trial_id != finished
    assert trial_file.stat().st_mtime_ns == stamp
    # Once recorded, a further resume has nothing left to adopt.
    assert adopt_finished_trials(tuner()) == []
