"""A batch of searches in one process vs the same batch as a Beam pipeline on 2 local workers.

    python bench/batch_beam.py [--models 4] [--resolution 48] [--workers 2] [--smoke]

Built-in shapes of vox_tf.shapes, voxelized at --resolution, each searched with the same
small config (a few Hyperband trials per stage, short filter and final training) twice, into
fresh directories: by vox_tf.batch.run_batch (one model after another, TensorFlow on every
core), then by vox_tf.batch_beam.run_beam_batch with DirectRunner's worker processes
(TensorFlow on cores / workers threads each). Prints both wall clocks and their ratio; the
Beam time includes starting the workers (a TensorFlow import each).

``--smoke``: 1 model at 16^3 with the smallest budgets.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import yaml  # noqa: E402

from _common import parse_args  # noqa: E402
from vox_tf.batch import run_batch, voxel_dir_sources  # noqa: E402
from vox_tf.batch_beam import default_threads, pipeline_options, run_beam_batch  # noqa: E402
from vox_tf.mesh_io import from_trimesh  # noqa: E402
from vox_tf.search_config import load_config  # noqa: E402
from vox_tf.shapes import builtin_shape  # noqa: E402
from vox_tf.voxelize import voxelize  # noqa: E402

SMOKE = {"models": 1, "resolution": 16, "epochs": 2}
SHAPES = ("sphere", "torus", "capsule", "mug", "box", "cone", "dumbbell", "annulus")


def search_config(resolution, epochs):
    """A small search: Hyperband up to ``epochs`` per trial, filter and final training 5 x ``epochs``."""
    stage = {"max_layers": 2, "widths": [8, 16], "hyperband": {"max_epochs": epochs, "factor": 2},
             "filter": {"top": 2, "epochs": 5 * epochs}, "final_epochs": 5 * epochs}
    return {"resolution": resolution, "coarse_resolution": 16,
            "encoding": {"positional_levels": 3, "triplane_resolution": 4,
                         "coarse_triplane": False},
            "training": {"batch_size": 512, "learning_rate": 0.01, "jit_compile": False,
                         "eval_every": 5},
            "coarse": stage, "fine": stage}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4, help=f"at most {len(SHAPES)}")
    parser.add_argument("--resolution", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2, help="Beam worker processes")
    parser.add_argument("--epochs", type=int, default=4, help="Hyperband's max_epochs per trial")
    args = parse_args(parser, SMOKE, argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "grids").mkdir()
        for name in SHAPES[:args.models]:
            voxelize(from_trimesh(builtin_shape(name), name), args.resolution).save(
                tmp / "grids" / f"{name}.npz")
        (tmp / "config.yaml").write_text(yaml.safe_dump(search_config(args.resolution, args.epochs)))
        config, sources = load_config(tmp / "config.yaml"), voxel_dir_sources(tmp / "grids")
        options = pipeline_options(f"runner=DirectRunner,direct_num_workers={args.workers},"
                                   "direct_running_mode=multi_processing")

        started = time.perf_counter()
        loop_rows = run_batch(sources, config, tmp / "loop", verbose=0)
        loop_seconds = time.perf_counter() - started
        started = time.perf_counter()
        beam_rows = run_beam_batch(sources, config, tmp / "beam", options, verbose=0)
        beam_seconds = time.perf_counter() - started

    print(f"{args.models} models at {args.resolution}^3 ({', '.join(s.name for s in sources)}), "
          f"{os.cpu_count()} cores")
    print(f"in-process loop:                   {loop_seconds:8.1f} s")
    print(f"Beam, {args.workers} workers x {default_threads(options)} TF threads: "
          f"{beam_seconds:8.1f} s")
    print(f"speed-up loop / Beam:              {loop_seconds / beam_seconds:8.2f}x")
    # A search that failed (a budget too short for its shape) still took its time in both runs.
    for kind, rows in (("loop", loop_rows), ("Beam", beam_rows)):
        failed = [r["model"] for r in rows if r.get("error")]
        if failed:
            print(f"{kind}: failed searches: {', '.join(failed)}")


if __name__ == "__main__":
    main()
