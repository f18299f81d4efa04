"""The fine network's k-bit weights for a packed file (vox_tf.pack): training at the levels,
fine-tuning, and the cache that keeps both in the run directory.

    >>> reconstructor = finetuned("runs/demo", 4, FINETUNE_EPOCHS, voxels, qat_epochs=None)

The training (vox_tf.quantized_finetuning.train_quantized) runs QAT_STEPS optimizer steps at
the file's levels, in whole epochs (qat_epochs_for); the fine-tuning after it
(vox_tf.quantized_finetuning.finetune_quantized) learns the Dense kernels' rounding up or down
per weight, and trains the tri-planes and biases at their levels. The rates and epochs below
are the defaults of ``python -m vox_tf.pack``, each with the figures it was chosen by.

Results are kept in the run directory once they finish::

    quantized/<bits>bit_x<a>p<b>_[qat<epochs>ep_lr<r>_]<epochs>ep_rounding_lr<r>_ste_lr<r>
        _scale_lr<r>_kernel_scale_lr<r>_fine_v<q>.npz  (one name)

and the training at the levels, before the fine-tuning, as
quantized/<bits>bit_x<a>p<b>_qat<epochs>ep_lr<r>_scale_lr<r>_fine_v<q>.npz (its state while it
runs: .training.npz beside it, which an interrupted pack goes on from)

(a, b: the first Dense kernel's and the tri-plane lattices' extra bits, vox_tf.quantization.
ExtraBits; r: the rates; q: the quantizer's version), so packing again (say with --lossless)
reuses them. The quantizer's version and the fine-tuning's method are in the name: weights
tuned otherwise are not reused.
"""

import json
import sys
from pathlib import Path

import numpy as np

from vox_tf import packed_model
from vox_tf.console import progress_bar
from vox_tf.errors import MeshError
from vox_tf.files import atomic_output
from vox_tf.hierarchy import HierarchicalReconstructor
from vox_tf.quantization import DEFAULT_EXTRA_BITS
from vox_tf.quantized_finetuning import finetune_quantized, train_quantized
from vox_tf.run_layout import CONFIG_FILE

QUANTIZED_DIR = "quantized"
FINETUNE_EPOCHS = 30
QAT_STEPS = 183_000
"""Optimizer steps of quantization-aware training (vox_tf.quantized_finetuning.
train_quantized) before the fine-tuning, in whole epochs, at least QAT_MIN_EPOCHS and at most
QAT_MAX_EPOCHS[bits] (qat_epochs_for). The fine-tuning alone moves a kernel weight by one level
at most: at 4 bits it leaves thousands of wrong voxels, at 6 bits enough to lose 0.1-0.7 point
on four of six searched nets (0.000 and 0.003 on the others), at 5 bits 1.4-2.8 (two
measured). Training the net at its levels first takes half to nearly all of them away, for
4-11 % more bytes (the levels spread out; the 128:relu x3 net's 4-bit file is 5 % smaller).
Decoded files, wrong voxels (IoU points against float32) after 800 epochs and without them:
mgn10_125611516241372_TShirtNoCoat 256^3, default search (20,487 fine params, 0 in float32): 6
bits 27 (-0.046; 14,330 B) against 171 (-0.289; 13,185 B), 4 bits 2,239 against 4,503;
thingi32_64444 256^3 (17,655, 115): 6 bits 109 (+0.007; 12,595 B) against 585 (-0.533; 11,633
B); 3DSMaxExport 128^3 (9,095, 17): 6 bits 0 (+0.257) against 25 (-0.121), 5 bits 7 (+0.151)
against 111 (-1.414); TShirtNoCoat 5 bits 731 (-1.229) against 1,708 (-2.849); its 128:relu x3
net (47,879, 8): 4 bits 49 (-0.069) against 3,578; bunny 128^3 (15,799, 2): 4 bits 516 against
1,653, 6 bits 2 (10,739 B) against 3 (10,003 B); mgn10_125611510010088_ShirtNoCoat 256^3
(18,215, 0): 6 bits 0 (12,604 B) against 0 (11,346 B).

Counted in steps because an epoch is the fine stage's samples, which go with the model's
surface and resolution: 14-157 batches of 2048 on seven meshes at 128^3, 205-455 on three
256^3 grids, so 800 epochs were 11,000-126,000 steps at 128^3 and 164,000-364,000 at 256^3. At
4 bits, the nets that had few steps gained much from more, up to 183,000 (3000 epochs against
800 at 128^3; params, float32 wrong voxels, batches an epoch): 3DSMaxExport (9,095, 17; 14) 13
(+0.060 points; 3,031 B) against 98 (-1.210; 2,942 B), Wuson (11,591, 2; 36) 0 (+0.011)
against 22 (-0.114), teapot (13,991, 0; 56) 2 (-0.007; 6,447 B) against 6 (-0.022; 6,568 B),
spider (11,991, 4; 28) 106 (-0.799; 4,676 B) against 213 (-1.629; 4,741 B), Spider_binary
(10,695, 417; 28) 497 against 620, bunny (15,799, 2; 61) 315 (7,532 B) against 516. The
256^3 nets, past 164,000 steps at 800 epochs, gained little or nothing from more:
mgn10_125611516241372_TShirtNoCoat (322) 2,198 (-3.643; 10,070 B) at 1,131 epochs and 2,085
(-3.465; 10,088 B) at 3000 against 2,239; thingi32_64444 (455) 1,523 (-1.587; 9,179 B) at 3000
against 1,916; mgn10_125611510010088_ShirtNoCoat (205) 348 (-0.918; 8,683 B) at 1,776 and 338
(-0.893; 8,704 B) at 893 against 326 (-0.860; 8,715 B); 32-35 min a file at 1,131-1,776
epochs and 1.3-1.8 h at 3000 here (beside other packs), against 16-31 min at 800. So 183,000
steps, bunny's 3000 epochs, the most measured to gain: every 128^3 net above gets 3000 epochs
(sphereWithHole, 157 batches, 1,166) and the 256^3 nets keep their 800 (QAT_MIN_EPOCHS;
ShirtNoCoat 893). A file whose fine-tuning alone loses at most vox_tf.pack.QAT_SKIP_POINTS
skips it by default."""
QAT_MIN_EPOCHS = 800
"""The fewest epochs QAT_STEPS gives: the fewest measured on the 256^3 grids (above), where
the steps alone would give 403-893."""
QAT_MAX_EPOCHS = {8: 0, 6: 800, 5: 800, 4: 3000}
"""Per file bits, the most epochs QAT_STEPS gives (at 128^3 the steps alone would give
1,166-13,072). 4 bits: 3000, the longest training measured (above). 6 and 5 bits: 800, as
many as 6 bits needed on every net measured; 3000 bought nothing there but bytes (6 bits,
128^3: 3DSMaxExport +0.257 points either way, 3,901 B against 3,814; spider +0.031, 6,591 B
against 6,419). 8 bits lose nothing to buy back (within 0.02 point): none."""
TRAINING_STATE_SUFFIX = ".training.npz"
"""Beside the training's cache file (finetune_cache_name with no fine-tuning) while the
training runs: the state an interrupted pack goes on from."""
QAT_WEIGHT_LR = 1e-2
"""Adam's first rate for the weights in the quantization-aware training (a cosine down to
1 % of it). Decoded 4-bit files of the default search's models (800 epochs, then the
fine-tuning), wrong voxels and bytes at 1e-2 against 1e-3, the float stage's own first rate:
mgn10_125611516241372_TShirtNoCoat 256^3 2,239 (10,087 B) against 2,885 (10,119 B);
thingi32_64444 256^3 1,916 (9,178 B) against 2,307 (9,035 B);
mgn10_125611510010088_ShirtNoCoat 256^3 326 (8,715 B) against 600 (8,645 B); bunny 128^3 516
(7,705 B) against 752 (7,753 B), 3e-3 583, 3e-2 639; TShirtNoCoat's 128:relu x3 net (47,879
fine params) 49 (19,725 B) against 143 (23,717 B). At 6 bits too: TShirtNoCoat 27 (14,330 B)
against 271 (13,777 B), which is more than the fine-tuning alone leaves (171): at 1e-2 the
first few hundred epochs are worse than the plain quantization, but the cosine's end settles
lower."""
FINETUNE_ROUNDING_LR = 3e-2
"""Adam's rate for the Dense kernels' rounding variables (vox_tf.quantized_finetuning.
finetune_quantized). At 1e-1 the five-hidden-layer net of mgn10_125611504997669_LongCoat 256^3
(~9,000 steps in 30 epochs) was thrown off at the first epoch (4 bits: 30,324 wrong voxels
plainly quantized, 177,168 after one epoch) and no epoch beat the plain file; at 3e-2 it keeps
12,867 (1e-2 13,824, 5e-2 19,590) and at 6 bits 965 against 1,235. On the three-layer nets
3e-2 costs 1-7 % at 4 bits (wrong voxels after 30 epochs, 3e-2 against 1e-1):
mgn10_125611516241372_TShirtNoCoat 5,037 / 4,974 (6 bits 881 / 874, 8 bits 4 / 5),
thingi32_64444 4,134 / 3,846 (5e-2: 4,030), mgn10_125611494287978_ShirtNoCoat (five layers)
4,422 / 4,682; bunny 128^3 (64:swish,32:swish) 2,142 / 2,115. Before the tri-planes and
biases were trained, with the output kernel's rounding learned too, 1e-1 had beaten 3e-2 at
128^3: bunny (runs/b0, 0 in float32) 4 / 5 / 6 bits 1,792 / 241 / 1 against 1,826 / 340 / 4;
runs/real128's 3DSMaxExport (17 in float32) 8 bits 20 and 20, 6 bits 32 and 59, 4 bits 406
and 825; Spider_binary 6 bits 477 and 536. Bunny 4 bits, 20 epochs at 3e-2 and lambda 1e-4:
3,754; 200 epochs at 1e-2 (lambda 1e-3): 1,606."""
FINETUNE_WEIGHT_LR = {8: 1e-4, 6: 1e-3, 5: 1e-3, 4: 1e-3}
"""Fine-tuning defaults (vox_tf.quantized_finetuning.finetune_quantized): epochs, and per file
bits Adam's rate for the tri-planes and biases.
At 8 bits a level of the tri-planes (12 bits) is a sixteenth of one at 4 and 1e-3 moves them
by whole levels a step: wrong voxels after 30 epochs at 1e-4 against 1e-3,
mgn10_125611504997669_LongCoat 256^3 (8 in float32, 386 plainly quantized) 4 against 39
(3e-4: 4); mgn10_125611516241372_TShirtNoCoat 0 against 1; 128^3 (runs/real128) bunny 0 and
0, 3DSMaxExport 95 and 96, Spider_binary 411 and 404 (float32 ~450). At fewer bits 1e-3 holds:
wrong voxels after 30 epochs, 4 / 5 / 6 bits: teapot 128^3 1e-3 150 / 0 / 0, 3e-3 162 / 6 / 3,
3e-4 190 / 1 / 0; bunny 128^3 4 bits 1e-3 1,808, 1e-2 2,105, 1e-4 2,289; LongCoat 6 bits 1e-3
1,571, 3e-4 1,566, 1e-4 1,508 (6,549 plain); these were measured with the rounding at 1e-1.
256^3 takes ~3 s an epoch on 2 cores (thingi32_64444)."""
FINETUNE_SCALE_LR = 3e-3
"""Adam's rate for the exponents of the tri-planes' and biases' learned scales (steps of
2^(1/16)). Wrong voxels after 30 epochs, bytes beside them, against the same fine-tuning at the
plain quantization's scales: mgn10_125611516241372_TShirtNoCoat 256^3 (runs/seed2, 17,655
fine params) 4 bits 3e-3 4,974 (8,173 B), 1e-3 5,843 (8,068 B), 1e-2 5,041 (8,228 B), fixed
7,598 (7,964 B); 5 bits 2,222 against 3,557; 6 bits 874 against 1,256; 8 bits 5 against 12.
Bunny 128^3 (64:swish, 32:swish, trained 60 epochs) 4 bits: 1e-3 2,161 (5,210 B), 3e-3 2,115
(5,262 B), 1e-2 2,052 (5,350 B), 3e-2 2,073, fixed 2,223 (5,174 B). Finer scales use more
levels: files grow 0.3-3 %."""
FINETUNE_KERNEL_SCALE_LR = {8: 0.0, 6: 0.0, 5: 0.0, 4: 1e-2}
"""Per file bits, Adam's rate for the exponents of the Dense kernels' scales (0: the plain
quantization's kept). At 4 bits a step of scale (4.4 %) moves a channel's largest weights by a
third of a level, and learning them takes wrong voxels away (30 epochs, rounding at 3e-2; 1e-2
/ 3e-3 / plain scales): mgn10_125611504997669_LongCoat 256^3 8,807 / 9,501 / 12,867 (3e-2:
8,345, 1e-3: 10,893), mgn10_125611516241372_TShirtNoCoat 4,425 / 4,862 / 5,037 (3e-2: 4,538,
1e-3: 5,067), thingi32_64444 3,596 / 3,759 / 4,134, mgn10_125611494287978_ShirtNoCoat 4,253 /
4,308 / 4,422; bunny 128^3 2,216 / 2,172 / 2,142. With more bits a step is most of a level (5
bits) or more (6 bits: 1.4) and it costs (3e-3 / plain): TShirtNoCoat 5 bits 2,476 / 2,428, 6
bits 1,094 / 881, LongCoat 6 bits 1,299 / 965; 8 bits 4 / 4."""
QUANTIZER_VERSION = 4
"""The packed format version whose quantizer fine-tuned weights are cached for (versions 5
to 7 changed how a file stores them, not the weights; version 7's later kernels' extra bits
are in the cache name, through ExtraBits.name)."""


def finetuned(directory, bits, epochs, voxels, extra_bits=DEFAULT_EXTRA_BITS, qat_epochs=0):
    """The run's reconstructor with its fine network quantized to ``bits`` (the weights
    vox_tf.quantization.ExtraBits names ``extra_bits`` more), trained ``qat_epochs`` at its
    levels (None: qat_epochs_for its fine stage's batches) and fine-tuned ``epochs`` in the
    float32 coarse net's mask (the one the file stores).

    The result is cached in DIR/quantized/ (atomically) and reused.
    """
    directory = Path(directory)
    reconstructor = HierarchicalReconstructor.load(directory)
    if epochs == 0 and qat_epochs == 0:
        return reconstructor
    if voxels.resolution != reconstructor.resolution:
        raise MeshError(voxels.source, f"resolution {voxels.resolution} is not the model's "
                                       f"{reconstructor.resolution}")
    data = None
    if qat_epochs is None:  # the default counts steps: the fine stage's batches give the epochs
        data = fine_stage_data_of(directory, reconstructor, voxels)
        qat_epochs = qat_epochs_for(bits, int(data.dataset.cardinality()))
    cache = directory / QUANTIZED_DIR / finetune_cache_name(bits, extra_bits, epochs, qat_epochs)
    if _load_cached(reconstructor, cache):
        return reconstructor
    if data is None:
        data = fine_stage_data_of(directory, reconstructor, voxels)
    training = f"{qat_epochs} epochs of {bits}-bit training, then " if qat_epochs else ""
    print(f"fine stage: {training}{epochs} epochs of {bits}-bit fine-tuning (first layer "
          f"{bits + extra_bits.input_layer} bits, tri-planes {bits + extra_bits.planes}, "
          f"later kernels {bits + extra_bits.later_kernels})", file=sys.stderr)
    if qat_epochs:
        trained = cache.with_name(finetune_cache_name(bits, extra_bits, 0, qat_epochs))
        if _load_cached(reconstructor, trained):
            print(f"fine stage: {bits}-bit training reused from {trained}", file=sys.stderr)
        else:
            with progress_bar(1, qat_epochs, f"{bits}-bit training", "epoch") as bar:
                outcome = train_quantized(
                    reconstructor.fine, data, bits, qat_epochs, QAT_WEIGHT_LR,
                    FINETUNE_SCALE_LR, extra_bits=extra_bits,
                    scale_weights=packed_model.fine_weights_as_packed(reconstructor), bar=bar,
                    checkpoint=trained.with_name(trained.stem + TRAINING_STATE_SUFFIX))
            print(finetune_outcome(outcome, bits, "training"), file=sys.stderr)
            _save_cached(reconstructor, trained)
        # the fine-tuning draws where the trained weights err, whether trained now or before
        data.aim_focus(reconstructor.fine)
    if epochs:
        with progress_bar(1, epochs, f"{bits}-bit fine-tuning", "epoch") as bar:
            outcome = finetune_quantized(
                reconstructor.fine, data, bits, epochs, FINETUNE_ROUNDING_LR,
                FINETUNE_WEIGHT_LR[bits], FINETUNE_SCALE_LR, FINETUNE_KERNEL_SCALE_LR[bits],
                extra_bits=extra_bits,
                scale_weights=packed_model.fine_weights_as_packed(reconstructor), bar=bar)
        print(finetune_outcome(outcome, bits), file=sys.stderr)
        _save_cached(reconstructor, cache)
    return reconstructor


def fine_stage_data_of(directory, reconstructor, voxels):
    """The fine stage's vox_tf.stage_training.StageData that the run in ``directory`` trained
    on (its own config.json), in ``reconstructor``'s coarse mask, against ``voxels``."""
    from vox_tf.stage_training import fine_stage_data
    from vox_tf.train_config import TrainConfig

    config = TrainConfig(**json.loads((Path(directory) / CONFIG_FILE).read_text())["config"])
    return fine_stage_data(voxels, reconstructor.coarse, config)


def qat_epochs_for(bits, batches_per_epoch):
    """Epochs of training at its levels that a lossy ``bits`` file gets by default, for a fine
    stage of ``batches_per_epoch``: QAT_STEPS steps in whole epochs, at least QAT_MIN_EPOCHS
    and at most QAT_MAX_EPOCHS[bits].

    Example:
        >>> [qat_epochs_for(4, batches) for batches in (14, 61, 157, 455)]
        [3000, 3000, 1166, 800]
        >>> [qat_epochs_for(bits, 61) for bits in (8, 6)]
        [0, 800]
    """
    return min(QAT_MAX_EPOCHS[bits], max(QAT_MIN_EPOCHS, -(-QAT_STEPS // batches_per_epoch)))


def _load_cached(reconstructor, cache):
    """Sets the fine net's weights from ``cache`` if it exists; says whether it did."""
    if not cache.exists():
        return False
    with np.load(cache) as saved:
        reconstructor.fine.set_weights([saved[f"w{i}"] for i in range(len(saved.files))])
    return True


def _save_cached(reconstructor, cache):
    with atomic_output(cache) as tmp:
        np.savez(tmp, **{f"w{i}": w for i, w in enumerate(reconstructor.fine.get_weights())})


def finetune_outcome(outcome, bits, what="fine-tuning"):
    """One line on what the fine-tuning (or the training, ``what``) kept, from the dict of
    finetune_quantized (train_quantized).

    A user sees when no epoch beat rounding to nearest: the file then holds the plain
    quantization (mgn10_125611504997669_LongCoat 256^3 at 4 bits, 28,699 wrong voxels, when
    the rounding learned at 1e-1).

    Example:
        >>> finetune_outcome({"wrong_voxels_plain": 7438, "wrong_voxels": 1808, "epoch": 30}, 4)
        'fine stage: 4-bit fine-tuning kept epoch 30: 1,808 wrong voxels (7,438 plainly quantized)'
    """
    if outcome["epoch"] == 0:
        return (f"fine stage: no epoch of {bits}-bit {what} beat the plain quantization "
                f"({outcome['wrong_voxels_plain']:,} wrong voxels): it is kept")
    return (f"fine stage: {bits}-bit {what} kept epoch {outcome['epoch']}: "
            f"{outcome['wrong_voxels']:,} wrong voxels ({outcome['wrong_voxels_plain']:,} "
            "plainly quantized)")


def finetune_cache_name(bits, extra_bits, epochs, qat_epochs=0):
    """File name, in RUN_DIR/quantized/, of the weights fine-tuned with these settings. With
    ``qat_epochs`` and no fine-tuning it names the training's weights, which are kept too: a
    fine-tuning interrupted, or run again with other epochs, starts from them.

    Example:
        >>> finetune_cache_name(8, DEFAULT_EXTRA_BITS, 30)
        '8bit_x2p4_30ep_rounding_lr0.03_ste_lr0.0001_scale_lr0.003_kernel_scale_lr0_fine_v4.npz'
        >>> finetune_cache_name(4, DEFAULT_EXTRA_BITS, 30, 800)[:40]
        '4bit_x2p4_qat800ep_lr0.01_30ep_rounding_'
        >>> finetune_cache_name(4, DEFAULT_EXTRA_BITS, 0, 800)
        '4bit_x2p4_qat800ep_lr0.01_scale_lr0.003_fine_v4.npz'
    """
    qat = f"qat{qat_epochs}ep_lr{QAT_WEIGHT_LR:g}_" if qat_epochs else ""
    if qat and not epochs:  # the training's weights alone, which fine-tunings start from
        return (f"{bits}bit_{extra_bits.name}_{qat}scale_lr{FINETUNE_SCALE_LR:g}"
                f"_fine_v{QUANTIZER_VERSION}.npz")
    return (f"{bits}bit_{extra_bits.name}_{qat}{epochs}ep_rounding_lr{FINETUNE_ROUNDING_LR:g}"
            f"_ste_lr{FINETUNE_WEIGHT_LR[bits]:g}_scale_lr{FINETUNE_SCALE_LR:g}"
            f"_kernel_scale_lr{FINETUNE_KERNEL_SCALE_LR[bits]:g}"
            f"_fine_v{QUANTIZER_VERSION}.npz")
