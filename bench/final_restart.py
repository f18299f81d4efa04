"""The search's final training, replayed from a finished run's filter candidates at other restart learning rates.

    python bench/final_restart.py RUN_DIR [--candidates 00,01] [--learning-rates 1e-2,3e-3]
        [--epochs N] [--smoke]

RUN_DIR is a finished `python -m vox_tf.search` run (its config in search.json, its grid in
model/voxels.npz). For each fine filter candidate (search/fine_filter/NN) and each learning
rate, the final training the search gives a choice (vox_tf.search_final: from the coarse choice
and the candidate's filter weights, the config's final epochs for this grid unless --epochs, the
cosine restarting at that rate) runs into a scratch directory; the script prints the candidate's wrong voxels after
the filter and after this training, the IoU and the seconds.

``--smoke``: a tiny search of a built-in torus at 32^3 first, then its two candidates.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from _common import parse_args  # noqa: E402
from vox_tf.exports import RESULTS_FILE  # noqa: E402
from vox_tf.grid import VoxelGrid  # noqa: E402
from vox_tf.pack import VOXELS_FILE  # noqa: E402
from vox_tf.run_layout import DONE_FILE, MODEL_DIR, RUN_FILE, SEARCH_DIR  # noqa: E402
from vox_tf.search_config import SearchConfig  # noqa: E402
from vox_tf.search_space import train_config  # noqa: E402
from vox_tf.stage_training import fine_stage_data  # noqa: E402
from vox_tf.train import train_hierarchy  # noqa: E402
from vox_tf.typed_config import from_dict, merged  # noqa: E402

SMOKE = {"candidates": "00,01", "learning_rates": "1e-2,3e-3"}
TINY_SEARCH = {
    "resolution": 32, "coarse_resolution": 16,
    "encoding": {"positional_levels": 3, "triplane_resolution": 4, "coarse_triplane": False},
    "training": {"batch_size": 512, "learning_rate": 0.01, "jit_compile": False, "eval_every": 5},
    **{stage: {"max_layers": 2, "widths": [8, 16], "hyperband": {"max_epochs": 2, "factor": 2},
               "filter": {"top": 2, "epochs": 10}, "final_epochs": 10}
       for stage in ("coarse", "fine")},
}
# With 10 filter epochs a coarse net of the torus may still predict nothing (no fine mask).
TINY_SEARCH["coarse"]["filter"]["epochs"] = 40


def tiny_run(run_dir):
    """A finished search of the built-in torus at 32^3 in ``run_dir`` (the smoke's input)."""
    from vox_tf.mesh_io import from_trimesh
    from vox_tf.search_pipeline import run_search
    from vox_tf.shapes import builtin_shape
    from vox_tf.voxelize import voxelize

    config = from_dict(SearchConfig, merged(SearchConfig().to_dict(), TINY_SEARCH))
    run_search(voxelize(from_trimesh(builtin_shape("torus"), "torus"), 32), config, run_dir, verbose=0)


def load_run(run_dir, epochs):
    """(config, voxels, coarse arch, coarse choice, fine epochs) of a finished run, read once."""
    config = from_dict(SearchConfig, json.loads((run_dir / RUN_FILE).read_text())["config"])
    voxels = VoxelGrid.load(run_dir / MODEL_DIR / VOXELS_FILE)
    coarse_arch = json.loads((run_dir / RESULTS_FILE).read_text())["coarse_arch"]
    coarse = keras.saving.load_model(run_dir / SEARCH_DIR / "coarse_choice.keras", compile=False)
    if epochs is None:  # the search's own budget (final_samples over this grid's fine set)
        epochs = config.fine.final_epochs_for(fine_stage_data(voxels, coarse, train_config(config)).samples)
    return config, voxels, coarse_arch, coarse, epochs


def replay(run, filter_dir, done, learning_rate, out_dir):
    """(final wrong voxels, IoU, seconds) of one replayed final training of a filter candidate."""
    config, voxels, coarse_arch, coarse, epochs = run
    final = train_config(config, done["encoding"], coarse_arch, done["arch"], verbose=0,
                         epochs_coarse=config.coarse.final_epochs, epochs_fine=epochs,
                         learning_rate=learning_rate)
    start = {"coarse": coarse, "fine": keras.saving.load_model(filter_dir / "model.keras", compile=False)}
    started = time.monotonic()
    replayed = train_hierarchy(voxels, final, out_dir, start=start)
    wrong = replayed["false_positives"] + replayed["false_negatives"]
    return wrong, 100 * replayed["iou"], time.monotonic() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a finished search run directory")
    parser.add_argument("--candidates", default="00,01", help="fine filter slots (search/fine_filter/NN)")
    parser.add_argument("--learning-rates", default="1e-2,3e-3", help="restart learning rates")
    parser.add_argument("--epochs", type=int, help="fine epochs (default: the run's final ones)")
    args = parse_args(parser, SMOKE, argv)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.smoke and args.run_dir is None:
            args.run_dir = scratch / "torus"
            tiny_run(args.run_dir)
        if args.run_dir is None:
            parser.error("RUN_DIR is required (or --smoke)")
        run_dir = Path(args.run_dir)
        print(f"{run_dir}: fine filter candidates {args.candidates}, restart learning rates "
              f"{args.learning_rates}")
        print(f"{'candidate':<46} {'lr':>7} {'filter wrong':>13} {'final wrong':>12} {'IoU %':>8} "
              f"{'seconds':>8}")
        run = load_run(run_dir, args.epochs)
        for candidate in args.candidates.split(","):
            filter_dir = run_dir / SEARCH_DIR / "fine_filter" / candidate
            done = json.loads((filter_dir / DONE_FILE).read_text())
            for rate in args.learning_rates.split(","):
                after, iou, seconds = replay(run, filter_dir, done, float(rate), scratch / f"{candidate}_{rate}")
                print(f"{candidate} {done['arch']:<43} {rate:>7} {done['metrics']['wrong_voxels']:>13,} "
                      f"{after:>12,} {iou:>8.3f} {seconds:>8.0f}")


if __name__ == "__main__":
    main()
