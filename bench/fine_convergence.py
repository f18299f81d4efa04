"""How fast the fine stage converges: wrong voxels after the same epoch budget, per training variant.

    python bench/fine_convergence.py [--grid ../shared/seedgrids/thingi32_64444.npz] [--epochs 30]
        [--arch 64:relu,64:relu,64:relu] [--variants L6,L9,L9+focus0.5] [--smoke]

The coarse stage is trained once (quick.yaml's net 32:swish,24:swish,32:swish without
tri-planes, 150 epochs); then each variant trains the same fine net from the same seed for the
same epochs (cosine from 1e-2 to 1e-5, batch 2048, grid evaluation every 10 epochs, XLA), and
the script prints its wrong voxels, IoU, parameters and wall seconds. A variant is
``L<positional levels>``, optionally ``+T<tri-plane cells per side>[c<channels>]`` (``T0``: no
tri-planes; without it 32 x 2) and ``+focus<fraction>`` (vox_tf.error_focus). A focused
epoch costs what a plain one does, so equal epochs mean equal work.

``--smoke``: a built-in torus at 32^3, 2 epochs.
"""

import argparse
import os
import re
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from _common import parse_args  # noqa: E402
from vox_tf.grid import VoxelGrid  # noqa: E402
from vox_tf.stage_training import coarse_stage_data, fine_stage_data, train_stage  # noqa: E402
from vox_tf.train_config import TrainConfig  # noqa: E402

SEED_GRID = Path(__file__).resolve().parents[2] / "shared" / "seedgrids" / "thingi32_64444.npz"
COARSE_ARCH = "32:swish,24:swish,32:swish"
SMOKE = {"grid": "torus", "epochs": 2, "coarse_epochs": 2, "eval_every": 1, "variants": "L6,L6+focus0.5"}


def parse_variant(text):
    """'L9+T16c1+focus0.5' -> {"positional_levels": 9, "triplane_resolution": 16,
    "triplane_channels": 1, "focus": 0.5}; T0 means no tri-planes, no T the default 32 x 2."""
    match = re.fullmatch(r"L(\d+)(?:\+T(\d+)(?:c(\d+))?)?(?:\+focus(0?\.\d+))?", text.strip())
    if not match:
        raise SystemExit(f"bad variant {text!r}: expected L<levels>[+T<res>[c<channels>]]"
                         f"[+focus<fraction>], e.g. L9+T16c1+focus0.5")
    levels, resolution, channels, focus = match.groups()
    variant = {"positional_levels": int(levels), "focus": float(focus or 0.0)}
    if resolution is not None:
        variant["triplane_resolution"] = int(resolution) or None
    if channels is not None:
        variant["triplane_channels"] = int(channels)
    return variant


def load_grid(name):
    if name == "torus":
        from vox_tf.mesh_io import from_trimesh
        from vox_tf.shapes import builtin_shape
        from vox_tf.voxelize import voxelize

        return voxelize(from_trimesh(builtin_shape("torus"), "torus"), 32)
    return VoxelGrid.load(name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default=str(SEED_GRID),
                        help="voxel file (default: the shared thingi32_64444 256^3 grid)")
    parser.add_argument("--arch", default="64:relu,64:relu,64:relu", help="fine network")
    parser.add_argument("--epochs", type=int, default=30, help="fine epochs per variant")
    parser.add_argument("--coarse-epochs", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=10,
                        help="epochs between grid evaluations (each one re-aims the focus)")
    parser.add_argument("--variants", default="L6,L9,L9+focus0.5")
    args = parse_args(parser, SMOKE, argv)
    variants = {text: parse_variant(text) for text in args.variants.split(",")}
    voxels = load_grid(args.grid)
    common = dict(batch_size=2048, learning_rate=1e-2, lr_schedule="cosine", min_lr=1e-5,
                  coarse_triplane=False, eval_every=args.eval_every, verbose=0)
    print(f"{voxels.source or args.grid}: {voxels.resolution}^3, {len(voxels.indices):,} occupied voxels; "
          f"fine net {args.arch}, {args.epochs} epochs per variant")
    # One coarse stage (positional level 6) for every variant, so they share one mask.
    keras.utils.set_random_seed(0)
    coarse_config = TrainConfig(COARSE_ARCH, args.arch, **common)
    coarse = coarse_config.build(COARSE_ARCH, "coarse")
    train_stage(coarse, coarse_stage_data(voxels, coarse_config), args.coarse_epochs, coarse_config)
    rows = []
    for name, settings in variants.items():
        config = TrainConfig(COARSE_ARCH, args.arch, **common, **settings)
        data = fine_stage_data(voxels, coarse, config)
        keras.utils.set_random_seed(0)
        fine = config.build(args.arch)
        started = time.monotonic()
        result = train_stage(fine, data, args.epochs, config)
        rows.append((name, fine.count_params(), result.metrics["wrong_voxels"],
                     100 * result.metrics["iou"], time.monotonic() - started))
    print(f"{'variant':<16} {'params':>8} {'wrong voxels':>13} {'IoU %':>8} {'seconds':>8}")
    for name, params, wrong, iou, seconds in rows:
        print(f"{name:<16} {params:>8,} {wrong:>13,} {iou:>8.3f} {seconds:>8.0f}")


if __name__ == "__main__":
    main()
