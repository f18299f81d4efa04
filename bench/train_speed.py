"""Training and inference speed of the reference's fine network on this machine's CPU.

    python bench/train_speed.py [--arch ARCH] [--steps 60] [--batches 20] [--smoke]

Prints, with and without XLA (jit_compile): training samples/s (batch 4096, Adam, BCE, the
way vox_tf.train trains), inference points/s (65,536-point batches, the way
vox_tf.hierarchy reconstructs), the GFLOP/s this means, and the machine's peak.

FLOPs counted: 2 per multiply-add of the Dense layers (the encodings and activations are a
few percent more and not counted); a training step is taken as 3x a forward pass (forward,
gradient w.r.t. activations, gradient w.r.t. weights).

Peak: cores x GHz x FP32 FLOPs per cycle per core. With AVX-512 and two FMA units,
16 lanes x 2 (multiply + add) x 2 units = 64 FLOPs/cycle; AMD Zen 4 (CPU family 25) runs
512-bit instructions on 256-bit units, so 32 there. GHz is the nominal clock that lscpu /
/proc/cpuinfo report (turbo ignored).

``--smoke``: 2 timed training steps and 2 inference batches.
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

SMOKE = {"steps": 2, "batches": 2}
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
        per_cycle = 32 if zen4 else 64
    elif "fma" in flags:
        per_cycle = 32
    else:
        per_cycle = 8
    note = (f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FP32 FLOPs/cycle "
            f"({'AVX-512 on 256-bit units (Zen 4)' if zen4 and per_cycle == 32 else 'FMA vector units'})")
    return cores * ghz * per_cycle, note


def training_rate(arch, jit, steps):
    keras.utils.set_random_seed(0)
    model = build_occupancy_model(arch)
    model.compile(keras.optimizers.Adam(1e-3, weight_decay=1e-5), "binary_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (TRAIN_BATCH * 16, 3)).astype(np.float32)
    labels = (np.linalg.norm(points, axis=1, keepdims=True) < 0.6).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((points, labels)).batch(TRAIN_BATCH).cache().repeat()
    model.fit(data, steps_per_epoch=4, epochs=1, verbose=0)  # trace / compile
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * TRAIN_BATCH / (time.perf_counter() - start), model


def inference_rate(arch, jit, batches):
    model = build_occupancy_model(arch)
    model.compile(jit_compile=jit)
    points = tf.constant(np.random.default_rng(1).uniform(-1, 1, (PREDICT_BATCH, 3)), tf.float32)
    model.predict_on_batch(points)  # trace / compile
    start = time.perf_counter()
    for _ in range(batches):
        model.predict_on_batch(points)
    return batches * PREDICT_BATCH / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=REFERENCE_FINE)
    parser.add_argument("--steps", type=int, default=60, help="timed training steps")
    parser.add_argument("--batches", type=int, default=20, help="timed inference batches")
    args = parse_args(parser, SMOKE, argv)

    peak, note = machine_peak_gflops()
    model = build_occupancy_model(args.arch)
    flops = dense_flops_per_point(model)
    print(f"network {args.arch}: {input_features(model)} inputs, {model.count_params():,} parameters, "
          f"{flops:,} dense FLOPs per point forward")
    print(f"machine peak {peak:.0f} GFLOP/s = {note}")
    for jit in (False, True):
        train, _ = training_rate(args.arch, jit, args.steps)
        infer = inference_rate(args.arch, jit, args.batches)
        train_gflops, infer_gflops = train * 3 * flops / 1e9, infer * flops / 1e9
        print(f"jit_compile={str(jit):5}  training {train:>10,.0f} samples/s  {train_gflops:6.1f} GFLOP/s "
              f"({100 * train_gflops / peak:4.1f} % of peak)   inference {infer:>11,.0f} points/s  "
              f"{infer_gflops:6.1f} GFLOP/s ({100 * infer_gflops / peak:4.1f} % of peak)")


if __name__ == "__main__":
    main()
