"""Bytes per voxel model: generic codecs, MPEG G-PCC and vox_tf's packed files.

    python bench/compression.py --runs runs/             # grids of ../shared/seedgrids
    python bench/compression.py --grids bunny128.npz --runs runs/
    python bench/compression.py --smoke                  # a built-in torus, tiny model trained here

For each grid: its occupied voxels; lzma (preset 9 extreme) and bz2 (level 9) of the
bit-packed grid; the G-PCC bytes of reference_results.csv when the grid is one of its rows;
and, when ``--runs DIR`` holds a trained run ``DIR/<grid name>/`` (training or search run),
the .vxz file of ``python -m vox_tf.pack`` at each ``--bits`` (default 8, 6, 5 and 4; the
4- to 6-bit ones trained at their levels where the fine-tuning alone loses over 0.02 IoU
points, up to ~30 min each at 256^3 on 2 cores, which ``--qat-epochs 0`` skips; all fine-tuned) and
the smallest lossless one of ``--lossless-bits`` (default 5 and 4: where the smallest were on
the eight seed grids), each as bytes, bits per occupied voxel (bpov) and IoU measured on the
file decoded back. Grids without a run are listed at the end.
"""

import argparse
import bz2
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import parse_args

SEEDGRIDS = Path(__file__).resolve().parents[2] / "shared" / "seedgrids"


def codec_bytes(grid):
    """{"lzma": bytes, "bz2": bytes} of the bit-packed bool [R, R, R] grid."""
    from vox_tf.packed_model import lzma_bytes

    return {"lzma": lzma_bytes(grid), "bz2": len(bz2.compress(np.packbits(grid).tobytes(), 9))}


def reference_gpcc(grids_dir):
    """{grid name: G-PCC bytes} from reference_results.csv beside the grids, if any."""
    table = Path(grids_dir) / "reference_results.csv"
    if not table.exists():
        return {}
    with table.open() as f:
        return {row["name"]: int(row["gpcc_bytes"]) for row in csv.DictReader(f)}


def packed_figures(run_dir, voxels, finetune_epochs, bits_list, lossless_bits, qat_epochs=None):
    """{label: decoded-file figures} at each of ``bits_list`` and the smallest lossless file
    of ``lossless_bits`` (``qat_epochs``: the lossy files', as vox_tf.pack.pack_run's; the
    lossless files get pack_run's default)."""
    from vox_tf import packed_model
    from vox_tf.pack import decoded_figures, pack_run

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lossless, widths in ((False, bits_list), (True, lossless_bits)):
            for bits in widths:
                blob, sizes, _ = pack_run(run_dir, bits, lossless, finetune_epochs,
                                           qat_epochs=None if lossless else qat_epochs)
                path = Path(tmp) / f"{bits}{'L' if lossless else ''}.vxz"
                packed_model.write(path, blob)
                result = {**decoded_figures(path, voxels), "bits": bits,
                          "extra": sizes["extra_bits"]}
                if not lossless:
                    figures[f"{bits}-bit"] = result
                elif "lossless" not in figures or result["bytes"] < figures["lossless"]["bytes"]:
                    figures["lossless"] = result
    return figures


def smoke_run(out_dir):
    """Voxelizes the built-in torus at 64^3 and trains a tiny model on it; returns (grid file,
    runs dir)."""
    from vox_tf.mesh_io import from_trimesh
    from vox_tf.shapes import builtin_shape
    from vox_tf.train import train_hierarchy
    from vox_tf.train_config import TrainConfig
    from vox_tf.voxelize import voxelize

    voxels = voxelize(from_trimesh(builtin_shape("torus"), "torus"), 64)
    grid_path = Path(out_dir) / "torus.npz"
    voxels.save(grid_path)
    config = TrainConfig("16:swish,16:swish", "32:relu,32:relu", epochs_coarse=10, epochs_fine=20,
                         batch_size=1024, eval_every=10, lr_schedule="cosine", learning_rate=0.01,
                         jit_compile=False, verbose=0)
    train_hierarchy(voxels, config, Path(out_dir) / "runs" / "torus")
    return grid_path, Path(out_dir) / "runs"


def _label(label, figures):
    if label != "lossless":
        return label
    extra = figures["extra"]
    return (f"lossless ({figures['bits']}-bit, first layer +{extra.input_layer}, "
            f"tri-planes +{extra.planes})")


def _cell(size, voxels):
    return f"{size:>9,} {8 * size / voxels:6.2f}"


def main(argv=None):
    from vox_tf.pack_finetuning import FINETUNE_EPOCHS, QAT_MAX_EPOCHS, QAT_MIN_EPOCHS, QAT_STEPS
    from vox_tf.quantization import BITS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", type=Path, nargs="+", default=[SEEDGRIDS],
                        help="voxel .npz files or directories of them")
    parser.add_argument("--runs", type=Path, help="directory of trained runs, one per grid name")
    parser.add_argument("--finetune-epochs", type=int, default=FINETUNE_EPOCHS,
                        help=f"quantization-aware fine-tuning epochs of the fine net (default "
                             f"{FINETUNE_EPOCHS}, as vox_tf.pack)")
    parser.add_argument("--qat-epochs", type=int, default=None,
                        help="epochs of training at the lossy files' levels before the "
                             f"fine-tuning (default as vox_tf.pack: the whole epochs of "
                             f"{QAT_STEPS:,} steps, at least {QAT_MIN_EPOCHS}, at most per "
                             f"bits {QAT_MAX_EPOCHS}; "
                             "lossless files: vox_tf.pack's default)")
    parser.add_argument("--bits", type=int, nargs="*", choices=BITS, default=list(BITS),
                        help="bits of the lossy files packed (none: lossless files only)")
    parser.add_argument("--lossless-bits", type=int, nargs="*", choices=BITS, default=[5, 4],
                        help="bits of the lossless files packed (the column: the smallest; "
                             "none: lossy files only)")
    args = parse_args(parser, {"finetune_epochs": 2, "qat_epochs": 2}, argv)

    from vox_tf.grid import VoxelGrid

    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            grid_path, args.runs = smoke_run(tmp)
            args.grids = [grid_path]
        files = sorted(f for g in args.grids
                       for f in (sorted(g.glob("*.npz")) if g.is_dir() else [g]))
        gpcc = {name: size for g in args.grids for name, size in
                reference_gpcc(g if g.is_dir() else g.parent).items()}
        print(f"{'grid':<36} {'R':>4} {'voxels':>9}  {'lzma B':>9} {'bpov':>6}  {'bz2 B':>9} "
              f"{'bpov':>6}  {'G-PCC B':>9} {'bpov':>6}  vox_tf (bytes bpov IoU %)")
        missing = []
        for path in files:
            voxels = VoxelGrid.load(path)
            n = len(voxels.indices)
            codecs = codec_bytes(voxels.dense())
            line = (f"{path.stem:<36} {voxels.resolution:>4} {n:>9,}  {_cell(codecs['lzma'], n)}  "
                    f"{_cell(codecs['bz2'], n)}  "
                    + (_cell(gpcc[path.stem], n) if path.stem in gpcc else f"{'-':>9} {'-':>6}"))
            run_dir = args.runs / path.stem if args.runs else None
            if run_dir is None or not run_dir.is_dir():
                missing.append(path.stem)
                print(line)
                continue
            figures = packed_figures(run_dir, voxels, args.finetune_epochs, args.bits,
                                     args.lossless_bits, args.qat_epochs)
            print(line + "  " + "  ".join(
                f"{_label(label, f)} {f['bytes']:,} {f['bpov']:.2f} {100 * f['iou']:.3f}"
                for label, f in figures.items()))
        if missing:
            print(f"no trained run (--runs DIR/<grid name>/) for: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
