"""k-bit weights for a packed model: per-output-channel quantization and the fine-tuning that
keeps a quantized model's IoU.

Quantization is symmetric and uniform, one scale per output channel (the last axis: a Dense
kernel's units, a tri-plane's feature channel); a 1-D tensor (a bias) has one scale for all
of it::

    w ~ s q,  |q| <= Q = 2^(b-1) - 1,  s ~ max|w| / Q,  s = 2^(k/16) for an integer k

with b the file's ``bits`` for most weights and more for the two that every fine-stage
feature passes through (:func:`weight_bits`, :class:`ExtraBits`): the tri-plane lattices
(PLANE_EXTRA_BITS) and the kernel of the first Dense layer, which reads the encodings
(INPUT_LAYER_EXTRA_BITS). At 256^3 a file's bits were far too few for them, and they are a
small share of its bytes (most tri-plane nodes are never read and are not stored).

Scales are powers of 2^(1/16) (:data:`SCALE_STEPS_PER_OCTAVE`) so that a file stores each as
one byte below its tensor's largest (:func:`scale_exponents`), except the one scale of a
one-channel tensor, a float16; files up to version 3 stored every scale as float16 (2 bytes,
1-5 % of a file) and the decoder still reads them.

Files of format version 1 held every weight at the file's bits, the planes with square-law
levels, w ~ s sign(q) q^2 (``QuantizedTensor.power`` 2), to keep their heavy-tailed small values
(bunny 128^3: largest 11.7, median 0.013); the decoder still reads them. At 12 bits uniform
levels do better than square-law ones at 8 (mgn10_125611510010088_ShirtNoCoat 256^3, planes
alone quantized: 186 wrong voxels against 725; float32: 166).

The packer and the decoder go through :func:`quantize`; the fine-tuning rounds at the scales it
finds (:func:`channel_scales`), and quantizing k-bit values again gives back their levels, so
the weights a fine-tuned model was judged with are bit for bit the weights the decoder rebuilds.

Fine-tuning (:func:`finetune_quantized`) learns for each weight whether to round it down or up
(AdaRound) at the plain quantization's scales, with the stage's loss: it needs no change to the
Keras models, whose layers stay the plain ones the decoder builds.
"""

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

BITS = (8, 6, 5, 4)
"""The bits per weight a packed file can be written with (``vox_tf.pack --bits``). 5 is
there for lossless files, whose bytes are the weights' plus the residual's:
mgn10_125611510010088_ShirtNoCoat 256^3 (16,896 params, 10 epochs each of the straight-through
fine-tuning the learned rounding replaced), lossless 8,426 bytes at 4 bits, 7,826 at 5, 8,559
at 6, 10,760 at 8 (lzma: 9,920)."""
PLANE_EXTRA_BITS = 4
"""Bits that tri-plane lattices get beyond the file's. Measured with
bench/quantization_sensitivity.py on mgn10_125611510010088_ShirtNoCoat at 256^3 (a searched
model, 166 wrong voxels in float32), quantizing the planes alone, uniform levels: 11 bits 237
wrong voxels, 12 bits 186, 13 bits 164 (version 1's 8-bit square-law levels: 725); bunny
128^3 (11 in float32): 12 bits 10. In that 8-bit file they take ~2,000 bytes instead of 1,148
(1,050 of their nodes are read)."""
INPUT_LAYER_EXTRA_BITS = 2
"""Bits that the first Dense kernel gets beyond the file's. Same model, every weight
quantized (planes as above), without fine-tuning: 8-bit file 512 wrong voxels, with that
kernel (63 x 48) at 10 bits 341; 6-bit file 2,249, at 8 bits 1,373; 4-bit file 10,415, at
6 bits 6,029. A packed file records its own and the planes' (:class:`ExtraBits`): a lossless
file tries fewer (vox_tf.pack.LOSSLESS_EXTRA_BITS), since its residual may pay less for what
they lose than they save."""
SCALE_STEPS_PER_OCTAVE = 16
"""Channel scales are 2^(k / 16), steps of 4.4 %."""
SCALE_EXPONENT_SPAN = 255
"""How far (in steps, 16 octaves) a channel's scale may lie below its tensor's largest: one
byte each in a file. A channel further below (almost all zeros) gets the coarser scale."""


@dataclass(frozen=True)
class ExtraBits:
    """Bits beyond a file's ``bits`` for the two weights every fine-stage feature passes
    through: the first Dense kernel and the tri-plane lattices. A packed file records both.

    Example:
        >>> ExtraBits(input_layer=0, planes=3).name
        'x0p3'
    """

    input_layer: int = INPUT_LAYER_EXTRA_BITS
    planes: int = PLANE_EXTRA_BITS

    @property
    def name(self):
        """Short form for file names and reports: x<input layer>p<planes>."""
        return f"x{self.input_layer}p{self.planes}"


DEFAULT_EXTRA_BITS = ExtraBits()


def weight_bits(model, bits, extra_bits=DEFAULT_EXTRA_BITS):
    """The bits of each of ``model.weights`` in a file of ``bits``: ``extra_bits.planes`` more
    for tri-plane lattices, ``extra_bits.input_layer`` more for the first Dense kernel,
    ``bits`` for the rest.

    Example:
        >>> weight_bits(build_occupancy_model("16:relu"), 8)  # planes, kernel, bias, output layer
        [12, 10, 8, 8, 8]
    """
    dense = _dense_layers(model)
    first_kernel = dense[0].kernel if dense else None
    return [bits + extra_bits.planes if len(w.shape) == 4
            else bits + extra_bits.input_layer if w is first_kernel else bits
            for w in model.weights]


def _dense_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def max_level(bits):
    """Q, the largest |q| at ``bits`` bits (symmetric, so -Q..Q, 2^bits - 1 levels).

    Example:
        >>> max_level(4)
        7
    """
    if int(bits) != bits or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer from 2 to 16, got {bits}")
    return 2 ** (bits - 1) - 1


@dataclass
class QuantizedTensor:
    """One weight tensor at k bits.

    Attributes:
        levels: int32, the tensor's shape, in [-Q, Q].
        scales: float32 [C] (C = the last axis, or 1 for a 1-D tensor): powers of 2^(1/16)
            (:func:`scales_from_exponents`), a float16 value when C = 1 (and every scale of
            files up to version 3).
        bits: k (Q = max_level(k)).
        power: of the levels (2 only for the tri-planes of version-1 files).
    """

    levels: np.ndarray
    scales: np.ndarray
    bits: int
    power: int = 1

    def dequantize(self):
        """float32, the tensor's shape: s sign(q) |q|^power with s the scale of its channel."""
        flat = self.levels.reshape(-1, len(self.scales)).astype(np.float32)
        magnitude = np.abs(flat) ** self.power
        return (np.sign(flat) * magnitude * self.scales.astype(np.float32)).reshape(self.levels.shape)


def quantize(weights, bits):
    """A float tensor -> QuantizedTensor, one scale per output channel (:func:`channel_scales`).

    Args:
        weights: float array, any shape (1-D: one scale; else per last-axis channel).
        bits: the tensor's (:func:`weight_bits` gives each weight's in a packed file).
    Returns:
        QuantizedTensor.

    Example:
        >>> q = quantize(np.array([[0.5, -1.0], [0.25, 0.5]]), 4)
        >>> q.levels.tolist(), np.round(q.dequantize(), 4).tolist()
        ([[7, -7], [4, 4]], [[0.4771, -0.9542], [0.2726, 0.5453]])
    """
    weights = np.asarray(weights, np.float32)
    scales = channel_scales(weights, bits)
    flat = _channels(weights)
    levels = _levels(flat, scales.astype(np.float32), max_level(bits))
    return QuantizedTensor(levels.astype(np.int32).reshape(weights.shape), scales, bits)


def _channels(weights):
    return weights.reshape(-1, 1 if weights.ndim == 1 else weights.shape[-1])


def _levels(flat, scales, top):
    return np.sign(flat) * np.clip(np.rint(np.abs(flat) / scales), 0, top)


CLIP_STEPS = 22
"""Scales tried per channel below the smallest that clips nothing: 22 steps of 2^(1/16) reach
0.39 of it (level Q at 0.39 max|w|)."""
CLIP_RATIOS = np.linspace(0.4, 1.0, 13)
"""Largest level as a fraction of max|w| tried for a tensor of one channel; 1.0 included."""
EXACT_STEPS = SCALE_STEPS_PER_OCTAVE
"""Coarser scales tried too, but taken only when they reproduce the channel exactly: levels
whose largest is below Q (down to half of it) find their own scale again. The learned rounding
(:func:`finetune_quantized`) can take a channel's largest weight down a level or more."""


def scale_exponents(scales):
    """int32 [C]: k with scales == 2^(k / SCALE_STEPS_PER_OCTAVE) (inverse of
    :func:`scales_from_exponents` on the scales :func:`channel_scales` gives)."""
    return np.rint(np.log2(np.asarray(scales, np.float64)) * SCALE_STEPS_PER_OCTAVE).astype(np.int32)


def scales_from_exponents(exponents):
    """float32 2^(k / SCALE_STEPS_PER_OCTAVE) for int k: the only scales a file holds.

    Example:
        >>> scales_from_exponents([0, -16, 8]).tolist()
        [1.0, 0.5, 1.4142135381698608]
    """
    return np.exp2(np.asarray(exponents, np.float64) / SCALE_STEPS_PER_OCTAVE).astype(np.float32)


def channel_scales(weights, bits):
    """float32 [C]: per output channel, the scale with the least squared quantization error.

    Tried: every 2^(k/16) from the smallest that clips no weight down CLIP_STEPS steps: a few
    clipped outliers often cost less than the coarser steps they would force on every other
    weight (at 4 bits especially). No channel's k is more than SCALE_EXPONENT_SPAN below the
    tensor's largest. Quantizing dequantized levels again gives the same levels: their scale
    is among those tried (EXACT_STEPS), with no error. A tensor of one channel gets a float16
    scale instead (:func:`_single_scale`).
    """
    weights = np.asarray(weights, np.float32)
    top = max_level(bits)
    flat = _channels(weights)
    if flat.shape[1] == 1:
        return _single_scale(flat, top)
    peak = np.abs(flat).max(axis=0, initial=0.0)
    live = peak > 0
    unclipped = np.zeros(len(peak), np.int32)
    # the smallest scale at which max|w| rounds to no more than Q
    unclipped[live] = np.ceil(np.log2(peak[live] / (top + 0.5)) * SCALE_STEPS_PER_OCTAVE)
    best_error, best = None, None
    for step in [*range(CLIP_STEPS + 1), *range(-1, -EXACT_STEPS - 1, -1)]:
        exponents = unclipped - step
        scales = scales_from_exponents(exponents)
        error = np.square(flat - _levels(flat, scales, top) * scales).sum(axis=0)
        if best is None:
            best_error, best = error, exponents
        else:
            better = (error < best_error) & ((step >= 0) | (error == 0))
            best_error, best = np.where(better, error, best_error), np.where(better, exponents, best)
    # An all-zero channel has levels 0 at any scale: give it the tensor's largest.
    best[~live] = best[live].max() if live.any() else 0
    return scales_from_exponents(np.maximum(best, best.max() - SCALE_EXPONENT_SPAN))


def _single_scale(flat, top):
    """float32 [1]: the scale of a one-channel tensor (a bias, the output kernel), a float16
    value (the two bytes an exponent would take): the output bias, one value, would be
    off by up to 1/30 of itself at 4 bits on the 2^(1/16) grid (thingi32_441708: 0.50)."""
    peak = np.abs(flat).max(initial=0.0)
    best_error, best = None, np.float16(1.0)  # all zeros: any scale gives levels 0
    candidates = [(np.float32(ratio) * peak / np.float32(top), False) for ratio in CLIP_RATIOS]
    # as EXACT_STEPS: levels whose largest is below Q, down to half of it, keep their scale
    candidates += [(peak / np.float32(level), True) for level in range(top - 1, top // 2, -1)]
    for value, exact_only in candidates if peak > 0 else ():
        scale = np.float16(value)
        error = np.square(flat - _levels(flat, np.float32(scale), top) * np.float32(scale)).sum()
        if exact_only and error > 0:
            continue
        if best_error is None or error < best_error:
            best_error, best = error, scale
    return np.array([best], np.float32)


def quantize_model(model, bits, extra_bits=DEFAULT_EXTRA_BITS):
    """QuantizedTensor per weight of ``model``, in ``model.weights`` order, each at its
    :func:`weight_bits` in a file of ``bits``."""
    return [quantize(np.asarray(w), b)
            for w, b in zip(model.weights, weight_bits(model, bits, extra_bits))]


ROUNDING_STRETCH = (-0.1, 1.1)
"""AdaRound's rectified sigmoid spans this interval before clipping to [0, 1], so that a
rounding variable reaches a hard 0 or 1 with a finite value and stops moving there."""
ROUNDING_WEIGHT = 1e-2
"""lambda, the weight of the term that pushes every rounding to 0 or 1 against the mean
binary cross-entropy. Bunny 128^3, 4 bits, 30 epochs at 3e-2 with the output kernel's
rounding learned: 1,826 wrong voxels (1e-3 and 200 epochs: 1,606; the straight-through
fine-tuning's best, 200 epochs: 2,394)."""
ROUNDING_WARMUP = 0.2
"""Share of the steps taken on the loss alone before the push towards 0 or 1 starts."""
ROUNDING_SHARPNESS = (20.0, 2.0)
"""The push's exponent beta, lowered linearly after the warm-up: at 20 only roundings near
0.5 feel it, at 2 all do."""


def finetune_quantized(model, data, bits, epochs, learning_rate, evaluate_every=None,
                       extra_bits=DEFAULT_EXTRA_BITS, scale_weights=None):
    """Learns, weight by weight, whether to round down or up (AdaRound, Nagel et al. 2020,
    with the stage's own loss); leaves ``model`` holding the k-bit weights.

    The scales are the plain quantization's (:func:`channel_scales` of the float32 weights);
    each weight ends at floor(w / s) or floor(w / s) + 1 steps. A rounding variable h in
    [0, 1] per weight replaces the +1 during training, pushed to 0 or 1 by a regularizer
    that grows after ROUNDING_WARMUP; at the end h >= 0.5 rounds up. The output layer's
    kernel stays rounded to nearest. Keeps whichever rounding (the plain one included)
    reconstructs ``data``'s grid with the fewest wrong voxels, so it never does worse than
    quantizing alone.

    Measured against the straight-through fine-tuning it replaces (shadow float weights,
    quantized each step; about the same time per epoch), wrong voxels of the fine stage:
    bunny 128^3 4 / 6 bits 2,914 / 44 (10 epochs) -> 1,585 / 6 (30 epochs); 3DSMaxExport
    128^3 6 bits 43 -> 35. Before the output kernel was kept, at 3e-2: thingi32_64444 256^3
    8 bits 17 -> 3 (float32 6), 6 bits 1,573 -> 947.

    Args:
        model: a trained keras.Model of vox_tf.models.
        data: vox_tf.stage_training.StageData of its stage (dataset, target, mask).
        bits: one of BITS.
        epochs: passes over data.dataset (0: plain quantization).
        learning_rate: Adam's, for the rounding variables.
        evaluate_every: epochs between grid evaluations (default: every epoch).
        extra_bits: ExtraBits of the first Dense kernel and the planes (:func:`weight_bits`).
        scale_weights: float32 arrays in ``model.weights`` order whose scales to round at
            (default: the model's own). The packer stores the tri-planes without the nodes no
            voxel reads (vox_tf.packed_model.fine_weights_as_packed), which can give a channel
            another scale: passing those keeps the file's levels the ones judged here.
    Returns:
        dict: wrong_voxels of the plain and of the kept quantization, and the epoch kept.

    Example:
        >>> finetune_quantized(fine, fine_stage_data(voxels, coarse, config), 4, 30, 1e-1)
        {'wrong_voxels_plain': 5261, 'wrong_voxels': 1585, 'epoch': 27}
    """
    if scale_weights is None:
        scale_weights = [np.asarray(w) for w in model.weights]
    settings = {id(w): (b, scaled) for w, b, scaled
                in zip(model.weights, weight_bits(model, bits, extra_bits), scale_weights)}
    # The output kernel keeps rounding to nearest and the rest learn around it: one of its
    # weights half-rounded moves every logit, so the soft-rounded net the loss sees was far
    # from any hard rounding (mgn10_125611494287978_ShirtNoCoat 256^3, 4 bits: soft 8,565
    # wrong voxels, hard 604,152, plain 43,264; with the kernel fixed, hard 22,008 in 6 epochs).
    output_kernel = _dense_layers(model)[-1].kernel
    roundings = [_Rounding(np.asarray(w), *settings[id(w)], learned=w is not output_kernel)
                 for w in model.trainable_weights]
    learned = [r for r in roundings if r.learned]

    def judge():
        # h starts where rounding to nearest puts it, so the first judgement is the plain file
        for variable, rounding in zip(model.trainable_weights, roundings):
            variable.assign(rounding.weights(hard=True))
        return data.evaluate(model, with_chamfer=False)["wrong_voxels"]

    best_wrong = plain_wrong = judge()
    best, best_epoch = model.get_weights(), 0
    steps = int(data.dataset.cardinality()) * epochs
    warmup = int(ROUNDING_WARMUP * steps)
    optimizer = keras.optimizers.Adam(learning_rate)
    loss_fn = keras.losses.BinaryCrossentropy()
    variables = [r.variable for r in learned]
    push = tf.Variable(0.0, trainable=False)
    sharpness = tf.Variable(ROUNDING_SHARPNESS[0], trainable=False)

    @tf.function
    def step(points, labels):
        # The model's layers stay the plain ones the decoder builds: its variables are set to
        # the soft-rounded weights, and the loss gradient there is carried back to h by hand.
        with tf.GradientTape(persistent=True) as outer:
            weights = [r.weights() for r in roundings]
            with tf.GradientTape() as inner:
                for variable, value in zip(model.trainable_weights, weights):
                    variable.assign(value)
                loss = loss_fn(labels, model(points, training=True))
            gradients = inner.gradient(loss, model.trainable_weights)
            regularizer = tf.add_n([r.undecided(sharpness) for r in learned])
        total = outer.gradient(weights, variables, output_gradients=gradients)
        pushed = outer.gradient(regularizer, variables)
        optimizer.apply([g + push * ROUNDING_WEIGHT * p for g, p in zip(total, pushed)],
                        variables)
        return loss

    every = evaluate_every or 1
    done = 0
    for epoch in range(1, epochs + 1):
        for points, labels in data.dataset:
            progress = max(0.0, (done - warmup) / max(steps - warmup, 1))
            push.assign(float(done >= warmup))
            sharpness.assign(ROUNDING_SHARPNESS[0]
                             + progress * (ROUNDING_SHARPNESS[1] - ROUNDING_SHARPNESS[0]))
            step(points, labels)
            done += 1
        if epoch % every and epoch != epochs:
            continue
        wrong = judge()
        if wrong < best_wrong:
            best_wrong, best, best_epoch = wrong, model.get_weights(), epoch
    model.set_weights(best)
    return {"wrong_voxels_plain": int(plain_wrong), "wrong_voxels": int(best_wrong),
            "epoch": best_epoch}


class _Rounding:
    """One weight's learned rounding at the plain quantization's scales of ``scale_weights``."""

    def __init__(self, weights, bits, scale_weights, learned=True):
        scales = channel_scales(scale_weights, bits)
        ratio = weights / (scales if weights.ndim > 1 else scales[0])
        down = np.floor(ratio)
        low, high = ROUNDING_STRETCH
        # h starts at the fraction rounding to nearest would weigh: sigmoid(v) = (f - low) / span
        fraction = np.clip((ratio - down - low) / (high - low), 1e-6, 1 - 1e-6)
        self.down = tf.constant(down, tf.float32)
        self.scales = tf.constant(scales if weights.ndim > 1 else scales[0], tf.float32)
        self.top = float(max_level(bits))
        self.variable = tf.Variable(np.log(fraction / (1 - fraction)).astype(np.float32),
                                    trainable=learned)
        self.learned = learned

    def up(self):
        """h in [0, 1]: how far each weight is rounded up."""
        low, high = ROUNDING_STRETCH
        return tf.clip_by_value(tf.sigmoid(self.variable) * (high - low) + low, 0.0, 1.0)

    def weights(self, hard=False):
        up = tf.cast(self.variable >= 0, tf.float32) if hard or not self.learned else self.up()
        return tf.clip_by_value(self.down + up, -self.top, self.top) * self.scales

    def undecided(self, sharpness):
        """AdaRound's regularizer: 0 where every h is 0 or 1."""
        return tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * self.up() - 1.0), sharpness))
