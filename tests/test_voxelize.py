"""voxelize / voxelize_file and the `python -m vox_tf.voxelize` command line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

import vox_tf
from reference_ops import uncovered_points
from vox_tf import ops
from vox_tf.grid import VoxelGrid
from vox_tf.mesh_io import from_trimesh, load_mesh
from vox_tf.voxelize import main, preview_grid, voxelize, voxelize_file

SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "meshes" / "real"
SURFACE_SAMPLES = 1_000_000


@pytest.fixture
def sphere_file(tmp_path):
    path = tmp_path / "ball.obj"
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=2.0)
    sphere.apply_translation([1.0, 2.0, 3.0])
    sphere.export(path)
    return path


def test_voxelize_file_keeps_the_transform_and_matches_the_op(sphere_file):
    mesh = load_mesh(sphere_file)
    voxels = voxelize_file(sphere_file, 32)
    assert voxels.resolution == 32 and voxels.source == str(sphere_file)
    expected = ops.voxelize_mesh(mesh.vertices, mesh.faces, 32).numpy()
    np.testing.assert_array_equal(voxels.indices, expected)
    np.testing.assert_allclose(voxels.center, [1.0, 2.0, 3.0], atol=1e-6)
    assert voxels.scale == pytest.approx(0.5, rel=1e-5)


def test_fill_makes_a_solid_without_warning_for_watertight_meshes(recwarn):
    mesh = from_trimesh(trimesh.creation.icosphere(subdivisions=3), "ball")
    surface = voxelize(mesh, 24)
    solid = voxelize(mesh, 24, fill=True)
    assert not recwarn.list
    assert solid.dense()[12, 12, 12] and not surface.dense()[12, 12, 12]
    assert set(map(tuple, surface.indices)) <= set(map(tuple, solid.indices))


def test_fill_of_an_open_mesh_warns():
    box = trimesh.creation.box()
    mesh = from_trimesh(trimesh.Trimesh(box.vertices, box.faces[:-2]), "open box")
    with pytest.warns(UserWarning, match="open box: the mesh is not watertight"):
        voxelize(mesh, 16, fill=True)


def test_voxelize_rejects_resolution_out_of_range():
    mesh = from_trimesh(trimesh.creation.box(), "box")
    with pytest.raises(ValueError, match="resolution"):
        voxelize(mesh, 2048)


def test_cli_writes_the_npz_and_the_preview(sphere_file, tmp_path, capsys):
    output, preview = tmp_path / "out" / "ball.npz", tmp_path / "ball.png"
    status = main([str(sphere_file), "--resolution", "24", "-o", str(output),
                   "--preview", str(preview)])
    assert status == 0
    assert "voxels at 24^3" in capsys.readouterr().out
    with np.load(output) as data:
        assert int(data["resolution"]) == 24
        assert data["indices"].dtype == np.int32 and data["indices"].shape[1] == 3
        original = trimesh.load(sphere_file, force="mesh").vertices
        normalized = (original - data["center"]) * data["scale"]
        assert np.linalg.norm(normalized, axis=1).max() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(VoxelGrid.load(output).indices,
                                  voxelize_file(sphere_file, 24).indices)
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_default_output_is_named_after_the_mesh_in_the_current_directory(
        sphere_file, tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    assert main([str(sphere_file), "-r", "16", "--fill"]) == 0
    solid = VoxelGrid.load(workdir / "ball_16.npz")
    np.testing.assert_array_equal(solid.indices, voxelize_file(sphere_file, 16, fill=True).indices)


BAD_INPUTS = {
    "empty.obj": "",
    "notes.txt": "not a mesh",
    "bad_index.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n",
    "huge.off": "OFF\n353535235358 6 0\n0 0 0\n",
    "points.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\n",
    "nan.obj": "v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_cli_bad_input_exits_2_with_error_and_leaves_no_output(tmp_path, capsys, name):
    bad = tmp_path / name
    bad.write_text(BAD_INPUTS[name])
    output = tmp_path / "out.npz"
    status = main([str(bad), "-r", "16", "-o", str(output), "--preview", str(tmp_path / "p.png")])
    assert status == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_cli_missing_file_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "absent.ply"), "-o", str(tmp_path / "out.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_rejects_bad_resolution_through_argparse(sphere_file, capsys):
    with pytest.raises(SystemExit) as caught:
        main([str(sphere_file), "--resolution", "4"])
    assert caught.value.code == 2
    assert "resolution must be an integer in [8, 1024]" in capsys.readouterr().err


def test_module_exit_status_on_bad_file(tmp_path):
    bad = tmp_path / "lines.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nl 1 2\n")
    package_root = Path(vox_tf.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(package_root), os.environ.get("PYTHONPATH", "")]), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", "vox_tf.voxelize", str(bad), "-o",
                             str(tmp_path / "out.npz")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2
    assert f"error: {bad}: no faces" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.npz").exists()


def test_preview_grid_max_pools_large_grids():
    voxels = VoxelGrid(512, np.array([[0, 0, 0], [511, 256, 3]], np.int32))
    grid = preview_grid(voxels)
    assert grid.shape == (256, 256, 256)
    assert np.argwhere(grid).tolist() == [[0, 0, 0], [255, 128, 1]]


def _real_meshes():
    if not SHARED_REAL.is_dir():
        return []
    return [pytest.param(p, id=p.name) for p in sorted(SHARED_REAL.iterdir())
            if p.suffix.lower() != ".mtl"]


@pytest.mark.skipif(not SHARED_REAL.is_dir(), reason="../shared/meshes absent")
@pytest.mark.parametrize("path", _real_meshes())
def test_every_sampled_surface_point_lies_in_an_occupied_voxel(path):
    """1M points sampled on the normalized triangles, at 256^3 (the issue's check)."""
    resolution = 256
    mesh = load_mesh(path)
    occupied = voxelize(mesh, resolution).dense()
    surface = trimesh.Trimesh(mesh.vertices.astype(np.float64), mesh.faces, process=False)
    points, _ = trimesh.sample.sample_surface(surface, SURFACE_SAMPLES, seed=0)
    assert not uncovered_points(points, occupied).size
