"""Checks and times the dual_voxel_boundary CUDA kernel on a GPU, where TensorFlow need not be.

    python bench/boundary_cuda.py [--sizes 256 512 1024] [--repeats 20] [--smoke]
    python bench/boundary_cuda.py --build-only [--kernel FILE ...]   # where nvcc and TensorFlow are
    python bench/boundary_cuda.py --harness HARNESS [...]            # where the GPU is

TensorFlow's GPU build is far too large to carry to a GPU machine that lacks it, so the kernel
is linked into a small harness (bench/boundary_cuda_harness.cu.cc) that hands it an
Eigen::GpuDevice as the op does. It is compiled with setup.py's nvcc flags and TensorFlow's
own Eigen (``--include`` names another copy of it), for sm_90 with PTX for newer GPUs.

Each harness's labels and counts are first checked against tests/reference_ops.py on small
grids of odd shapes, with and without a mask, its outputs poisoned before every run; on the
timing grids (a ball with 1 % of its voxels flipped; with no mask and with a random half
masked) every harness must agree with the reference at the smallest side and with the first
harness at all. Then the median of ``--repeats`` runs and the bandwidth counted as occupancy,
mask and labels bytes over that time. ``--smoke``: build, and check the small grids when there
is a GPU.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import parse_args  # noqa: E402
from reference_ops import boundary_reference  # noqa: E402

KERNEL = ROOT / "custom_ops" / "kernels" / "dual_voxel_boundary_kernel.cu.cc"
HARNESS_SOURCE = ROOT / "bench" / "boundary_cuda_harness.cu.cc"
BUILD = ROOT / "build" / "boundary_cuda"
# setup.py's flags for the .cu.cc, bar TensorFlow's own and its list of GPU targets.
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-DNDEBUG", "-DGOOGLE_CUDA=1",
              "-Xcompiler", "-Wno-deprecated-declarations"]  # Eigen calls CUDA 13-deprecated API
GENCODE = ["arch=compute_90,code=[sm_90,compute_90]"]
SMOKE = {"sizes": [], "repeats": 1}


def eigen_flags(include):
    """nvcc flags that find Eigen: TensorFlow's compile flags, or ``include`` when given."""
    if include:
        return [f"-I{include}", "-DEIGEN_MAX_ALIGN_BYTES=64"]
    import tensorflow as tf

    return tf.sysconfig.get_compile_flags()


def build_harness(kernel, include=None, gencode=GENCODE):
    """Compiles ``kernel`` (a .cu.cc) into its own harness under build/boundary_cuda/.

    The harness is named for the kernel's path, and for its GPU targets when they are not
    ``GENCODE``'s (``["arch=compute_80,code=sm_80"]``: ``..._sm_80``).
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        sys.exit("error: nvcc not found on PATH: the harness cannot be built here")
    kernel = Path(kernel).resolve()
    name = str(kernel.relative_to(ROOT) if kernel.is_relative_to(ROOT) else kernel.name)
    targets = "" if gencode == GENCODE else "_" + "_".join(
        re.sub(r"[^\w]+", "_", g.split("code=")[1]).strip("_") for g in gencode)
    output = BUILD / (name.removesuffix(".cu.cc").replace("/", "_") + targets)
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [nvcc, *NVCC_FLAGS, *(f"-gencode={g}" for g in gencode), *eigen_flags(include),
               f"-I{KERNEL.parent}", "-x", "cu", str(kernel), str(HARNESS_SOURCE), "-o",
               str(output)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    print(f"built {output.relative_to(ROOT)} from {name}", flush=True)
    return output


def write_grid(path, occupancy, mask):
    """Writes the harness's GRID file (see bench/boundary_cuda_harness.cu.cc)."""
    with open(path, "wb") as f:
        f.write(np.array([*occupancy.shape, mask is not None], np.int64).tobytes())
        f.write(np.ascontiguousarray(occupancy, np.uint8).tobytes())
        if mask is not None:
            f.write(np.ascontiguousarray(mask, np.uint8).tobytes())


def run_harness(harness, grid, shape, repeats):
    """(labels int8 ``shape``, counts int64 [4], median ms, min ms) of ``harness`` on ``grid``."""
    out = Path(grid).with_suffix(".labels")
    result = subprocess.run([str(harness), str(grid), str(out), str(repeats)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {harness}: {result.stderr.strip() or result.returncode}")
    raw = np.fromfile(out, np.int8)
    size = int(np.prod(shape))
    labels, counts = raw[:size].reshape(shape), raw[size:].view(np.int64)
    median, fastest = result.stdout.split()[1:] if repeats else ("nan", "nan")
    return labels, counts, float(median), float(fastest)


def label_counts(labels):
    """int64 [4]: how many voxels carry each label (bincount would widen a 1 GB grid 8x)."""
    return np.array([np.count_nonzero(labels == c) for c in range(4)], np.int64)


def check_grids(rng):
    """Small grids of odd shapes: empty, full, one voxel, thin, rows of 30 and 32, blobs, random."""
    blobs = ndimage.gaussian_filter(rng.random((30, 20, 25)), 2) > 0.5
    return {"1x1x1": np.ones((1, 1, 1), bool), "empty_5x6x7": np.zeros((5, 6, 7), bool),
            "full_9x10x11": np.ones((9, 10, 11), bool),
            "row_1x1x70": rng.random((1, 1, 70)) < 0.6,
            "thin_3x130x5": rng.random((3, 130, 5)) < 0.5, "blobs_30x20x25": blobs,
            "rows_7x9x60": rng.random((7, 9, 60)) < 0.7,
            "rows_5x4x32": rng.random((5, 4, 32)) < 0.7,
            "dense_64x64x64": rng.random((64, 64, 64)) < 0.9,
            "ball_67x33x129": noisy_ball((67, 33, 129), rng)}


def noisy_ball(shape, rng, flipped=0.01):
    """bool ``shape``: a centred ball of 0.4 times the shortest side, ``flipped`` of it noise."""
    axes = [np.abs(np.arange(s, dtype=np.float32) - (s - 1) / 2) for s in shape]
    radius = 0.4 * min(shape)
    ball = (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2
            + axes[2][None, None, :] ** 2) < radius ** 2
    return ball ^ (rng.random(shape, dtype=np.float32) < flipped)


def check(harness, grid, expected, what):
    """Exits with the first wrong label or count of ``harness`` on ``grid`` against ``expected``."""
    labels, counts, *_ = run_harness(harness, grid, expected.shape, 0)
    if not np.array_equal(labels, expected):
        wrong = np.argwhere(labels != expected)
        raise SystemExit(f"error: {harness.name} on {what}: {len(wrong)} labels wrong, first at "
                         f"{wrong[0].tolist()}: {labels[tuple(wrong[0])]} for "
                         f"{expected[tuple(wrong[0])]}")
    if not np.array_equal(counts, label_counts(expected)):
        raise SystemExit(f"error: {harness.name} on {what}: counts {counts.tolist()} for "
                         f"{label_counts(expected).tolist()}")


def gpu_name():
    """The first GPU's name as nvidia-smi gives it, or None where there is none."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", nargs="+", default=[KERNEL], help="kernel .cu.cc files")
    parser.add_argument("--harness", nargs="+", type=Path,
                        help="already built harnesses (skips building)")
    parser.add_argument("--include", help="directory holding Eigen/ and unsupported/ "
                                          "(default: TensorFlow's include directory)")
    parser.add_argument("--gencode", nargs="+", default=GENCODE,
                        help="nvcc -gencode values (default: %(default)s)")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=20)
    args = parse_args(parser, SMOKE, argv)

    harnesses = args.harness or [build_harness(k, args.include, args.gencode)
                                  for k in args.kernel]
    if args.build_only:
        return
    gpu = gpu_name()
    if gpu is None:
        print("no GPU here (nvidia-smi answered nothing): nothing checked or timed")
        sys.exit(0 if args.smoke else 1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as workdir:
        grid = Path(workdir) / "grid.bin"
        grids = check_grids(rng)
        for name, occupancy in grids.items():
            mask = rng.random(occupancy.shape) < 0.6
            for grid_mask in (None, mask):
                write_grid(grid, occupancy, grid_mask)
                expected = boundary_reference(occupancy, grid_mask)
                for harness in harnesses:
                    check(harness, grid, expected,
                          f"{name}{' masked' if grid_mask is not None else ''}")
        print(f"{len(harnesses)} harness(es) agree with the reference on {len(grids)} grids, "
              "with and without a mask", flush=True)

        print(f"\nGPU: {gpu}; median and fastest of {args.repeats} runs, bandwidth over the "
              "median")
        print(f"{'side':>5} {'mask':>5} {'harness':<52} {'median ms':>10} {'min ms':>8} "
              f"{'GB/s':>7}")
        for i, side in enumerate(args.sizes):
            occupancy = noisy_ball((side,) * 3, rng)
            for grid_mask in (None, rng.random(occupancy.shape, dtype=np.float32) < 0.5):
                write_grid(grid, occupancy, grid_mask)
                expected = boundary_reference(occupancy, grid_mask) if i == 0 else None
                moved = occupancy.size * (2 if grid_mask is None else 3)
                for harness in harnesses:
                    labels, counts, median, fastest = run_harness(
                        harness, grid, occupancy.shape, args.repeats)
                    if expected is None:
                        expected = labels
                    elif not np.array_equal(labels, expected):
                        raise SystemExit(f"error: {harness.name} disagrees at side {side}")
                    if not np.array_equal(counts, label_counts(labels)):
                        raise SystemExit(f"error: {harness.name}: counts at side {side}")
                    print(f"{side:>5} {'half' if grid_mask is not None else 'none':>5} "
                          f"{harness.name:<52} {median:>10.3f} {fastest:>8.3f} "
                          f"{moved / median / 1e6:>7.0f}", flush=True)
    if args.sizes:
        print("all harnesses agree on every timing grid")


if __name__ == "__main__":
    main()
