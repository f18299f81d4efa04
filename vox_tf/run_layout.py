"""Where a run keeps its files, and how a re-run tells its own run directory from another's.

One place for the layout of every run directory vox_tf writes, so the trainer, the search and
the batch runs agree on it::

    training run (vox_tf.train, DIR/model of a search)
        config.json             settings and voxel fingerprint; a re-run must match them
        coarse/ fine/           per stage: TensorBoard events (train/), the resume checkpoint
                                (backup/, state.json, best.npz), stage.json once finished
        final/                  TensorBoard: the final preview picture and the 3D error cloud
    search run (vox_tf.search)
        search.json             config and voxel fingerprint
        search/<stage>/         keras_tuner projects; search/<stage>_filter/NN/ filter runs
        search/fine_final_superseded/   a fine choice's final run that a runner-up replaced
        search/fine_runner_up.json      that runner-up (the decision a re-run keeps to)
        tensorboard/<stage>/    the trials' logs and HParams
        model/                  the final training run (layout above)
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

CONFIG_FILE = "config.json"
STAGE_FILE = "stage.json"
STATE_FILE = "state.json"
BEST_WEIGHTS_FILE = "best.npz"
BACKUP_DIR = "backup"
FINAL_SUMMARY_DIR = "final"
RUN_FILE = "search.json"
DONE_FILE = "done.json"
MODEL_DIR = "model"
SEARCH_DIR = "search"
TENSORBOARD_DIR = "tensorboard"
SUPERSEDED_DIR = "fine_final_superseded"
RUNNER_UP_FILE = "fine_runner_up.json"


def clear_resume_state(stage_dir):
    """Deletes a finished stage's resume checkpoint: it only serves an unfinished one."""
    stage_dir = Path(stage_dir)
    shutil.rmtree(stage_dir / BACKUP_DIR, ignore_errors=True)
    for leftover in (STATE_FILE, BEST_WEIGHTS_FILE):
        (stage_dir / leftover).unlink(missing_ok=True)


def voxel_fingerprint(voxels):
    """A short digest of the occupied voxels, to tell a resumed run's input from another."""
    digest = hashlib.sha256(np.ascontiguousarray(voxels.indices, np.int32).tobytes()).hexdigest()
    return {"resolution": int(voxels.resolution), "occupied": int(len(voxels.indices)),
            "sha256": digest[:16]}


def check_same_run(record_path, current, what="run"):
    """Raises ValueError if the JSON record at ``record_path`` was written for other settings.

    Args:
        record_path: the run's record (config.json of a training, search.json of a search).
        current: {section: {key: value}} that a resumed run must match, e.g. config, voxels.
        what: the kind of run, for the message.
    """
    path = Path(record_path)
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    current = json.loads(json.dumps(current))  # the JSON form, as the record holds it
    changed = [f"{section}.{key}" for section in current
               for key in current[section] if previous.get(section, {}).get(key) != current[section][key]]
    if changed:
        raise ValueError(f"{path.parent} holds a {what} with other settings ({', '.join(changed)}); "
                         "re-run it unchanged to resume, or choose another --out")
