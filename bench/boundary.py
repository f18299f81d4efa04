"""Times vox_tf's dual_voxel_boundary op against a SciPy and a pure TensorFlow version.

    python bench/boundary.py [--resolutions 128 256 512] [--repeats 3] [--smoke]

The occupancy is a solid (filled) bunny from ../shared/meshes/real, or the built-in torus when
that folder is absent, at each resolution. The three versions are first checked to give
identical labels; then the median times and the op's speed-up over the faster of the other two.
``--smoke``: 32^3 only, one repeat.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import parse_args, shared_or_builtin  # noqa: E402
from reference_ops import boundary_reference  # noqa: E402
from vox_tf import ops  # noqa: E402

SMOKE = {"resolutions": [32], "repeats": 1}


@tf.function
def boundary_tensorflow(occupancy):
    """Pure TensorFlow labels: 3x3x3 max-pooling for dilation, -max_pool(-x) for erosion.

    Pooling with SAME padding ignores the padded cells, which would make the outside count as
    neither empty nor occupied; padding one layer of zeros and pooling VALID makes it empty.
    """
    occupied = tf.cast(occupancy, tf.float32)[None, ..., None]
    padded = tf.pad(occupied, [[0, 0], [1, 1], [1, 1], [1, 1], [0, 0]])
    window = dict(ksize=3, strides=1, padding="VALID")
    near_occupied = tf.nn.max_pool3d(padded, **window)[0, ..., 0] > 0.5
    all_occupied = -tf.nn.max_pool3d(-padded, **window)[0, ..., 0] > 0.5
    occupancy = tf.cast(occupancy, tf.bool)
    labels = tf.where(occupancy, tf.where(all_occupied, 1, 3), tf.where(near_occupied, 2, 0))
    return tf.cast(labels, tf.int8)


def solid(resolution):
    """bool [R, R, R]: a filled watertight model."""
    mesh = shared_or_builtin("bunny.obj", "torus")
    voxels = ops.voxelize_mesh(mesh.vertices, mesh.faces, resolution, fill=True).numpy()
    grid = np.zeros((resolution,) * 3, bool)
    grid[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = True
    return grid, mesh.source


def median_seconds(run, repeats):
    run()  # warm-up (tracing, thread pools)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (median)")
    args = parse_args(parser, SMOKE, argv)
    print(f"{'R':>5} {'occupied':>11} {'op s':>8} {'scipy s':>8} {'tf s':>8} {'speed-up':>9}")
    for resolution in args.resolutions:
        occupancy, source = solid(resolution)
        tensor = tf.constant(occupancy)
        versions = {
            "op": lambda: ops.dual_voxel_boundary(tensor).numpy(),
            "scipy": lambda: boundary_reference(occupancy),
            "tensorflow": lambda: boundary_tensorflow(tensor).numpy(),
        }
        results = {name: run() for name, run in versions.items()}
        for name, labels in results.items():
            if not np.array_equal(labels, results["scipy"]):
                sys.exit(f"R={resolution}: {name} labels differ from the SciPy reference")
        seconds = {name: median_seconds(run, args.repeats) for name, run in versions.items()}
        best_other = min(seconds["scipy"], seconds["tensorflow"])
        print(f"{resolution:>5} {int(occupancy.sum()):>11} {seconds['op']:>8.3f} "
              f"{seconds['scipy']:>8.3f} {seconds['tensorflow']:>8.3f} "
              f"{best_other / seconds['op']:>8.1f}x", flush=True)
    print(f"(occupancy: {source} filled; all three versions agree on every voxel)")


if __name__ == "__main__":
    main()
