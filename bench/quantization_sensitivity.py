"""Which weights a packed file can afford to round: wrong voxels with one tensor quantized alone.

    python bench/quantization_sensitivity.py runs/seed/thingi32_64444 [--bits 8 6 4]
    python bench/quantization_sensitivity.py --smoke      # a built-in torus, tiny model trained here

For a trained run (training or search run directory, its voxels.npz as ground truth) and each
``--bits``: the wrong voxels of the reconstruction when only one weight tensor is quantized
(uniform levels, one scale per output channel, no fine-tuning), for every tensor of the fine
network (a packed file keeps the coarse stage as its grid, unquantized); then every tensor at
``--bits`` alike, and every tensor at the bits a packed file gives it
(vox_tf.quantization.weight_bits). The fine network's unread tri-plane nodes are
zeroed first, as the packer does. This is how PLANE_EXTRA_BITS and INPUT_LAYER_EXTRA_BITS of
vox_tf.quantization were measured.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import parse_args  # noqa: E402


def sensitivity_rows(run_dir, bits_list):
    """Yields (label, {bits: wrong voxels}) rows, float32 first (its wrong voxels under every bits)."""
    from vox_tf.hierarchy import HierarchicalReconstructor
    from vox_tf.metrics import grid_metrics
    from vox_tf.pack import ground_truth, model_dir
    from vox_tf.packed_model import fine_weights_as_packed
    from vox_tf.quantization import quantize, weight_bits

    directory = model_dir(run_dir)
    truth = ground_truth(directory).dense()
    reconstructor = HierarchicalReconstructor.load(directory)
    model = reconstructor.fine
    arrays = fine_weights_as_packed(reconstructor)

    def wrong_voxels(changed):
        model.set_weights(changed)
        wrong = grid_metrics(reconstructor.predict_grid(), truth, with_chamfer=False)["wrong_voxels"]
        model.set_weights(arrays)
        return wrong

    float_wrong = wrong_voxels(arrays)
    yield "float32", {bits: float_wrong for bits in bits_list}
    for index, weight in enumerate(model.weights):
        row = {}
        for bits in bits_list:
            changed = list(arrays)
            changed[index] = quantize(arrays[index], bits).dequantize()
            row[bits] = wrong_voxels(changed)
        yield f"{weight.path} {tuple(weight.shape)}", row
    yield "every tensor at --bits", {
        bits: wrong_voxels([quantize(a, bits).dequantize() for a in arrays]) for bits in bits_list}
    yield "every tensor at a file's bits", {
        bits: wrong_voxels([quantize(a, b).dequantize() for a, b in
                            zip(arrays, weight_bits(model, bits))])
        for bits in bits_list}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="training or search run directory")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    args = parse_args(parser, {"bits": [8, 4]}, argv)
    if args.run_dir is None and not args.smoke:
        parser.error("give a run directory, or --smoke")
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            from compression import smoke_run

            _, runs = smoke_run(tmp)
            args.run_dir = runs / "torus"
        print(f"wrong voxels of {args.run_dir} with one tensor quantized alone")
        print(f"{'tensor':<48}" + "".join(f"{f'{bits} bits':>10}" for bits in args.bits))
        for label, row in sensitivity_rows(args.run_dir, args.bits):
            print(f"{label:<48}" + "".join(f"{row[bits]:>10,}" for bits in args.bits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
