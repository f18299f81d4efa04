"""Batch searches: the in-process loop and the Apache Beam pipeline over three tiny grids (one
broken), their summaries, resume without recomputing, the reference table, and bad input."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import trimesh

from test_search import TINY, write_config
from vox_tf import search
from vox_tf.batch import (MeshFile, TfdsExample, VoxelFile, run_batch, search_model,
                          voxel_dir_sources)
from vox_tf.batch_beam import default_threads, pipeline_options
from vox_tf.batch_summary import markdown_table, read_summary, summary_row
from vox_tf.grid import VoxelGrid
from vox_tf.mesh_io import from_trimesh
from vox_tf.reference_table import load_reference
from vox_tf.search_config import load_config
from vox_tf.search_pipeline import search_record
from vox_tf.shapes import builtin_shape
from vox_tf.voxelize import voxelize, voxelize_file

SEEDGRIDS = Path(__file__).resolve().parents[2] / "shared" / "seedgrids"
TWO_LOCAL_WORKERS = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("config") / "tiny.yaml", TINY)


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """sphere.npz and torus.npz (32^3 built-in shapes) and broken.npz (an empty file)."""
    directory = tmp_path_factory.mktemp("grids")
    for name in ("sphere", "torus"):
        voxelize(from_trimesh(builtin_shape(name), name), 32).save(directory / f"{name}.npz")
    (directory / "broken.npz").write_bytes(b"")
    return directory


@pytest.fixture(scope="module")
def beam_run(grids, tiny_config, tmp_path_factory):
    """The README's Beam command on ``grids``, two local worker processes."""
    out = tmp_path_factory.mktemp("beam") / "out"
    code = search.main(["--voxel-dir", str(grids), "--config", str(tiny_config), "--out", str(out),
                        "--verbose", "0", "--beam-pipeline-options", TWO_LOCAL_WORKERS])
    assert code == 0
    return out


def run_files(out):
    """{path: mtime_ns} of every file the searches wrote (the summaries left out)."""
    return {p: p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and not p.name.startswith("summary.")}


def test_beam_batch_searches_each_model_and_records_the_broken_one(beam_run):
    rows = read_summary(beam_run)
    assert [r["model"] for r in rows] == ["broken", "sphere", "torus"]
    assert "broken.npz: " in rows[0]["error"] and rows[0]["iou"] == ""  # names the bad file
    for row in rows[1:]:
        # The figures of each model's own run (their value is up to the tiny search's luck).
        results = json.loads((beam_run / row["model"] / "results.json").read_text())
        assert row["error"] == "" and float(row["iou"]) == results["iou"], row
        assert int(row["params"]) == results["params_coarse"] + results["params_fine"]
        assert row["fine_arch"] == results["fine_arch"]
        assert (beam_run / row["model"] / "model").is_dir()
    assert not (beam_run / "broken").exists()
    summary = (beam_run / "summary.csv").read_text().splitlines()
    assert summary[-1].startswith("mean of 2,")
    assert "| broken |" in (beam_run / "summary.md").read_text()


def test_loop_on_the_same_runs_writes_the_same_summary_and_searches_nothing(
        beam_run, grids, tiny_config):
    before, summary = run_files(beam_run), (beam_run / "summary.csv").read_text()
    markdown = (beam_run / "summary.md").read_text()
    rows = run_batch(voxel_dir_sources(grids), load_config(tiny_config), beam_run, verbose=0)
    assert [r["model"] for r in rows] == ["broken", "sphere", "torus"]
    assert (beam_run / "summary.csv").read_text() == summary
    assert (beam_run / "summary.md").read_text() == markdown
    assert run_files(beam_run) == before


def test_beam_rerun_recomputes_nothing(beam_run, grids, tiny_config):
    before, summary = run_files(beam_run), (beam_run / "summary.csv").read_text()
    code = search.main(["--voxel-dir", str(grids), "--config", str(tiny_config),
                        "--out", str(beam_run), "--verbose", "0",
                        "--beam-pipeline-options", TWO_LOCAL_WORKERS])
    assert code == 0
    assert run_files(beam_run) == before
    assert (beam_run / "summary.csv").read_text() == summary


def test_reference_columns_sit_beside_ours(beam_run, grids, tiny_config, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(beam_run, out)  # finished runs: the command below only tabulates them
    reference = tmp_path / "reference.csv"
    reference.write_text("name,voxels,reference_iou,reference_params,lzma_bytes\n"
                         "sphere,5000,0.9,1000,123\nnot_in_this_batch,1,0.5,10,1\n")
    # The README's --voxel-dir --reference command.
    code = search.main(["--voxel-dir", str(grids), "--reference", str(reference), "--config",
                        str(tiny_config), "--out", str(out), "--verbose", "0"])
    assert code == 0
    rows = {r["model"]: r for r in read_summary(out)}
    assert rows["sphere"]["reference_iou"] == "0.9" and rows["sphere"]["reference_params"] == "1000"
    assert rows["sphere"]["reference_lzma_bytes"] == "123"
    assert rows["torus"]["reference_iou"] == "" and rows["broken"]["reference_iou"] == ""
    markdown = (out / "summary.md").read_text()
    assert "| ref IoU (%) |" in markdown.splitlines()[0]
    sphere = next(line for line in markdown.splitlines() if line.startswith("| sphere |"))
    assert "| 90.000 |" in sphere and "| 1,000 |" in sphere
    # The reference's mean is over the models it lists among those searched: the sphere alone.
    mean = (out / "summary.csv").read_text().splitlines()[-1]
    assert mean.startswith("mean of 2,") and mean.endswith(",5000.0,0.9,1000.0,123.0")


def test_a_finished_model_is_read_back_not_searched(grids, tiny_config, tmp_path):
    """Its results.json is the row, even with a null chamfer (an empty prediction)."""
    source = VoxelFile("sphere", str(grids / "sphere.npz"))
    # A config for 64^3 grids; run_search recorded it at the grid's own 32^3.
    config = load_config(tiny_config).for_resolution(64)
    run_dir = tmp_path / "sphere"
    run_dir.mkdir()
    (run_dir / "search.json").write_text(
        json.dumps(search_record(config.for_resolution(32), source.load())))
    results = {"iou": 0.0, "chamfer_l2": None, "params_coarse": 10, "params_fine": 20,
               "params": 30, "bytes_fp32": 120, "seconds_total": 5.0, "coarse_arch": "8:elu",
               "fine_arch": "8:relu"}
    (run_dir / "results.json").write_text(json.dumps(results))
    row = search_model(source, config, tmp_path, verbose=0)
    assert row["chamfer_l2"] is None and row["params"] == 30 and row["seconds"] == 5.0
    assert row["error"] == "" and sorted(p.name for p in run_dir.iterdir()) == [
        "results.json", "search.json"]
    # Finished with another config: refused like a resumed search, not reported as this one's.
    other = load_config(tiny_config).for_resolution(64)
    other.fine.final_epochs += 1
    row = search_model(source, other, tmp_path, verbose=0)
    assert "search with other settings (config.fine)" in row["error"]


@pytest.mark.skipif(not SEEDGRIDS.is_dir(), reason="the shared seed grids are not here")
def test_summary_notes_a_fine_choice_that_a_runner_up_replaced():
    results = {"iou": 0.998, "fine_arch": "128:elu", "seconds_total": 60,
               "superseded": {"fine_arch": "64:elu", "iou": 0.949, "accuracy": 0.9996, "params": 9}}
    row = summary_row("m", results)
    assert (row["superseded_fine_arch"], row["superseded_iou"]) == ("64:elu", 0.949)
    table = markdown_table([row, summary_row("n", {"iou": 1.0, "fine_arch": "16:elu"})])
    assert table.splitlines()[2].endswith("| fine net replaced 64:elu (IoU 94.900 %) |")
    assert table.splitlines()[3].endswith("|  |")


def test_shared_reference_table_matches_the_seed_grids_by_stem():
    sources = voxel_dir_sources(SEEDGRIDS)
    table = load_reference(SEEDGRIDS / "reference_results.csv", [s.name for s in sources])
    assert {"reference_iou", "reference_params", "reference_voxels",
            "reference_gpcc_bytes"} <= set(table.columns)
    for source in sources:
        values = table.values_for(source.name)
        assert values["reference_voxels"] == len(VoxelGrid.load(source.path).indices), source
        assert 0.95 < values["reference_iou"] <= 1


@pytest.mark.parametrize("reference, message", [
    ("missing.csv", "cannot read the reference table"),
    ("model,iou\nsphere,0.9\n", "no 'name' column"),
    ("name,reference_iou\nsphere,high\n", "line 2: reference_iou: expected a number, got 'high'"),
    ("name,reference_iou\nsphere,0.9\nsphere,0.8\n", "line 3: model 'sphere' listed twice"),
    ("name,reference_iou\nchair,0.9\n", "lists none of the models of this batch"),
])
def test_bad_reference_exits_2_and_writes_nothing(grids, tmp_path, capsys, reference, message):
    path = tmp_path / "reference.csv"
    if reference.endswith(".csv"):
        path = tmp_path / reference
    else:
        path.write_text(reference)
    out = tmp_path / "out"
    code = search.main(["--voxel-dir", str(grids), "--reference", str(path), "--out", str(out)])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: ") and message in last, last
    assert not out.exists()


def test_bad_beam_options_exit_2_and_write_nothing(grids, tmp_path, capsys):
    out = tmp_path / "out"
    code = search.main(["--voxel-dir", str(grids), "--out", str(out),
                        "--beam-pipeline-options", "direct_num_workers=two"])
    assert code == 2
    assert "error: --beam-pipeline-options: Beam cannot parse" in capsys.readouterr().err
    assert not out.exists()


def test_local_workers_share_the_cores_and_cluster_workers_keep_theirs(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_threads(pipeline_options(TWO_LOCAL_WORKERS)) == 8
    assert default_threads(pipeline_options("direct_num_workers=0")) == 1  # one per core
    assert default_threads(pipeline_options("runner=DataflowRunner,project=p")) is None


def test_sources_travel_pickled_and_load_the_same_voxels(grids, tmp_path):
    mesh = tmp_path / "ball.obj"
    trimesh.creation.icosphere(subdivisions=2).export(mesh)
    for source, expected in ((MeshFile("ball", str(mesh), 32), voxelize_file(mesh, 32)),
                             (VoxelFile("sphere", str(grids / "sphere.npz")),
                              VoxelGrid.load(grids / "sphere.npz"))):
        voxels = pickle.loads(pickle.dumps(source)).load()
        assert voxels.resolution == 32 and (voxels.indices == expected.indices).all()


def test_tfds_source_gives_the_voxels_of_each_built_example(tmp_path):
    import tensorflow_datasets as tfds

    import vox_tf.datasets  # noqa: F401 - registers voxel_dataset
    from vox_tf.batch import tfds_sources

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(subdivisions=2).export(meshes / "ball.obj")
    trimesh.creation.box().export(meshes / "box.stl")
    builder = tfds.builder("voxel_dataset/surface_32", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(meshes)))

    sources = tfds_sources("voxel_dataset/surface_32", data_dir=str(tmp_path / "data"))
    files = {"ball": meshes / "ball.obj", "box": meshes / "box.stl"}
    assert sorted(s.name for s in sources) == sorted(files)
    for source in sources:
        assert isinstance(source, TfdsExample)
        voxels = pickle.loads(pickle.dumps(source)).load()  # one example, read alone
        expected = voxelize_file(files[source.name], 32)
        assert voxels.resolution == 32
        assert (voxels.indices == expected.indices).all()


def test_cli_unknown_tfds_dataset_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    code = search.main(["--tfds", "voxel_dataset/surface_32", "--data-dir", str(tmp_path),
                        "--out", str(out)])
    assert code == 2
    assert "error: voxel_dataset/surface_32: cannot load" in capsys.readouterr().err
    assert not out.exists()
