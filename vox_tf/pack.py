"""One trained model -> one small file: ``python -m vox_tf.pack``.

    python -m vox_tf.pack runs/bunny -o bunny.vxz --bits 4 --lossless

RUN_DIR is a training run (python -m vox_tf.train) or a search run (its final model is in
RUN_DIR/model). The fine network is quantized to --bits per output channel
(vox_tf.quantization), trained at its levels for --qat-epochs (by default lossy 4- to 6-bit
files, for QAT_STEPS optimizer steps in QAT_MIN_EPOCHS to QAT_MAX_EPOCHS, unless the
fine-tuning alone loses at most QAT_SKIP_POINTS), fine-tuned for --finetune-epochs (default
30; neither for a run without its voxels), both by vox_tf.pack_finetuning, which keeps their
weights in RUN_DIR/quantized/ so that packing again (say with --lossless) reuses them; then
written with vox_tf.packed_model beside the coarse net's occupancy grid. --lossless adds the
voxels the file still gets wrong (vox_tf.lossless) so it decodes to exactly the input grid; it
is packed with each of LOSSLESS_EXTRA_BITS and the smallest file kept. --input-extra-bits,
--plane-extra-bits and --later-extra-bits set the bits beyond --bits of the first Dense kernel,
the tri-plane lattices and the Dense kernels after the first (EXTRA_BITS_CHOICES), in place of
the defaults (and in each of LOSSLESS_EXTRA_BITS). The ground truth is the
run's voxels.npz (or --voxel for runs older than it). Every figure printed is measured on the
file as written, decoded back.
"""

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from vox_tf import lossless, packed_model
from vox_tf.errors import MeshError
from vox_tf.grid import VoxelGrid
from vox_tf.hierarchy import METADATA_FILE
from vox_tf.metrics import grid_metrics
from vox_tf.pack_finetuning import (FINETUNE_EPOCHS, QAT_MAX_EPOCHS, QAT_MIN_EPOCHS, QAT_STEPS,
                                    finetuned)
from vox_tf.quantization import BITS, DEFAULT_EXTRA_BITS, ExtraBits
from vox_tf.run_layout import CONFIG_FILE, MODEL_DIR, RUN_FILE

VOXELS_FILE = "voxels.npz"
"""The input grid, kept in a training run directory by vox_tf.train."""
QAT_SKIP_POINTS = 0.02
"""IoU points a lossy file fine-tuned alone may lose against the float32 model for the default
to keep it untrained (the 8-bit bar); beyond it, it is trained
(vox_tf.pack_finetuning.QAT_STEPS). The training
is for what the fine-tuning leaves: where it leaves nothing it only spreads the levels, 7-11 %
more bytes for no voxel (6 bits: bunny 128^3 -0.003 points alone, 10,003 B against 10,739
trained; mgn10_125611510010088_ShirtNoCoat 256^3 0.000, 11,346 B against 12,604), and 20-30
minutes at 256^3. Judging costs one fine-tuning and one decode of the grid (1-1.5 min at 256^3
on 2 cores) on top of a training. An explicit --qat-epochs is used as given."""
LOSSLESS_QAT_EPOCHS = 0
"""Epochs of that training for a lossless file: none. It takes wrong voxels away but spreads
the weights over more levels, and a lossless file pays for both: bunny 128^3 (default search)
at 4 bits, 7,756 bytes after 800 epochs against 7,315 without (residual 867 against 1,211 B,
weights 6,480 against 5,695; lzma 7,388); mgn10_125611510010088_ShirtNoCoat 256^3 7,734
against 7,351 (lzma 9,920), in 55 min against 2.3 on 2 cores (both at a first rate of 1e-3):
it runs once for each of LOSSLESS_EXTRA_BITS."""
LOSSLESS_EXTRA_BITS = (ExtraBits(1, 4), ExtraBits(0, 4), ExtraBits(0, 3))
"""The extra bits (vox_tf.quantization.ExtraBits) a lossless file is packed with, each fine-tuned,
the smallest file kept: weights with fewer bits may cost the residual less than they save. On
the eight 256^3 seed grids (the default search's models, 5 bits, 10 epochs of the
straight-through fine-tuning that the learned rounding replaced) +1/+4 was smallest on four,
+0/+3 on three (thingi32_64444 11,712 -> 11,082 bytes, lzma 11,464;
mgn10_125611516241372_TShirtNoCoat 11,109 -> 10,596; thingi32_73075 14,088 -> 14,074) and +0/+4
on thingi32_92763 (14,158 -> 13,671); the lossy default +2/+4 on none, nor +0/+2 (64444 11,325,
92763 14,911) or +1/+3 (92763 14,379). Part of it is the fine-tuning's draw: 92763's residual
is 1,491 bytes at +0/+4 and 2,247 at +0/+3. With learned rounding (30 epochs): +1/+4 on four,
+0/+3 on three, +0/+4 on TShirtNoCoat; at 128^3 (runs/real128, 4 bits) +0/+3 on six of seven."""
EXTRA_BITS_CHOICES = range(7)
"""What --input-extra-bits, --plane-extra-bits and --later-extra-bits take: bits beyond --bits
for the first Dense kernel, the tri-plane lattices and the Dense kernels after the first
(vox_tf.quantization.ExtraBits; by default DEFAULT_EXTRA_BITS'). The later kernels get none
by default, since most nets hold 4 bits without them; where a wide net does not, the kernel
after the first is what loses (one tensor at 4 bits alone, no training: 7,956-26,256 wrong
voxels on the three 256^3 seed grids whose 4-bit file lost more than 0.1 point, as many at 192
wide as at 128). The whole net plainly
quantized at a 4-bit file's bits, then with +1 / +2 for the later kernels:
mgn10_125611494287978_ShirtNoCoat 160:relu x3 11,670 -> 5,171 / 2,731 wrong voxels,
mgn10_125611504997669_LongCoat 192:relu x3 16,320 -> 6,264 / 2,566, thingi32_441708 192:relu
x3 39,163 -> 20,471 / 12,066 (the nets whose 4-bit files held started from 6,356-9,766). At +2 the
default 4-bit files lose 0.011 point on 494287978 (44,004 B; 31,619 without, -0.842) and none
on LongCoat (60,744 B). thingi32_441708 needs more for the other two as well (its tri-planes
alone at a 4-bit file's 8 bits: 5,263 wrong voxels): with the later kernels at +2, the planes
at +5 / +6 / +8 leave 8,734 / 7,794 / 7,457, and the first kernel at +3 with the planes at +6
5,468."""

EXTRA_BITS_FLAGS = {"input_layer": ("--input-extra-bits", "the first Dense kernel"),
                    "planes": ("--plane-extra-bits", "the tri-plane lattices"),
                    "later_kernels": ("--later-extra-bits", "the Dense kernels after the first")}
"""The flag that sets each field of vox_tf.quantization.ExtraBits, and what it gives bits to."""


def model_dir(run_dir):
    """The directory holding the trained pair: RUN_DIR, or RUN_DIR/model of a search run.

    Raises MeshError naming RUN_DIR when it holds no finished model.
    """
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).exists():
        if not (run_dir / MODEL_DIR / METADATA_FILE).exists():
            raise MeshError(run_dir, "unfinished search: its final model is not trained yet "
                                     "(re-run the search to finish it)")
        return run_dir / MODEL_DIR
    if (run_dir / METADATA_FILE).exists():
        return run_dir
    if (run_dir / CONFIG_FILE).exists():
        raise MeshError(run_dir, "unfinished training: no trained model yet "
                                 "(re-run the same vox_tf.train command to finish it)")
    raise MeshError(run_dir, "not a vox_tf run directory")


def ground_truth(directory, voxel_path=None):
    """The VoxelGrid a run was trained on: --voxel, else DIR/voxels.npz; MeshError if neither."""
    path = Path(voxel_path) if voxel_path else Path(directory) / VOXELS_FILE
    if not path.exists():
        raise MeshError(directory, f"no {VOXELS_FILE} (run trained before vox_tf kept its "
                                   "input): give the voxel file with --voxel")
    return VoxelGrid.load(path)


def pack_run(run_dir, bits=8, lossless_mode=False, finetune_epochs=None, voxel_path=None,
             qat_epochs=None, extra_bits=None):
    """Packs a run's model; returns (file bytes, sizes dict, ground truth VoxelGrid or None).

    Args:
        run_dir: training or search run directory.
        bits: one of vox_tf.quantization.BITS.
        lossless_mode: add the residual so the file decodes to the input grid exactly.
        finetune_epochs: quantization-aware epochs of the fine net (None: FINETUNE_EPOCHS, or 0
            when the run has no voxels.npz and no voxel_path is given).
        voxel_path: the input grid, for runs without voxels.npz.
        qat_epochs: epochs of training the fine net at its levels before the fine-tuning
            (None: qat_epochs_for the run unless the fine-tuning alone loses at most
            QAT_SKIP_POINTS, LOSSLESS_QAT_EPOCHS when lossless, 0 without voxels).
        extra_bits: {field: bits} of vox_tf.quantization.ExtraBits to set in place of
            DEFAULT_EXTRA_BITS' (lossy) or in each of LOSSLESS_EXTRA_BITS (lossless); the file
            records the ones it was written with.
    Returns:
        (bytes, sizes as vox_tf.packed_model.pack gives plus residual_list /
        residual_probabilities when lossless, float32_iou (the run's float32 model's IoU as
        trained, None if not recorded) when lossy, VoxelGrid or None when no ground truth
        exists).

    Example:
        >>> blob, sizes, truth = pack_run("runs/demo", bits=4, lossless_mode=True)
        >>> blob, sizes, truth = pack_run("runs/demo", bits=4, extra_bits={"later_kernels": 2})
    """
    directory = model_dir(run_dir)
    try:
        voxels = ground_truth(directory, voxel_path)
    except MeshError as err:
        if lossless_mode or finetune_epochs or qat_epochs:
            raise
        print(f"note: {err}; packing without fine-tuning", file=sys.stderr)
        voxels, finetune_epochs, qat_epochs = None, 0, 0
    epochs = FINETUNE_EPOCHS if finetune_epochs is None else finetune_epochs
    given = extra_bits or {}
    if not lossless_mode:
        extra = replace(DEFAULT_EXTRA_BITS, **given)
        if qat_epochs is None and QAT_MAX_EPOCHS[bits]:
            reconstructor = _trained_where_it_helps(directory, bits, epochs, voxels, extra)
        else:
            reconstructor = finetuned(directory, bits, epochs, voxels, extra, qat_epochs)
        blob, sizes = packed_model.pack(reconstructor, bits, extra_bits=extra)
        sizes["float32_iou"] = reconstructor.metrics.get("iou")
        return blob, sizes, voxels
    if qat_epochs is None:
        qat_epochs = LOSSLESS_QAT_EPOCHS
    truth = voxels.dense()
    # what is given holds in every width tried; those it makes alike are packed once
    widths = dict.fromkeys(replace(extra, **given) for extra in LOSSLESS_EXTRA_BITS)
    files = [_lossless_file(finetuned(directory, bits, epochs, voxels, extra, qat_epochs), bits,
                            extra, truth)
             for extra in widths]
    blob, sizes = min(files, key=lambda file: len(file[0]))
    return blob, sizes, voxels


def _trained_where_it_helps(directory, bits, epochs, voxels, extra_bits):
    """The default lossy reconstructor: fine-tuned alone where its file loses at most
    QAT_SKIP_POINTS of IoU against the float32 model; else trained at its levels first, unless
    that file loses more than the fine-tuning alone's (then the fine-tuning alone is kept: the
    training cannot make the default worse). Every file judged decoded, as a user gets it."""
    alone = finetuned(directory, bits, epochs, voxels, extra_bits)
    reference = alone.metrics.get("iou")
    if reference is None:  # a run that did not record it: no bar to judge by
        return finetuned(directory, bits, epochs, voxels, extra_bits, None)
    lost_alone = _points_against(reference, alone, bits, extra_bits, voxels)
    close = -lost_alone <= QAT_SKIP_POINTS
    print(f"fine stage: {bits}-bit fine-tuning alone: {lost_alone:+.3f} IoU points against float32 "
          + (f"(loses at most {QAT_SKIP_POINTS}): kept, not trained" if close else
             f"(loses more than {QAT_SKIP_POINTS}): training at its levels"), file=sys.stderr)
    if close:
        return alone
    trained = finetuned(directory, bits, epochs, voxels, extra_bits, None)
    lost_trained = _points_against(reference, trained, bits, extra_bits, voxels)
    better = lost_trained > lost_alone
    print(f"fine stage: {bits}-bit training then fine-tuning: {lost_trained:+.3f} IoU points "
          f"against float32: kept " + ("it" if better else "the fine-tuning alone, which lost "
                                      "no more"), file=sys.stderr)
    return trained if better else alone


def _points_against(reference, reconstructor, bits, extra_bits, voxels):
    """IoU points of ``reconstructor``'s file, decoded, against the IoU ``reference``."""
    blob, _ = packed_model.pack(reconstructor, bits, extra_bits=extra_bits)
    return 100 * (_decoded_metrics(_decode_bytes(blob), voxels)["iou"] - reference)


def _lossless_file(reconstructor, bits, extra_bits, truth):
    """(bytes, sizes) of the lossless file of ``reconstructor``: its residual is taken from
    the networks as the decoder rebuilds them."""
    blob, _ = packed_model.pack(reconstructor, bits, extra_bits=extra_bits)
    decoded = _decode_bytes(blob)
    method, data, residual_sizes = lossless.encode_residual(truth, decoded.mask(),
                                                            decoded.fine_probabilities())
    blob, sizes = packed_model.pack(reconstructor, bits,
                                    (method, data, packed_model.grid_digest(truth)),
                                    extra_bits)
    sizes.update({f"residual_{name}": size for name, size in residual_sizes.items()})
    return blob, sizes


def _decode_bytes(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{packed_model.SUFFIX}"
        path.write_bytes(blob)
        return packed_model.read(path)


def decoded_figures(path, voxels):
    """Figures of a packed file, decoded from disk: bytes, and with ground truth IoU, bpov.

    Returns:
        dict: bytes; with ``voxels`` also iou, wrong_voxels and bpov (bits per occupied voxel).
    """
    figures = {"bytes": Path(path).stat().st_size}
    if voxels is not None:
        metrics = _decoded_metrics(packed_model.read(path), voxels)
        figures.update(iou=metrics["iou"], wrong_voxels=metrics["wrong_voxels"],
                       bpov=8 * figures["bytes"] / max(len(voxels.indices), 1))
    return figures


def _decoded_metrics(decoded, voxels):
    """grid_metrics (no chamfer) of a decoded file's whole grid against the VoxelGrid
    ``voxels``: the one measure both the printed figures and the training's judge use."""
    return grid_metrics(decoded.predict_grid(), voxels.dense(), with_chamfer=False)


def _parser():
    p = argparse.ArgumentParser(prog="python -m vox_tf.pack",
                                description="Write a trained model as one packed .vxz file.")
    p.add_argument("run_dir", type=Path, help="training run or search run directory")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .vxz file")
    p.add_argument("--bits", type=int, choices=BITS, default=8, help="bits per weight")
    p.add_argument("--lossless", action="store_true",
                   help="add the wrong voxels: the file decodes to exactly the input grid")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help=f"epochs of fine-tuning the fine net's k-bit weights (default "
                        f"{FINETUNE_EPOCHS}; 0 and --qat-epochs 0: quantize only)")
    defaults = "; ".join(
        f"{most} at {bits} bits" if most <= QAT_MIN_EPOCHS else
        f"at {bits} bits the whole epochs of {QAT_STEPS:,} steps, {QAT_MIN_EPOCHS} to {most}"
        for bits, most in QAT_MAX_EPOCHS.items() if most)
    p.add_argument("--qat-epochs", type=int, default=None,
                   help="epochs of training the fine net at its levels before the fine-tuning "
                        f"(default {defaults}; none at other bits, nor where the fine-tuning "
                        f"alone loses at most {QAT_SKIP_POINTS} IoU points; with --lossless: "
                        f"{LOSSLESS_QAT_EPOCHS})")
    for field, (flag, what) in EXTRA_BITS_FLAGS.items():
        tried = sorted({getattr(extra, field) for extra in LOSSLESS_EXTRA_BITS})
        p.add_argument(flag, dest=field, type=int, choices=EXTRA_BITS_CHOICES, default=None,
                       help=f"bits beyond --bits for {what} (default "
                            f"{getattr(DEFAULT_EXTRA_BITS, field)}; --lossless tries "
                            f"{' and '.join(map(str, tried))}); recorded in the file")
    p.add_argument("--voxel", type=Path, help="the input grid, for runs without voxels.npz")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.output.suffix != packed_model.SUFFIX:
            raise MeshError(args.output, f"a packed model's name must end in {packed_model.SUFFIX}")
        for flag, value in (("--finetune-epochs", args.finetune_epochs),
                            ("--qat-epochs", args.qat_epochs)):
            if value is not None and value < 0:
                raise MeshError(args.run_dir, f"{flag} must be >= 0")
        given = {field: getattr(args, field) for field in EXTRA_BITS_FLAGS
                 if getattr(args, field) is not None}
        blob, sizes, voxels = pack_run(args.run_dir, args.bits, args.lossless,
                                       args.finetune_epochs, args.voxel, args.qat_epochs, given)
        packed_model.write(args.output, blob)
    except MeshError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    figures = decoded_figures(args.output, voxels)
    line = f"{args.output}: {figures['bytes']:,} bytes"
    if "iou" in figures:
        line += f" = {figures['bpov']:.3f} bpov, IoU {100 * figures['iou']:.3f} %"
        # What the bits cost is the figure a user picks --bits by (4 bits loses points).
        reference = sizes.get("float32_iou")
        if reference is not None:
            line += (f" (float32 model {100 * reference:.3f} %, "
                     f"{100 * (figures['iou'] - reference):+.3f} points)")
    line += (f" (weights: ans {sizes['weights_ans']:,} B, lzma {sizes['weights_lzma']:,} B, "
             f"per tensor {sizes['weights_mixed']:,} B; kept {sizes['coder']}; first layer "
             f"+{sizes['extra_bits'].input_layer} bits, tri-planes +{sizes['extra_bits'].planes}, "
             f"later kernels +{sizes['extra_bits'].later_kernels}")
    if args.lossless:
        line += (f"; residual: list {sizes['residual_list']:,} B, "
                 f"probabilities {sizes['residual_probabilities']:,} B")
    print(line + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
