"""Build time and TFRecord bytes of voxel_dataset over real meshes and procedural ones.

    python bench/dataset.py [--config surface_256] [--procedural 100] [--faces 50000]
                            [--real ../shared/meshes/real] [--smoke]

``--smoke``: surface_32 over the real meshes (when present) and two blobs of ~2,000 faces.
"""

import argparse
import tempfile
import time
from pathlib import Path

import tensorflow_datasets as tfds

import vox_tf.datasets  # noqa: F401 - registers voxel_dataset
from _common import SHARED_REAL, parse_args
from vox_tf.shapes import random_blob

SMOKE = {"config": "surface_32", "procedural": 2, "faces": 2000}


def build_and_measure(config, manual_dir, data_dir):
    """-> (seconds, examples, TFRecord bytes, voxels, skipped) of one build."""
    builder = tfds.builder(f"voxel_dataset/{config}", data_dir=str(data_dir))
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    seconds = time.perf_counter() - start
    records = sum(p.stat().st_size for p in Path(builder.data_dir).glob("*.tfrecord*"))
    voxels = sum(len(ex["indices"]) for ex in tfds.as_numpy(builder.as_dataset(split="train")))
    return (seconds, builder.info.splits["train"].num_examples, records, voxels,
            len(builder.info.metadata["skipped"]))


def report(label, figures):
    seconds, examples, records, voxels, skipped = figures
    print(f"{label}: {examples} examples ({skipped} skipped) in {seconds:.1f} s "
          f"({seconds / max(examples, 1):.2f} s/mesh); TFRecords {records / 2**20:.2f} MiB "
          f"= {records / max(voxels, 1):.3f} bytes per occupied voxel ({voxels:,} voxels)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="surface_256")
    parser.add_argument("--real", default=str(SHARED_REAL))
    parser.add_argument("--procedural", type=int, default=100, help="number of random blobs")
    parser.add_argument("--faces", type=int, default=50_000, help="faces per random blob")
    args = parse_args(parser, SMOKE, argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if Path(args.real).is_dir():
            report(f"{args.config} over {args.real}",
                   build_and_measure(args.config, args.real, tmp / "real"))
        else:
            print(f"{args.real} not found: real meshes skipped")
        if args.procedural:
            meshes = tmp / "blobs"
            meshes.mkdir()
            start = time.perf_counter()
            for seed in range(args.procedural):
                random_blob(seed, args.faces).export(meshes / f"blob_{seed:04d}.ply")
            print(f"wrote {args.procedural} blobs of ~{args.faces:,} faces "
                  f"in {time.perf_counter() - start:.1f} s")
            report(f"{args.config} over {args.procedural} procedural meshes",
                   build_and_measure(args.config, meshes, tmp / "procedural"))


if __name__ == "__main__":
    main()
