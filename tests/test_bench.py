"""Every README benchmark runs (``--smoke``: smallest sizes) and prints the figures it exists for.

The figures themselves are not judged (timings on a busy machine mean nothing); what is checked
is that each script finishes and reports its table, so a broken benchmark fails here.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vox_tf.stage_training import STEPS_PER_EXECUTION

ROOT = Path(__file__).resolve().parents[1]
SHARED_REAL = ROOT.parent / "shared" / "meshes" / "real"
NUMBER = r"[\d,]+(?:\.\d+)?"


def run_smoke(script):
    """stdout of ``python bench/SCRIPT --smoke`` run from the repository root; it must exit 0."""
    result = subprocess.run([sys.executable, f"bench/{script}", "--smoke"], cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"bench/{script} --smoke failed:\n{result.stderr[-3000:]}"
    return result.stdout


def test_voxelize_bench_prints_speed_ups_and_a_clean_surface_check():
    out = run_smoke("voxelize.py")
    assert re.search(r"op s .* trimesh s .* speed-up", out)
    rows = re.findall(rf"^(\S+)\s+\d+\s+32\s+{NUMBER}\s+\d+\s+{NUMBER}\s+\d+\s+{NUMBER}x",
                      out, re.M)
    assert "icosphere3" in rows
    checks = re.findall(r"^(\S+)\s+(\d+) of 10,000 samples outside occupied voxels$", out, re.M)
    assert set(rows) <= {name for name, _ in checks}
    assert all(missed == "0" for _, missed in checks), out


def test_boundary_bench_prints_a_speed_up_after_the_versions_agree():
    out = run_smoke("boundary.py")
    assert re.search(rf"^\s+32\s+\d+\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$", out, re.M), out
    assert "all three versions agree on every voxel" in out


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to build the harness")
def test_cuda_boundary_bench_builds_its_harness_from_the_kernel_the_op_compiles():
    out = run_smoke("boundary_cuda.py")
    harness = ROOT / "build" / "boundary_cuda" / "custom_ops_kernels_dual_voxel_boundary_kernel"
    assert f"built {harness.relative_to(ROOT)} from custom_ops/kernels/" in out, out
    assert os.access(harness, os.X_OK)
    if shutil.which("nvidia-smi") is None:
        assert "no GPU here" in out
    else:
        assert "agree with the reference on 10 grids, with and without a mask" in out, out


def test_dataset_bench_prints_build_time_and_bytes_per_voxel():
    out = run_smoke("dataset.py")
    figures = (rf"{{examples}} examples \(0 skipped\) in {NUMBER} s \({NUMBER} s/mesh\); "
               rf"TFRecords {NUMBER} MiB = {NUMBER} bytes per occupied voxel")
    assert re.search("surface_32 over 2 procedural meshes: " + figures.format(examples=2), out), out
    if SHARED_REAL.is_dir():
        real = f"surface_32 over {re.escape(str(SHARED_REAL))}: "
        assert re.search(real + figures.format(examples=r"\d+"), out), out
    else:
        assert "real meshes skipped" in out


def test_sampling_bench_prints_the_peak_memory_of_the_fine_set():
    out = run_smoke("sampling.py")
    bunny = SHARED_REAL / "bunny.obj"
    source = bunny if bunny.exists() else "torus"
    assert f"fine set of {source}" in out
    assert re.search(rf"^R=64: occupied {NUMBER}, .* {NUMBER} samples/epoch; built in {NUMBER} s; "
                     rf"peak RSS \d+ MiB", out, re.M), out


def test_train_speed_bench_prints_rates_with_and_without_xla_and_grouped_steps():
    out = run_smoke("train_speed.py")
    assert re.search(r"^machine peak \d+ GFLOP/s", out, re.M)
    for jit in ("False", "True "):
        for steps in sorted({1, STEPS_PER_EXECUTION}):
            assert re.search(rf"^jit_compile={jit}\s+steps per call\s+{steps}\s+training\s+"
                             rf"{NUMBER} samples/s .* % of peak\), user\+system {NUMBER}x wall",
                             out, re.M), out
        assert re.search(rf"^jit_compile={jit}\s+inference\s+{NUMBER} points/s .* % of peak\)$",
                         out, re.M), out
    assert re.search(rf"^trainer epochs: dumbbell 32\^3, {NUMBER} samples an epoch, 1 epochs "
                     rf"{NUMBER} samples/s, user\+system {NUMBER}x wall$", out, re.M), out


def test_batch_beam_bench_prints_loop_and_beam_times_and_their_ratio():
    out = run_smoke("batch_beam.py")
    assert re.search(r"^1 models at 16\^3 \(sphere\), \d+ cores$",
                     out, re.M), out
    assert re.search(rf"^in-process loop:\s+{NUMBER} s$", out, re.M), out
    assert re.search(rf"^Beam, 2 workers x \d+ TF threads:\s+{NUMBER} s$", out, re.M), out
    assert re.search(rf"^speed-up loop / Beam:\s+{NUMBER}x$", out, re.M), out


def test_fine_convergence_bench_prints_wrong_voxels_per_variant():
    out = run_smoke("fine_convergence.py")
    assert "torus: 32^3" in out
    rows = re.findall(rf"^(L6(?:\+focus0\.5)?)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M)
    assert rows == ["L6", "L6+focus0.5"], out


def test_final_restart_bench_prints_a_row_per_candidate_and_learning_rate():
    out = run_smoke("final_restart.py")
    rows = re.findall(rf"^(\d\d) \S+\s+(\S+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M)
    assert rows == [("00", "1e-2"), ("00", "3e-3"), ("01", "1e-2"), ("01", "3e-3")], out


def test_quantization_sensitivity_bench_prints_a_row_per_tensor():
    out = run_smoke("quantization_sensitivity.py")
    assert re.search(rf"^float32\s+{NUMBER}\s+{NUMBER}$", out, re.M), out
    for tensor in ("triplane/planes", "hidden_0/kernel", "occupancy/bias"):
        assert re.search(rf"^{re.escape(tensor)} \(.*\)\s+{NUMBER}\s+{NUMBER}$", out, re.M), out
    assert re.search(rf"^every tensor at a file's bits\s+{NUMBER}\s+{NUMBER}$", out, re.M), out
