"""One search per model of a mesh folder, a voxel folder or a TFDS config, and their table.

    python -m vox_tf.search --mesh-dir meshes/ --out runs/many
    python -m vox_tf.search --voxel-dir grids/ --reference reference_results.csv --out runs/grids
    python -m vox_tf.search --tfds voxel_dataset/surface_128 --out runs/tfds

Each model gets its own run directory DIR/<name>/ (resumable like a single search); a model
whose DIR/<name>/results.json exists is not searched again. A model that fails (unreadable
file, empty grid, a crash in training) is recorded and skipped. DIR/summary.csv and
DIR/summary.md: vox_tf.batch_summary. The same searches as an Apache Beam pipeline:
vox_tf.batch_beam.

A model source is a small picklable description (MeshFile, VoxelFile, TfdsExample: a name and
where its voxels are) whose ``load()`` gives the VoxelGrid, so it can travel to a Beam worker.
"""

import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from vox_tf.batch_summary import failure_row, summary_row, write_summary
from vox_tf.errors import MeshError
from vox_tf.exports import RESULTS_FILE
from vox_tf.grid import VoxelGrid
from vox_tf.mesh_io import SUPPORTED_SUFFIXES
from vox_tf.search_config import SearchConfig
from vox_tf.search_pipeline import check_run, run_search, summary_line

VOXEL_SUFFIXES = (".npz", ".binvox")


@dataclass(frozen=True)
class MeshFile:
    """A mesh file, voxelized when loaded."""

    name: str
    path: str
    resolution: int
    fill: bool = False

    def load(self) -> VoxelGrid:
        from vox_tf.voxelize import voxelize_file

        return voxelize_file(self.path, self.resolution, fill=self.fill)


@dataclass(frozen=True)
class VoxelFile:
    """A voxel file (.npz of ``python -m vox_tf.voxelize``, .binvox): vox_tf.grid.VoxelGrid.load."""

    name: str
    path: str

    def load(self) -> VoxelGrid:
        return VoxelGrid.load(self.path)


@dataclass(frozen=True)
class TfdsExample:
    """Example ``index`` of the train split of a built TFDS config, read alone by slicing."""

    name: str
    dataset: str
    index: int
    data_dir: str | None = None

    def load(self) -> VoxelGrid:
        import tensorflow_datasets as tfds

        import vox_tf.datasets.voxel_dataset  # noqa: F401  registers the builder
        from vox_tf.sampling import as_voxel_grid

        split = f"train[{self.index}:{self.index + 1}]"
        dataset = tfds.load(self.dataset, split=split, data_dir=self.data_dir, download=False)
        (example,) = tfds.as_numpy(dataset)
        return as_voxel_grid(example)


def _files_under(directory, suffixes, what):
    directory = Path(directory)
    if not directory.is_dir():
        raise MeshError(directory, "not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in suffixes)
    if not paths:
        raise MeshError(directory, f"holds no {what} file ({', '.join(suffixes)})")
    return paths, _unique_names([p.relative_to(directory).with_suffix("") for p in paths])


def mesh_dir_sources(directory, config: SearchConfig):
    """Every mesh file under ``directory`` (recursively, sorted), voxelized at config.resolution.

    Args:
        directory (str or Path): the folder.
        config (SearchConfig): gives the resolution and fill of the voxelization.
    Returns:
        list of MeshFile, named by path relative to ``directory`` without suffix ("/" -> "_").
    Raises:
        MeshError if the folder is missing or holds no mesh file.

    Example:
        >>> [s.name for s in mesh_dir_sources("meshes", load_config())]
        ['bunny', 'chairs_chair1']
    """
    paths, names = _files_under(directory, SUPPORTED_SUFFIXES, "mesh")
    return [MeshFile(name, str(p), config.resolution, config.fill) for name, p in zip(names, paths)]


def voxel_dir_sources(directory):
    """Every voxel file (.npz, .binvox) under ``directory`` (recursively, sorted), as it is.

    Returns:
        list of VoxelFile, named like mesh_dir_sources: a file directly in ``directory`` by
        its stem.
    Raises:
        MeshError if the folder is missing or holds no voxel file.

    Example:
        >>> [s.name for s in voxel_dir_sources("/work/shared/seedgrids")][:1]
        ['mgn10_125611494287978_ShirtNoCoat']
    """
    paths, names = _files_under(directory, VOXEL_SUFFIXES, "voxel")
    return [VoxelFile(name, str(p)) for name, p in zip(names, paths)]


def tfds_sources(name, data_dir=None):
    """Every example of a TFDS config (e.g. "voxel_dataset/surface_128"), in order.

    The voxel_dataset builder is registered by importing vox_tf.datasets.voxel_dataset.

    Returns:
        list of TfdsExample, named by the examples' ``name`` feature.
    Raises:
        MeshError naming the dataset if TFDS cannot load it.
    """
    import tensorflow_datasets as tfds

    import vox_tf.datasets.voxel_dataset  # noqa: F401  registers the builder

    try:
        # download=False: an unbuilt dataset is an error to report, not a build to start here.
        dataset = tfds.load(name, split="train", data_dir=data_dir, download=False)
        keys = [_text(e.get("name", str(i))) for i, e in enumerate(tfds.as_numpy(dataset))]
    except Exception as err:  # TFDS raises many types for a missing or unbuilt dataset
        raise MeshError(name, f"cannot load the TFDS dataset ({err}); build it first with "
                              f"`tfds build {name.split('/')[0]} --imports vox_tf.datasets "
                              f"--config CONFIG`") from None
    return [TfdsExample(n, name, i, data_dir) for i, n in enumerate(_unique_names(keys))]


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _unique_names(keys):
    """Path-like keys -> directory names, made unique with a numeric suffix."""
    names, seen = [], {}
    for key in keys:
        base = str(key).replace("/", "_").replace("\\", "_") or "model"
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}_{count}")
    return names


def search_model(source, config: SearchConfig, out_dir, verbose=1):
    """The search of one source into out_dir/<name>, or its results if it already finished.

    Never raises for a bad model: its error becomes the row, so one bad model cannot end a
    batch, and a Beam runner never sees a failure to retry.

    Args:
        source: MeshFile, VoxelFile or TfdsExample.
        config (SearchConfig): the search's settings; a finished run made with others is an error.
        out_dir (str or Path): the batch's directory.
        verbose (int): Keras verbosity of the search.
    Returns:
        dict, the model's summary row (vox_tf.batch_summary.summary_row or failure_row).

    Example:
        >>> search_model(VoxelFile("bunny", "bunny.npz"), load_config(), "runs/many")["iou"]
    """
    run_dir = Path(out_dir) / source.name
    try:
        voxels = source.load()
        # check_run first: finished results made with another config or other voxels are
        # refused like a resumed search would be, not reported as this config's. run_search
        # records the config at the grid's own resolution: compare that.
        check_run(run_dir, config.for_resolution(voxels.resolution), voxels)
        if (run_dir / RESULTS_FILE).is_file():  # written atomically, last: the run finished
            print(f"{source.name}: finished earlier, not searched again", file=sys.stderr)
        else:
            print(summary_line(run_search(voxels, config, run_dir, verbose), run_dir),
                  file=sys.stderr)
        # Read back even after a fresh search, so a new and a resumed batch make the same row.
        results = json.loads((run_dir / RESULTS_FILE).read_text())
    except Exception as err:  # recorded and skipped: one bad model must not end the batch
        reason = str(err) if isinstance(err, ValueError) else traceback.format_exc(limit=1)
        print(f"error: {source.name}: {reason.strip()}", file=sys.stderr)
        return failure_row(source.name, reason.strip().splitlines()[-1])
    return summary_row(source.name, results)


def run_batch(sources, config: SearchConfig, out_dir, verbose=1, reference=None):
    """Searches every source in turn, in this process; rewrites the summary after each.

    Args:
        sources (list): MeshFile, VoxelFile or TfdsExample, in the summary's order.
        config (SearchConfig): the settings of every search.
        out_dir (str or Path): gets out_dir/<name>/ per model, summary.csv and summary.md.
        verbose (int): Keras verbosity of the searches.
        reference (vox_tf.reference_table.ReferenceTable, optional): columns to print beside ours.
    Returns:
        list of summary rows (dicts with SUMMARY_COLUMNS), one per model, failures included.

    Example:
        >>> rows = run_batch(voxel_dir_sources("grids"), load_config(), "runs/grids")
    """
    rows = []
    for index, source in enumerate(sources):
        print(f"[{index + 1}/{len(sources)}] {source.name}", file=sys.stderr)
        rows.append(search_model(source, config, out_dir, verbose))
        write_summary(out_dir, rows, reference)
    return rows
