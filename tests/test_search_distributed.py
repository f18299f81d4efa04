"""Keras Tuner's chief/worker mode on 127.0.0.1 (a chief and two workers), and trials under
tf.distribute.MirroredStrategy over two logical CPU devices."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from test_search_resume import CONFIG, search_command


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_share_the_trials(tmp_path):
    command, out = search_command(tmp_path)
    base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(free_port())}
    processes = {tuner_id: subprocess.Popen(command, env={**base, "KERASTUNER_TUNER_ID": tuner_id},
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for tuner_id in ("chief", "tuner1", "tuner2")}
    outputs = {}
    try:
        for tuner_id, process in processes.items():
            outputs[tuner_id] = process.communicate(timeout=300)
    finally:
        for process in processes.values():
            process.kill()
    for tuner_id, process in processes.items():
        assert process.returncode == 0, (tuner_id, outputs[tuner_id][1][-3000:])
    results = json.loads((out / "results.json").read_text())
    assert results["trials_coarse"] == results["trials_fine"] == 5
    for stage in ("coarse", "fine"):
        project = out / "search" / stage
        # A tuner saves its state file after each trial it ran: both workers took part.
        assert (project / "tuner1.json").exists() and (project / "tuner2.json").exists(), stage
    assert "no trials left" in outputs["tuner1"][0]


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import trimesh
    from vox_tf import search_pipeline as search
    from vox_tf.mesh_io import from_trimesh
    from vox_tf.search_config import load_config
    from vox_tf.voxelize import voxelize
    voxels = voxelize(from_trimesh(trimesh.creation.icosphere(subdivisions=2), "sphere"), 16)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = search.run_search(voxels, load_config(sys.argv[1]), sys.argv[2], 0, strategy)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "iou": results["iou"]}))
""")


def test_trials_run_under_mirrored_strategy(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(config), str(tmp_path / "run")],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2
    assert Path(tmp_path / "run" / "model" / "metadata.json").exists()
