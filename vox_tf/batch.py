"""One search per model of a mesh folder or a TFDS config, and the table of their results.

    python -m vox_tf.search --mesh-dir meshes/ --out runs/many
    python -m vox_tf.search --tfds voxel_dataset/surface_128 --out runs/tfds

Each model gets its own run directory DIR/<name>/ (resumable like a single search). A model
that fails (unreadable mesh, empty grid, a crash in training) is recorded and skipped.
DIR/summary.csv and DIR/summary.md list per model IoU, chamfer, parameters per stage, bytes
and seconds, with the means over the successful models at the bottom.
"""

import csv
import io
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vox_tf.errors import MeshError
from vox_tf.files import atomic_output
from vox_tf.grid import VoxelGrid
from vox_tf.mesh_io import SUPPORTED_SUFFIXES
from vox_tf.search_config import SearchConfig
from vox_tf.search_pipeline import run_search, summary_line

SUMMARY_COLUMNS = ("model", "iou", "chamfer_l2", "params_coarse", "params_fine", "params",
                   "bytes_fp32", "seconds", "coarse_arch", "fine_arch", "error")
NUMERIC_COLUMNS = ("iou", "chamfer_l2", "params_coarse", "params_fine", "params", "bytes_fp32",
                   "seconds")


@dataclass
class ModelSource:
    """A model to search: its name (the run's subdirectory) and how to get its voxels."""

    name: str
    load: Callable[[], VoxelGrid]


def mesh_dir_sources(directory, config: SearchConfig):
    """Every mesh file under ``directory`` (recursively, sorted), voxelized at config.resolution.

    Raises MeshError if the folder is missing or holds no mesh file.
    """
    from vox_tf.voxelize import voxelize_file

    directory = Path(directory)
    if not directory.is_dir():
        raise MeshError(directory, "not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not paths:
        raise MeshError(directory, f"holds no mesh file ({', '.join(SUPPORTED_SUFFIXES)})")
    names = _unique_names([p.relative_to(directory).with_suffix("") for p in paths])
    return [ModelSource(name, lambda p=p: voxelize_file(p, config.resolution, fill=config.fill))
            for name, p in zip(names, paths)]


def tfds_sources(name, data_dir=None):
    """Every example of a TFDS config (e.g. "voxel_dataset/surface_128"), in order.

    The voxel_dataset builder is registered by importing vox_tf.datasets.voxel_dataset.
    Raises MeshError naming the dataset if TFDS cannot load it.
    """
    import tensorflow_datasets as tfds

    import vox_tf.datasets.voxel_dataset  # noqa: F401  registers the builder
    from vox_tf.sampling import as_voxel_grid

    try:
        # download=False: an unbuilt dataset is an error to report, not a build to start here.
        dataset = tfds.load(name, split="train", data_dir=data_dir, download=False)
        examples = list(tfds.as_numpy(dataset))
    except Exception as err:  # TFDS raises many types for a missing or unbuilt dataset
        raise MeshError(name, f"cannot load the TFDS dataset ({err}); build it first with "
                              f"`tfds build {name.split('/')[0]} --imports vox_tf.datasets "
                              f"--config CONFIG`") from None
    keys = [_text(e.get("name", str(i))) for i, e in enumerate(examples)]
    return [ModelSource(n, lambda e=e: as_voxel_grid(e)) for n, e in zip(_unique_names(keys), examples)]


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


def run_batch(sources, config: SearchConfig, out_dir, verbose=1):
    """Searches every source into out_dir/<name>; writes summary.csv and summary.md.

    Returns:
        list of summary rows (dicts with SUMMARY_COLUMNS), one per model, failures included.
    """
    out_dir = Path(out_dir)
    rows = []
    for index, source in enumerate(sources):
        print(f"[{index + 1}/{len(sources)}] {source.name}", file=sys.stderr)
        try:
            results = run_search(source.load(), config, out_dir / source.name, verbose)
        except Exception as err:  # recorded and skipped: one bad model must not end the batch
            reason = str(err) if isinstance(err, ValueError) else traceback.format_exc(limit=1)
            print(f"error: {source.name}: {reason.strip()}", file=sys.stderr)
            rows.append({"model": source.name, "error": reason.strip().splitlines()[-1]})
        else:
            print(summary_line(results, out_dir / source.name), file=sys.stderr)
            rows.append({"model": source.name, "iou": results["iou"],
                         "chamfer_l2": results["chamfer_l2"],
                         "params_coarse": results["params_coarse"],
                         "params_fine": results["params_fine"], "params": results["params"],
                         "bytes_fp32": results["bytes_fp32"], "seconds": results["seconds_total"],
                         "coarse_arch": results["coarse_arch"], "fine_arch": results["fine_arch"],
                         "error": ""})
        write_summary(out_dir, rows)
    return rows


def mean_row(rows):
    """Means of the numeric columns over the rows without an error."""
    good = [r for r in rows if not r.get("error")]
    mean = {"model": f"mean of {len(good)}"}
    for column in NUMERIC_COLUMNS:
        values = [r[column] for r in good if r.get(column) is not None and math.isfinite(r[column])]
        mean[column] = sum(values) / len(values) if values else None
    return mean


def write_summary(out_dir, rows):
    """DIR/summary.csv (all columns, means last) and DIR/summary.md (a results table)."""
    out_dir = Path(out_dir)
    table = rows + [mean_row(rows)]
    text = io.StringIO()
    writer = csv.DictWriter(text, SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in SUMMARY_COLUMNS})
    with atomic_output(out_dir / "summary.csv") as tmp:
        tmp.write_text(text.getvalue())
    with atomic_output(out_dir / "summary.md") as tmp:
        tmp.write_text(markdown_table(table))


def markdown_table(rows):
    """The summary as a Markdown table: IoU %, chamfer, params coarse + fine, bytes, seconds."""
    lines = ["| model | IoU (%) | L2 chamfer | params coarse | params fine | params | bytes (fp32) "
             "| seconds | note |", "|" + " --- |" * 9]
    for row in rows:
        def fmt(key, pattern):
            value = row.get(key)
            return "" if value is None else pattern.format(value)
        iou = row.get("iou")
        lines.append(" | ".join([
            f"| {row['model']}", "" if iou is None else f"{100 * iou:.3f}",
            fmt("chamfer_l2", "{:.3g}"), fmt("params_coarse", "{:,.0f}"),
            fmt("params_fine", "{:,.0f}"), fmt("params", "{:,.0f}"),
            fmt("bytes_fp32", "{:,.0f}"), fmt("seconds", "{:.0f}"),
            f"failed: {row['error']}" if row.get("error") else ""]) + " |")
    return "\n".join(lines) + "\n"
