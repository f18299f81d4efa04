"""From a mesh to the smallest two-stage network that reconstructs it: ``python -m vox_tf.search``.

    python -m vox_tf.search --out runs/demo                       # built-in shape, quick config
    python -m vox_tf.search --mesh bunny.obj --config tuner_configs/quick.yaml --out runs/bunny
    python -m vox_tf.search --voxel bunny128.npz --out runs/bunny
    python -m vox_tf.search --mesh-dir meshes/ --out runs/many    # one run per mesh + summary
    python -m vox_tf.search --voxel-dir grids/ --reference grids/reference_results.csv --out runs/grids
    python -m vox_tf.search --tfds voxel_dataset/surface_128 --out runs/tfds
    python -m vox_tf.search --mesh-dir meshes/ --out runs/many \
        --beam-pipeline-options "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"

The phases and the run directory: vox_tf.search_pipeline. Batches: vox_tf.batch (in this
process) and vox_tf.batch_beam (an Apache Beam pipeline, one element per model).

Distributed trials (Keras Tuner's chief/worker mode), one process per role, sharing DIR::

    export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000
    KERASTUNER_TUNER_ID=chief   python -m vox_tf.search --mesh m.obj --out DIR &
    KERASTUNER_TUNER_ID=tuner1  python -m vox_tf.search --mesh m.obj --out DIR &
    KERASTUNER_TUNER_ID=tuner2  python -m vox_tf.search --mesh m.obj --out DIR

The chief serves the trials of each stage to the workers, then runs the filter and the final
training alone; workers wait for the chief's coarse choice before the fine stage's trials.
``--mirrored`` trains each trial on every visible GPU (tf.distribute.MirroredStrategy).
"""

import argparse
import os
import sys
from pathlib import Path

import tensorflow as tf

from vox_tf.batch import mesh_dir_sources, run_batch, tfds_sources, voxel_dir_sources
from vox_tf.grid import VoxelGrid, check_resolution
from vox_tf.reference_table import load_reference
from vox_tf.search_config import SearchConfig, load_config
from vox_tf.search_pipeline import check_run, run_search, summary_line
from vox_tf.search_space import train_config
from vox_tf.stage_training import check_resolutions


def single_voxels(args, config: SearchConfig):
    """The one model of --mesh, --voxel, or the built-in default shape, as a VoxelGrid."""
    from vox_tf.mesh_io import from_trimesh
    from vox_tf.shapes import DEFAULT_SHAPE, default_shape
    from vox_tf.voxelize import voxelize, voxelize_file

    if args.voxel:
        return VoxelGrid.load(args.voxel)
    if args.mesh:
        return voxelize_file(args.mesh, config.resolution, fill=config.fill)
    return voxelize(from_trimesh(default_shape(), f"builtin/{DEFAULT_SHAPE}"), config.resolution,
                    fill=config.fill)


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m vox_tf.search",
        description="Search the smallest coarse and fine occupancy networks that reconstruct a "
                    "voxel model (Keras Tuner Hyperband, filter, final training). Without a "
                    "source it runs on a built-in shape. Re-run the same command to resume.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--mesh", help="mesh file (.obj .ply .stl .off .glb), voxelized at the "
                                       "config's resolution")
    source.add_argument("--voxel", help="voxel file (.npz of python -m vox_tf.voxelize)")
    source.add_argument("--mesh-dir", help="one search per mesh file under this folder")
    source.add_argument("--voxel-dir", help="one search per voxel file (.npz, .binvox) under "
                                            "this folder, at the file's own resolution")
    source.add_argument("--tfds", help='one search per example of a TFDS config, e.g. '
                                       '"voxel_dataset/surface_128"')
    p.add_argument("--data-dir", help="TFDS data directory (with --tfds)")
    p.add_argument("--reference", help="batch runs: CSV of reference results per model (a "
                                       "'name' column = the file's stem, numeric columns), "
                                       "printed beside ours in summary.csv / summary.md")
    p.add_argument("--beam-pipeline-options", metavar="OPTIONS",
                   help='batch runs: run the models as an Apache Beam pipeline, e.g. '
                        '"runner=DirectRunner,direct_num_workers=2,'
                        'direct_running_mode=multi_processing" (default: one after another '
                        'in this process)')
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="with --beam-pipeline-options: TensorFlow threads of each worker "
                        "(default: the cores / direct_num_workers on a local runner, all the "
                        "worker's cores on a cluster)")
    p.add_argument("--config", help="search config YAML (default: tuner_configs/quick.yaml, "
                                    "which adapts its space to 256^3 and 512^3 grids)")
    p.add_argument("--resolution", type=int, metavar="R",
                   help="voxelize --mesh, --mesh-dir and the built-in shape at R^3 (default: the "
                        "config's resolution; voxel files keep their own)")
    p.add_argument("--out", default="runs/search", help="run directory (default: runs/search)")
    p.add_argument("--mirrored", action="store_true",
                   help="train each trial on all visible GPUs (tf.distribute.MirroredStrategy)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="0 the summary only; 1 a line and a progress bar per phase; 2 also "
                        "Keras Tuner's tables and a line per epoch")
    return p


def batch_sources(args, config: SearchConfig):
    """The models of --mesh-dir, --voxel-dir or --tfds (MeshError if there are none)."""
    if args.mesh_dir:
        return mesh_dir_sources(args.mesh_dir, config)
    if args.voxel_dir:
        return voxel_dir_sources(args.voxel_dir)
    return tfds_sources(args.tfds, args.data_dir)


def run_batch_command(args, config, sources, reference, beam_options) -> int:
    """Searches the batch (in this process, or through Beam with ``beam_options``); exit status."""
    if beam_options is not None:
        from vox_tf.batch_beam import run_beam_batch

        rows = run_beam_batch(sources, config, args.out, beam_options, args.threads_per_worker,
                              args.verbose, reference)
    else:
        rows = run_batch(sources, config, args.out, args.verbose, reference)
    failed = sum(1 for r in rows if r.get("error"))
    print(f"{len(rows) - failed} of {len(rows)} models searched, {failed} failed  -> "
          f"{Path(args.out) / 'summary.md'}")
    return 0 if failed < len(rows) else 1


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    batch = bool(args.mesh_dir or args.voxel_dir or args.tfds)
    for flag, given in (("--reference", args.reference), ("--beam-pipeline-options",
                                                          args.beam_pipeline_options)):
        if given is not None and not batch:
            parser.error(f"{flag} needs --mesh-dir, --voxel-dir or --tfds")
    if args.threads_per_worker is not None and (args.beam_pipeline_options is None
                                                or args.threads_per_worker < 1):
        parser.error("--threads-per-worker needs --beam-pipeline-options and a count >= 1")
    # Every check on the input runs before the search writes anything.
    beam_options = None
    try:
        config = load_config(args.config)
        if args.resolution is not None:
            check_resolution(args.resolution)
            config = config.for_resolution(args.resolution)
        if batch:
            sources = batch_sources(args, config)
            reference = (load_reference(args.reference, [s.name for s in sources])
                         if args.reference else None)
            if args.beam_pipeline_options is not None:
                from vox_tf.batch_beam import pipeline_options

                beam_options = pipeline_options(args.beam_pipeline_options)
        else:
            voxels = single_voxels(args, config)
            check_resolutions(voxels, train_config(config))
            config = config.for_resolution(voxels.resolution)
            check_run(args.out, config, voxels)
    except ValueError as err:  # MeshError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    if batch:
        return run_batch_command(args, config, sources, reference, beam_options)
    strategy = tf.distribute.MirroredStrategy() if args.mirrored else None
    results = run_search(voxels, config, args.out, args.verbose, strategy)
    if results is None:
        print(f"worker {os.environ['KERASTUNER_TUNER_ID']}: no trials left, the chief finishes "
              f"the search in {args.out}")
        return 0
    print(summary_line(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
