"""Times vox_tf's exact voxelization op against trimesh (and Open3D when installed).

    python bench/voxelize.py [--resolutions 128 256 512] [--repeats 3] [--icosphere 7]
                             [--surface-resolution 256] [--surface-samples 1000000] [--smoke]

Meshes: bunny.obj and Wuson.ply from ../shared/meshes/real when present, and an icosphere of
327,680 faces (always). Every mesh is normalized first; trimesh's ``voxelized(pitch=2/R)``
and Open3D's ``VoxelGrid.create_from_triangle_mesh`` run on the same normalized mesh.
trimesh's voxelization is approximate: it subdivides triangles until their edges are shorter
than the pitch and keeps the voxels of the resulting vertices, so it can miss voxels a
triangle only grazes; the op is exact (closed-box separating-axis test). Times are medians,
the op warmed up first. Finally the surface-sample check of issue 2: 1M points sampled on each
mesh must all fall in occupied voxels at 256^3. ``--smoke``: 32^3, one repeat, a 1,280-face
icosphere, 10,000 samples per mesh.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import SHARED_REAL, parse_args  # noqa: E402
from reference_ops import uncovered_points  # noqa: E402
from vox_tf import ops  # noqa: E402
from vox_tf.mesh_io import from_trimesh, load_mesh  # noqa: E402

SMOKE = {"resolutions": [32], "repeats": 1, "icosphere": 3, "surface_resolution": 32,
         "surface_samples": 10_000}

try:
    import open3d
except ImportError:
    open3d = None


def benchmark_meshes(subdivisions=7):
    """{name: normalized Mesh}: the shared real meshes (if present) and an icosphere.

    ``subdivisions`` 7 gives 327,680 faces (20 x 4^subdivisions).
    """
    meshes = {}
    for name in ("bunny.obj", "Wuson.ply"):
        if (SHARED_REAL / name).exists():
            meshes[name] = load_mesh(SHARED_REAL / name)
    name = f"icosphere{subdivisions}"
    meshes[name] = from_trimesh(trimesh.creation.icosphere(subdivisions=subdivisions), name)
    return meshes


def median_seconds(run, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def time_op(mesh, resolution, repeats):
    ops.voxelize_mesh(mesh.vertices, mesh.faces, resolution)  # warm-up
    seconds, voxels = median_seconds(
        lambda: ops.voxelize_mesh(mesh.vertices, mesh.faces, resolution).numpy(), repeats)
    return seconds, len(voxels)


def time_trimesh(mesh, resolution, repeats):
    surface = trimesh.Trimesh(mesh.vertices.astype(np.float64), mesh.faces, process=False)
    seconds, voxels = median_seconds(lambda: surface.voxelized(pitch=2.0 / resolution), repeats)
    return seconds, int(voxels.filled_count)


def time_open3d(mesh, resolution, repeats):
    surface = open3d.geometry.TriangleMesh(
        open3d.utility.Vector3dVector(mesh.vertices.astype(np.float64)),
        open3d.utility.Vector3iVector(mesh.faces))
    seconds, grid = median_seconds(
        lambda: open3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds(
            surface, 2.0 / resolution, [-1.0] * 3, [1.0] * 3), repeats)
    return seconds, len(grid.get_voxels())


def print_times(meshes, resolutions, repeats):
    baselines = {"trimesh": time_trimesh}
    if open3d is not None:
        baselines["open3d"] = time_open3d
    print(f"{'mesh':<12} {'faces':>8} {'R':>5} {'op s':>8} {'voxels':>10} "
          + " ".join(f"{name + ' s':>11} {'voxels':>10} {'speed-up':>8}" for name in baselines))
    for name, mesh in meshes.items():
        for resolution in resolutions:
            op_seconds, op_voxels = time_op(mesh, resolution, repeats)
            line = (f"{name:<12} {len(mesh.faces):>8} {resolution:>5} {op_seconds:>8.3f} "
                    f"{op_voxels:>10}")
            for timer in baselines.values():
                seconds, voxels = timer(mesh, resolution, repeats)
                line += f" {seconds:>11.3f} {voxels:>10} {seconds / op_seconds:>7.1f}x"
            print(line, flush=True)
    if open3d is None:
        print("(Open3D is not installed: its column is left out)")


def print_surface_check(meshes, resolution=256, samples=1_000_000):
    """Every shared real mesh (and the benchmark meshes): samples outside occupied voxels."""
    meshes = dict(meshes)
    if SHARED_REAL.is_dir():
        meshes.update({path.name: load_mesh(path) for path in sorted(SHARED_REAL.iterdir())
                       if path.suffix.lower() != ".mtl"})
    print(f"\nsurface check at {resolution}^3: {samples:,} points sampled per mesh")
    for name, mesh in meshes.items():
        occupied = np.zeros((resolution,) * 3, bool)
        voxels = ops.voxelize_mesh(mesh.vertices, mesh.faces, resolution).numpy()
        occupied[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = True
        surface = trimesh.Trimesh(mesh.vertices.astype(np.float64), mesh.faces, process=False)
        points, _ = trimesh.sample.sample_surface(surface, samples, seed=0)
        missed = len(uncovered_points(points, occupied))
        print(f"{name:<20} {missed} of {samples:,} samples outside occupied voxels")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (median)")
    parser.add_argument("--icosphere", type=int, default=7, help="subdivisions of the icosphere")
    parser.add_argument("--surface-resolution", type=int, default=256)
    parser.add_argument("--surface-samples", type=int, default=1_000_000, help="points per mesh")
    args = parse_args(parser, SMOKE, argv)
    meshes = benchmark_meshes(args.icosphere)
    print_times(meshes, args.resolutions, args.repeats)
    print_surface_check(meshes, args.surface_resolution, args.surface_samples)


if __name__ == "__main__":
    main()
