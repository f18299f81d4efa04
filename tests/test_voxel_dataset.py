"""voxel_dataset builds from meshes (or the built-in shapes) and gives back exactly their voxels."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import vox_tf.datasets  # noqa: F401 - registers voxel_dataset
from vox_tf.datasets.voxel_dataset.voxel_indices import VoxelIndices
from vox_tf.shapes import BUILTIN_SHAPE_NAMES, builtin_shapes, default_shape
from vox_tf.voxelize import voxelize_file


@pytest.fixture(scope="module")
def mesh_dir(tmp_path_factory):
    """Two closed meshes (one in a sub-folder), an open sheet, a broken mesh and a non-mesh."""
    root = tmp_path_factory.mktemp("meshes")
    shapes = builtin_shapes()
    (root / "parts").mkdir()
    shapes["torus"].export(root / "torus.obj")
    shapes["dumbbell"].export(root / "parts" / "dumbbell.ply")
    shapes["cloth"].export(root / "cloth.stl")
    (root / "broken.obj").write_text("v 0 0 0\nf 1 2 3\n")
    (root / "notes.txt").write_text("not a mesh\n")
    return root


def build(config, data_dir, manual_dir=None, beam_runner=None):
    """Builds one config in data_dir; returns (builder, {source: example as NumPy})."""
    options = None
    if beam_runner:
        from apache_beam.options.pipeline_options import PipelineOptions
        options = PipelineOptions([f"--runner={beam_runner}"])
    builder = tfds.builder(f"voxel_dataset/{config}", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir else None, beam_options=options))
    examples = tfds.as_numpy(builder.as_dataset(split="train"))
    return builder, {ex["source"].decode(): ex for ex in examples}


def test_builtin_shapes_are_deterministic_and_closed():
    first, second = builtin_shapes(), builtin_shapes()
    assert len(first) >= 8 and list(first) == list(BUILTIN_SHAPE_NAMES)
    for name, mesh in first.items():
        np.testing.assert_array_equal(mesh.vertices, second[name].vertices)
        assert mesh.is_watertight == (name != "cloth"), name
        assert mesh.is_watertight <= (mesh.volume > 0), name
    assert default_shape().is_watertight


def test_indices_feature_round_trips_columns():
    feature = VoxelIndices(dtype=np.uint16)
    indices = np.array([[0, 0, 511], [3, 300, 7], [511, 2, 2]])
    encoded = feature.encode_example(indices)
    np.testing.assert_array_equal(feature.decode_example_np(encoded), indices)
    np.testing.assert_array_equal(feature.decode_example(encoded).numpy(), indices)
    with pytest.raises(ValueError, match="0, 255"):
        VoxelIndices(dtype=np.uint8).encode_example(indices)


def test_load_gives_exactly_the_voxelize_voxels(mesh_dir, tmp_path):
    builder, examples = build("surface_64", tmp_path, mesh_dir)
    assert sorted(examples) == ["cloth.stl", "parts/dumbbell.ply", "torus.obj"]
    for source, example in examples.items():
        expected = voxelize_file(mesh_dir / source, 64)
        assert example["indices"].dtype == np.uint8
        np.testing.assert_array_equal(example["indices"], expected.indices)
        np.testing.assert_array_equal(example["center"], expected.center)
        assert example["scale"] == expected.scale and example["resolution"] == 64
    assert examples["cloth.stl"]["watertight"] == False  # noqa: E712 - NumPy bool
    assert examples["torus.obj"]["name"] == b"torus"

    metadata = builder.info.metadata
    assert metadata["skipped_broken"] == 1 and metadata["ignored_files"] == 1
    assert metadata["skipped"][0]["source"] == "broken.obj"
    # The same through tfds.load, which users call.
    loaded = tfds.load("voxel_dataset/surface_64", data_dir=str(tmp_path), split="train")
    assert len(list(loaded)) == 3


def test_solid_config_fills_closed_meshes_and_skips_open_ones(mesh_dir, tmp_path):
    builder, examples = build("solid_32", tmp_path, mesh_dir)
    assert sorted(examples) == ["parts/dumbbell.ply", "torus.obj"]
    expected = voxelize_file(mesh_dir / "torus.obj", 32, fill=True)
    np.testing.assert_array_equal(examples["torus.obj"]["indices"], expected.indices)
    assert builder.info.metadata["skipped_not_watertight"] == 1
    assert {s["source"] for s in builder.info.metadata["skipped"]} == {"cloth.stl", "broken.obj"}


def test_without_manual_dir_it_builds_the_builtin_shapes(tmp_path):
    builder, examples = build("surface_32", tmp_path)
    assert sorted(examples) == sorted(f"builtin/{name}" for name in BUILTIN_SHAPE_NAMES)
    assert all(len(ex["indices"]) > 0 for ex in examples.values())
    assert builder.info.metadata["skipped"] == []


def test_beam_build_gives_the_same_examples(mesh_dir, tmp_path):
    _, direct = build("surface_32", tmp_path / "direct", mesh_dir)
    builder, beamed = build("surface_32", tmp_path / "beam", mesh_dir, beam_runner="FnApiRunner")
    assert sorted(beamed) == sorted(direct)
    for source in direct:
        np.testing.assert_array_equal(beamed[source]["indices"], direct[source]["indices"])
    assert [s["source"] for s in builder.info.metadata["skipped"]] == ["broken.obj"]


DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"


# The README's ways to run the builder: from anywhere with --imports, inside datasets/, and
# through Beam.
@pytest.mark.parametrize("imports, beam", [(True, False), (False, False), (True, True)],
                         ids=["imports", "inside_datasets_dir", "beam"])
def test_tfds_build_command(mesh_dir, tmp_path, imports, beam):
    command = [os.path.join(os.path.dirname(sys.executable), "tfds"), "build", "voxel_dataset",
               "--config", "surface_32", "--data_dir", str(tmp_path),
               "--manual_dir", str(mesh_dir)]
    if imports:
        command += ["--imports", "vox_tf.datasets"]
    if beam:
        command += ["--beam_pipeline_options=runner=FnApiRunner"]
    result = subprocess.run(command, cwd=tmp_path if imports else DATASETS_DIR,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped broken.obj" in result.stderr
    info = tfds.builder_from_directory(str(tmp_path / "voxel_dataset" / "surface_32" / "1.0.0"))
    assert info.info.splits["train"].num_examples == 3
