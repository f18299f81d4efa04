"""Mesh loading: every format loads and normalizes; every bad file is one MeshError naming it."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh

import vox_tf
from vox_tf.errors import MeshError
from vox_tf.mesh_io import SUPPORTED_SUFFIXES, from_trimesh, load_mesh, normalize

SHARED_MESHES = Path(__file__).resolve().parents[2] / "shared" / "meshes"

CUBE_VERTICES = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"

BAD_FILES = {
    "empty.obj": ("", "empty file"),
    "empty.stl": ("", "empty file"),
    "mesh.xyz": (CUBE_VERTICES + "f 1 2 3\n", "unsupported format '.xyz'"),
    "no_extension": (CUBE_VERTICES + "f 1 2 3\n", "unsupported format"),
    "index_too_large.obj": (CUBE_VERTICES + "f 1 2 3\nf 1 2 9\n", "malformed face on line 6"),
    "index_zero.obj": (CUBE_VERTICES + "f 0 1 2\n", "malformed face"),
    "index_too_negative.obj": (CUBE_VERTICES + "f -1 -2 -5\n", "malformed face"),
    "index_too_large.off": ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "cannot be read"),
    "index_too_large.ply": ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                            "property float y\nproperty float z\nelement face 1\n"
                            "property list uchar int vertex_indices\nend_header\n"
                            "0 0 0\n1 0 0\n0 1 0\n3 0 1 5\n", "malformed faces"),
    "absurd_header.off": ("OFF\n353535235358 6 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n",
                          "absurd OFF header"),
    "truncated_faces.off": ("OFF\n3 4 0\n0.0 0.0 0.0\n1.0 0.0 0.0\n0.0 1.0 0.0\n0\n220\n4\n",
                            "malformed face list"),
    "not_off.off": ("hello 1 2\n", "not an OFF file"),
    "points.obj": (CUBE_VERTICES, "no faces"),
    "lines.obj": (CUBE_VERTICES + "l 1 2 3\nl 3 4\n", "no faces"),
    "nan.obj": ("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite"),
    "inf.off": ("OFF\n3 1 0\ninf 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "NaN or infinite"),
    "degenerate.obj": ("v 0 0 0\nv 1 1 1\nv 2 2 2\nf 1 2 3\nf 1 1 2\n", "degenerate"),
    "garbage.ply": ("ply\nformat ascii 1.0\nelement vertex lots\nend_header\n", "cannot be read"),
    "garbage.glb": ("this is not a binary glTF file", "cannot be read"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_raises_mesh_error_naming_file_and_reason(tmp_path, name):
    content, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(MeshError) as caught:
        load_mesh(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, vox_tf.MeshError)


def test_missing_file_and_directory_raise_mesh_error(tmp_path):
    with pytest.raises(MeshError, match="no such file"):
        load_mesh(tmp_path / "absent.obj")
    with pytest.raises(MeshError, match="not a file"):
        load_mesh(tmp_path)


def test_obj_face_line_without_indices_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "cube.obj"
    path.write_text(CUBE_VERTICES + "f\nf 1 2 3\nf 1 3 4\n")
    with pytest.warns(UserWarning, match=r"dropped 1 face line\(s\) without vertex indices"):
        mesh = load_mesh(path)
    assert len(mesh.faces) == 2


@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_every_format_loads_the_same_normalized_mesh(tmp_path, suffix):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    sphere.apply_translation([10.0, -2.0, 5.0])
    path = tmp_path / f"sphere{suffix}"
    sphere.export(path)
    mesh = load_mesh(path)
    expected = from_trimesh(sphere, "sphere")
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
    assert len(mesh.faces) == len(sphere.faces)
    assert mesh.watertight
    np.testing.assert_allclose(mesh.center, [10.0, -2.0, 5.0], atol=1e-5)
    np.testing.assert_allclose(mesh.scale, expected.scale, rtol=1e-5)
    np.testing.assert_allclose(np.sort(mesh.vertices, axis=0), np.sort(expected.vertices, axis=0),
                               atol=1e-5)


def test_scene_is_merged_into_one_mesh_with_transforms(tmp_path):
    box = trimesh.creation.box()
    ball = trimesh.creation.icosphere(subdivisions=1).apply_translation([4.0, 0, 0])
    path = tmp_path / "scene.glb"
    trimesh.Scene([box, ball]).export(path)
    mesh = load_mesh(path)
    assert len(mesh.faces) == len(box.faces) + len(ball.faces)
    np.testing.assert_allclose(mesh.to_original(mesh.vertices).max(axis=0), [5.0, 1.0, 1.0],
                               atol=1e-5)


def test_normalize_centres_bounding_box_and_puts_farthest_vertex_at_one():
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(500, 3)) * [3.0, 1.0, 0.5] + [7.0, -1.0, 2.0]
    normalized, center, scale = normalize(vertices)
    np.testing.assert_allclose(center, (vertices.max(axis=0) + vertices.min(axis=0)) / 2)
    np.testing.assert_allclose(normalized.max(axis=0) + normalized.min(axis=0), 0, atol=1e-6)
    assert np.linalg.norm(normalized, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose((vertices - center) * scale, normalized, atol=1e-6)


def test_from_trimesh_round_trips_to_original_coordinates():
    torus = trimesh.creation.torus(major_radius=5.0, minor_radius=1.0)
    torus.apply_translation([1.0, 2.0, 3.0])
    mesh = from_trimesh(torus, "torus")
    assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(np.sort(mesh.to_original(mesh.vertices), axis=0),
                               np.sort(torus.vertices, axis=0), atol=1e-5)


def test_stray_vertex_does_not_shrink_the_model():
    box = trimesh.creation.box()
    stray = np.vstack([box.vertices, [[100.0, 0, 0]]])
    mesh = from_trimesh(trimesh.Trimesh(stray, box.faces, process=False), "box")
    assert mesh.scale == pytest.approx(1 / np.sqrt(0.75))


def test_open_mesh_is_not_watertight():
    box = trimesh.creation.box()
    assert not from_trimesh(trimesh.Trimesh(box.vertices, box.faces[:-1]), "open").watertight


needs_shared = pytest.mark.skipif(not SHARED_MESHES.is_dir(), reason="../shared/meshes absent")


def _shared(folder):
    found = sorted((SHARED_MESHES / folder).glob("*")) if SHARED_MESHES.is_dir() else []
    return [pytest.param(path, id=path.name) for path in found]


@needs_shared
@pytest.mark.parametrize("path", _shared("invalid"))
def test_shared_invalid_files_raise_mesh_error(path):
    with pytest.raises(MeshError) as caught:
        load_mesh(path)
    assert str(caught.value).startswith(f"{path}: ") and caught.value.reason


@needs_shared
@pytest.mark.parametrize("path", _shared("lenient"))
def test_shared_lenient_files_load_with_a_warning_or_raise_mesh_error(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mesh = load_mesh(path)
        except MeshError:
            return
    assert len(mesh.faces) > 0
    assert any("dropped" in str(warning.message) for warning in caught)


@needs_shared
@pytest.mark.parametrize("path", [p for p in _shared("real") if p.id != "spider.mtl"])
def test_shared_real_meshes_load(path):
    mesh = load_mesh(path)
    assert len(mesh.faces) > 100
    assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    assert mesh.watertight == (path.name == "bunny.obj")
