"""Training both stages of METHOD.md for fixed architectures: ``python -m vox_tf.train``.

    python -m vox_tf.train --voxel bunny128.npz --coarse-arch 40:relu,8:relu,40:swish \\
        --fine-arch 128:elu,64:swish --out runs/bunny

The same as a Python API: :func:`train_hierarchy`. One stage at a time (what the search uses
to train a candidate) is vox_tf.stage_training; the run directory's layout is vox_tf.run_layout.

Run directory layout (DIR = --out)::

    config.json                 settings and voxel fingerprint; a re-run must match them
    coarse/ fine/               TensorBoard event files of each stage (train/), its resume
                                checkpoint (backup/, state.json, best.npz) and stage.json once done
    coarse.keras fine.keras metadata.json   the trained pair (vox_tf.load(DIR))
    results.json reconstruction.npz reconstruction.ply errors.ply preview.png

Re-running the same command resumes: a finished stage (stage.json written) is reused, an
interrupted one continues from its last checkpoint (taken every eval_every epochs, with the
grid evaluation), up to the epoch budget of the new command.
"""

import argparse
import json
import sys
from pathlib import Path

import keras
import tensorflow as tf

from vox_tf.console import phase
from vox_tf import tensorboard_summaries
from vox_tf.exports import PREVIEW_FILE, write_all
from vox_tf.files import atomic_output
from vox_tf.grid import VoxelGrid
from vox_tf.hierarchy import HierarchicalReconstructor
from vox_tf.metrics import grid_metrics, parameter_count, storage_bytes
from vox_tf.pack import VOXELS_FILE
from vox_tf.packed_model import size_figures
from vox_tf.run_layout import (CONFIG_FILE, FINAL_SUMMARY_DIR, STAGE_FILE, check_same_run,
                               clear_resume_state, voxel_fingerprint)
from vox_tf.stage_training import (check_resolutions, coarse_stage_data, fine_stage_data,
                                   train_stage)
from vox_tf.train_config import LR_SCHEDULES, TrainConfig
from vox_tf.training_callbacks import LOGGED_METRICS

STAGES = ("coarse", "fine")


def run_record(config: TrainConfig, voxels: VoxelGrid):
    """What config.json records and a resumed run must match: the settings and the voxels."""
    return {"config": config.identity(), "voxels": voxel_fingerprint(voxels)}


def check_run_dir(out_dir, config: TrainConfig, voxels: VoxelGrid):
    """Raises ValueError if ``out_dir`` holds a run with other settings or voxels."""
    check_same_run(Path(out_dir) / CONFIG_FILE, run_record(config, voxels))



def _run_stage(name, data, arch, epochs, config, out_dir, start=None):
    """Trains a stage into out_dir, or reuses it when a previous run finished it.

    ``start``: a trained keras.Model to continue from when its weights fit ``arch`` with this
    config's encodings (see :func:`train_hierarchy`); otherwise training starts afresh.
    """
    model_path, stage_dir = out_dir / f"{name}.keras", out_dir / name
    done_path = stage_dir / STAGE_FILE
    if done_path.exists() and model_path.exists():
        phase(config.verbose, f"{name} stage: already trained, reusing {model_path}")
        return keras.saving.load_model(model_path, compile=False), json.loads(done_path.read_text())
    phase(config.verbose, f"{name} stage: {arch} at {data.resolution}^3, up to {epochs} epochs")
    keras.utils.set_random_seed(config.seed)
    model = config.build(arch, name)
    warm = start is not None and [w.shape for w in start.weights] == [w.shape for w in model.weights]
    if warm:
        model.set_weights(start.get_weights())
    result = train_stage(model, data, epochs, config, stage_dir=stage_dir, warm_start=warm,
                         description=f"{name} training")
    with atomic_output(model_path) as tmp:
        model.save(tmp)
    summary = {"metrics": result.metrics, "seconds": result.seconds, "epochs": result.epochs,
               "best_epoch": result.best_epoch, "params": parameter_count(model)}
    with atomic_output(done_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    clear_resume_state(stage_dir)
    return model, summary


def train_hierarchy(voxels: VoxelGrid, config: TrainConfig, out_dir, start=None):
    """Trains both stages on ``voxels`` into ``out_dir`` and writes every output; resumable.

    Args:
        start: optional {"coarse": keras.Model, "fine": keras.Model} already trained (the
            search's choices): a stage whose model fits its architecture and encodings
            continues from those weights, keeps them unless an evaluated epoch beats them, and
            is not trained at all when they already reconstruct its grid with no wrong voxel.

    Returns:
        dict, the content of results.json: iou, chamfer_l2, accuracy, precision, recall (of
        the two-stage reconstruction over the full R^3 grid), params, params_coarse,
        params_fine, bytes_fp32/fp16/int8, bytes_packed (the 8-bit .vxz of vox_tf.pack), bpov
        (its bits per occupied voxel), lzma_bytes (lzma of the bit-packed grid), seconds_coarse, seconds_fine, epochs per stage,
        the coarse stage's own metrics (coarse_*), the architectures and the voxel counts.

    Example:
        >>> config = TrainConfig("40:relu,8:relu,40:swish", "128:elu,64:swish")
        >>> train_hierarchy(VoxelGrid.load("bunny128.npz"), config, "runs/bunny")["iou"]
    """
    check_resolutions(voxels, config)
    check_run_dir(out_dir, config, voxels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(run_record(config, voxels), indent=2))

    start = start or {}
    coarse, coarse_summary = _run_stage("coarse", coarse_stage_data(voxels, config),
                                        config.coarse_arch, config.epochs_coarse, config, out_dir,
                                        start.get("coarse"))
    fine_data = fine_stage_data(voxels, coarse, config)
    fine, fine_summary = _run_stage("fine", fine_data, config.fine_arch, config.epochs_fine,
                                    config, out_dir, start.get("fine"))

    prediction = fine_data.reconstruct(fine)
    metrics = grid_metrics(prediction, fine_data.target)
    results = {
        **{key: metrics[key] for key in LOGGED_METRICS},
        "true_positives": metrics["true_positives"], "false_positives": metrics["false_positives"],
        "false_negatives": metrics["false_negatives"],
        "params": parameter_count([coarse, fine]),
        "params_coarse": parameter_count(coarse), "params_fine": parameter_count(fine),
        "bytes_fp32": storage_bytes([coarse, fine], "float32"),
        "bytes_fp16": storage_bytes([coarse, fine], "float16"),
        "bytes_int8": storage_bytes([coarse, fine], "int8"),
        "seconds_coarse": coarse_summary["seconds"], "seconds_fine": fine_summary["seconds"],
        "epochs_coarse": coarse_summary["epochs"], "epochs_fine": fine_summary["epochs"],
        **{f"coarse_{key}": coarse_summary["metrics"][key] for key in LOGGED_METRICS},
        "coarse_arch": config.coarse_arch, "fine_arch": config.fine_arch,
        "resolution": voxels.resolution, "coarse_resolution": config.coarse_resolution,
        "occupied_voxels": int(len(voxels.indices)), "predicted_voxels": int(prediction.sum()),
        "mask_voxels": int(fine_data.mask.sum()), "source": voxels.source,
        **size_figures(coarse, fine, voxels, config.coarse_resolution),
    }
    reconstructor = HierarchicalReconstructor(coarse, fine, voxels.resolution, voxels.center,
                                              voxels.scale, config.coarse_resolution,
                                              voxels.source, results)
    reconstructor.save(out_dir)
    # The ground truth stays with the model: vox_tf.pack fine-tunes and checks against it.
    voxels.save(out_dir / VOXELS_FILE)
    write_all(out_dir, prediction, voxels, results)
    summaries = tf.summary.create_file_writer(str(out_dir / FINAL_SUMMARY_DIR))
    step = fine_summary["epochs"]
    tensorboard_summaries.write_png(summaries, out_dir / PREVIEW_FILE, step)
    tensorboard_summaries.write_error_cloud(summaries, prediction, voxels, step)
    summaries.close()
    return results


def _parser():
    defaults = TrainConfig("8:relu", "8:relu")
    p = argparse.ArgumentParser(
        prog="python -m vox_tf.train",
        description="Train the coarse and the fine occupancy network of one voxel model "
                    "(fixed architectures). Re-run the same command to resume.")
    p.add_argument("--voxel", required=True, help="voxel file (.npz of python -m vox_tf.voxelize)")
    p.add_argument("--coarse-arch", required=True, help='e.g. "40:relu,8:relu,40:swish"')
    p.add_argument("--fine-arch", required=True, help='e.g. "128:elu,64:swish"')
    p.add_argument("--epochs-coarse", type=int, default=defaults.epochs_coarse)
    p.add_argument("--epochs-fine", type=int, default=defaults.epochs_fine)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule,
                   help="plateau: METHOD.md's ReduceLROnPlateau; cosine: decay over the epoch "
                        "budget, fewer epochs to a clean reconstruction")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every,
                   help="epochs between grid reconstructions (metrics, early stop)")
    p.add_argument("--focus", type=float, default=defaults.focus,
                   help="share of each fine epoch drawn from the voxels the last evaluation got "
                        "wrong and their neighbours (0: METHOD.md's fixed sampling; the 256^3 "
                        "search default is 0.5)")
    p.add_argument("--positional-levels", type=int, default=defaults.positional_levels,
                   help="L of the positional encoding (METHOD.md: 6; the 256^3 search default is 9)")
    p.add_argument("--coarse-triplane", action=argparse.BooleanOptionalAction,
                   default=defaults.coarse_triplane,
                   help="tri-plane features for the coarse network too (the reference's default)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--no-jit", action="store_true", help="train without XLA")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=defaults.verbose,
                   help="0 the summary only; 1 a line and a progress bar per stage; 2 a line "
                        "per epoch")
    p.add_argument("--out", required=True, help="run directory")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    # Every check on the input runs before anything is written: bad input leaves no output.
    try:
        config = TrainConfig(args.coarse_arch, args.fine_arch, epochs_coarse=args.epochs_coarse,
                             epochs_fine=args.epochs_fine, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
                             coarse_triplane=args.coarse_triplane, focus=args.focus,
                             positional_levels=args.positional_levels,
                             eval_every=args.eval_every, seed=args.seed,
                             jit_compile=not args.no_jit, verbose=args.verbose)
        voxels = VoxelGrid.load(args.voxel)
        check_resolutions(voxels, config)
        check_run_dir(args.out, config, voxels)
    except ValueError as err:  # MeshError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = train_hierarchy(voxels, config, args.out)
    print(f"IoU {100 * results['iou']:.3f} %  chamfer {results['chamfer_l2']:.3g}  "
          f"params {results['params_coarse']:,} + {results['params_fine']:,}  "
          f"seconds {results['seconds_coarse']:.0f} + {results['seconds_fine']:.0f}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
