"""Training and inference speed of the reference's fine network on this machine's CPU.

    python bench/train_speed.py [--arch ARCH] [--steps 160] [--rounds 5] [--batches 20]
        [--shape dumbbell] [--resolution 256] [--epochs 6] [--smoke]

Prints, with and without XLA (jit_compile): training samples/s (batch 4096, Adam, BCE, the
way vox_tf.train trains) at one step per Keras call and at the trainer's
vox_tf.stage_training.STEPS_PER_EXECUTION, inference points/s (65,536-point batches, the way
vox_tf.hierarchy reconstructs), the GFLOP/s this means, and the machine's peak. Then whole
fine epochs as the trainer runs them (a built-in shape's fine sample set under its pooled
32^3 grid's mask, batch 2048, XLA, one stream across the epochs:
vox_tf.stage_training.endless_epochs): samples/s over the epochs, whatever happens between
them included, and user+system time against wall.

FLOPs counted: 2 per multiply-add of the Dense layers (the encodings and activations are a
few percent more and not counted); a training step is taken as 3x a forward pass (forward,
gradient w.r.t. activations, gradient w.r.t. weights).

Peak: cores x GHz x FP32 FLOPs per cycle per core. With AVX-512 and two FMA units,
16 lanes x 2 (multiply + add) x 2 units = 64 FLOPs/cycle; AMD Zen 4 (CPU family 25) runs
512-bit instructions on 256-bit units, so 32 there. GHz is the nominal clock that lscpu /
/proc/cpuinfo report (turbo ignored).

``--smoke``: one round of 2 timed training steps, 2 inference batches, one 32^3 epoch.
"""

import argparse
import os
import re
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _common import parse_args  # noqa: E402
from vox_tf.models import build_occupancy_model, input_features  # noqa: E402
from vox_tf.mesh_io import from_trimesh  # noqa: E402
from vox_tf.sampling import coarse_grid, fine_samples, upsample_mask, without_autotune  # noqa: E402
from vox_tf.shapes import builtin_shape  # noqa: E402
from vox_tf.train_config import TrainConfig  # noqa: E402
from vox_tf.voxelize import voxelize  # noqa: E402
from vox_tf.stage_training import STEPS_PER_EXECUTION, compile_for_training, endless_epochs  # noqa: E402

SMOKE = {"steps": 2, "batches": 2, "rounds": 1, "resolution": 32, "epochs": 1}
REFERENCE_FINE = "128:elu,64:swish,64:elu,64:relu,128:swish,128:swish"
TRAIN_BATCH = 4096
PREDICT_BATCH = 65536


def dense_flops_per_point(model):
    """2 x multiply-adds of the Dense layers for one point's forward pass."""
    return sum(2 * int(np.prod(layer.kernel.shape)) for layer in model.layers
               if isinstance(layer, keras.layers.Dense))


def machine_peak_gflops():
    """(GFLOP/s, description) from lscpu: cores x GHz x FLOPs/cycle (see module docstring)."""
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field = dict(re.findall(r"^([^:]+):\s*(.*)$", info, re.M))
    cores = int(field.get("CPU(s)", os.cpu_count()))
    mhz = field.get("CPU max MHz") or field.get("CPU MHz")
    if mhz is None:
        cpuinfo = open("/proc/cpuinfo").read()
        found = re.search(r"cpu MHz\s*:\s*([\d.]+)", cpuinfo)
        mhz = found.group(1) if found else None
    if mhz is None:  # e.g. a VM that hides the clock: BogoMIPS is twice the TSC clock
        mhz = float(field["BogoMIPS"]) / 2
    ghz = float(mhz) / 1000
    flags = field.get("Flags", "")
    zen4 = field.get("Vendor ID") == "AuthenticAMD" and field.get("CPU family") == "25"
    if "avx512f" in flags:
        per_cycle, units = ((32, "AVX-512 on 256-bit units (Zen 4)") if zen4
                            else (64, "AVX-512 FMA units"))
    elif "fma" in flags:
        per_cycle, units = 32, "AVX2 FMA units"
    else:
        per_cycle, units = 8, "SSE units"
    note = f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FP32 FLOPs/cycle ({units})"
    return cores * ghz * per_cycle, note


def training_run(arch, jit, steps_per_execution):
    """A compiled, warmed-up model and its cached batches: ``run(steps)`` trains that many steps."""
    keras.utils.set_random_seed(0)
    model = build_occupancy_model(arch)
    model.compile(keras.optimizers.Adam(1e-3, weight_decay=1e-5), "binary_crossentropy",
                  jit_compile=jit, steps_per_execution=steps_per_execution)
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (TRAIN_BATCH * 16, 3)).astype(np.float32)
    labels = (np.linalg.norm(points, axis=1, keepdims=True) < 0.6).astype(np.float32)
    # Each round's fit() makes a new iterator, as each of the trainer's epochs does: without
    # autotuning, as the trainer's streams run (vox_tf.sampling.without_autotune).
    data = without_autotune(
        tf.data.Dataset.from_tensor_slices((points, labels)).batch(TRAIN_BATCH).cache().repeat())

    def run(steps):
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)

    run(2 * steps_per_execution)  # trace / compile
    return run


def timed(run, *args):
    """(wall seconds, user + system CPU seconds of this process) of run(*args)."""
    cpu, start = os.times(), time.perf_counter()
    run(*args)
    wall, after = time.perf_counter() - start, os.times()
    return wall, (after.user - cpu.user) + (after.system - cpu.system)


def inference_rate(arch, jit, batches):
    model = build_occupancy_model(arch)
    model.compile(jit_compile=jit)
    points = tf.constant(np.random.default_rng(1).uniform(-1, 1, (PREDICT_BATCH, 3)), tf.float32)
    model.predict_on_batch(points)  # trace / compile
    start = time.perf_counter()
    for _ in range(batches):
        model.predict_on_batch(points)
    return batches * PREDICT_BATCH / (time.perf_counter() - start)


def trainer_epochs(arch, shape, resolution, epochs):
    """(samples per epoch, samples/s, user+system / wall) of ``epochs`` fine epochs after one
    warm-up epoch, trained the way vox_tf.stage_training trains (grid evaluations aside)."""
    voxels = voxelize(from_trimesh(builtin_shape(shape), shape), resolution)
    mask = upsample_mask(coarse_grid(voxels, 32), resolution)
    config = TrainConfig("8:relu", arch, batch_size=2048, learning_rate=1e-2, positional_levels=9)
    samples = fine_samples(voxels, mask)
    keras.utils.set_random_seed(0)
    model = compile_for_training(config.build(arch), config)
    stream, steps = endless_epochs(samples.dataset(config.batch_size, seed=0),
                                   model.steps_per_execution)
    model.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0)  # trace / compile
    wall, cpu = timed(lambda: model.fit(stream, steps_per_epoch=steps, epochs=epochs, verbose=0))
    # An epoch is `steps` batches of the stream (one pass when the epoch is under one call),
    # each pass's short last batch among them.
    batches = -(-len(samples) // config.batch_size)
    trained = epochs * len(samples) * (steps or batches) / batches
    return len(samples), trained / wall, cpu / wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=REFERENCE_FINE)
    parser.add_argument("--steps", type=int, default=160, help="timed training steps")
    parser.add_argument("--batches", type=int, default=20, help="timed inference batches")
    parser.add_argument("--rounds", type=int, default=5, help="timed training rounds per variant")
    parser.add_argument("--shape", default="dumbbell", help="built-in shape of the epoch figure")
    parser.add_argument("--resolution", type=int, default=256, help="its grid's resolution")
    parser.add_argument("--epochs", type=int, default=6, help="timed trainer epochs")
    args = parse_args(parser, SMOKE, argv)

    peak, note = machine_peak_gflops()
    model = build_occupancy_model(args.arch)
    flops = dense_flops_per_point(model)
    print(f"network {args.arch}: {input_features(model)} inputs, {model.count_params():,} parameters, "
          f"{flops:,} dense FLOPs per point forward")
    print(f"machine peak {peak:.0f} GFLOP/s = {note}")
    # Rounds of one variant differ (a shared VM), so the variants take turns, round after
    # round, and each prints its best round (as timeit does) beside its median.
    variants = [(jit, steps) for jit in (False, True) for steps in sorted({1, STEPS_PER_EXECUTION})]
    runs = {variant: training_run(args.arch, *variant) for variant in variants}
    rounds = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant in variants:
            rounds[variant].append(timed(runs[variant], args.steps))
    for (jit, steps), times in rounds.items():
        wall, cpu = min(times)
        train = args.steps * TRAIN_BATCH / wall
        median = args.steps * TRAIN_BATCH / float(np.median([w for w, _ in times]))
        train_gflops = train * 3 * flops / 1e9
        print(f"jit_compile={str(jit):5}  steps per call {steps:2}  training {train:>10,.0f} "
              f"samples/s {train_gflops:6.1f} GFLOP/s ({100 * train_gflops / peak:4.1f} % of peak), "
              f"user+system {cpu / wall:.2f}x wall   (best of {len(times)} rounds; median "
              f"{median:,.0f} samples/s)")
    for jit in (False, True):
        infer = inference_rate(args.arch, jit, args.batches)
        infer_gflops = infer * flops / 1e9
        print(f"jit_compile={str(jit):5}  inference {infer:>11,.0f} points/s  "
              f"{infer_gflops:6.1f} GFLOP/s ({100 * infer_gflops / peak:4.1f} % of peak)")
    per_epoch, rate, busy = trainer_epochs(args.arch, args.shape, args.resolution, args.epochs)
    print(f"trainer epochs: {args.shape} {args.resolution}^3, {per_epoch:,} samples an epoch, "
          f"{args.epochs} epochs {rate:,.0f} samples/s, user+system {busy:.2f}x wall")


if __name__ == "__main__":
    main()
