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

The packer and the decoder go through :func:`quantize`; the fine-tuning
(vox_tf.quantized_finetuning) rounds at learned scales on the file's grid, started at those
:func:`channel_scales` finds, and quantizing k-bit values again gives back their levels and
scales, so the weights a fine-tuned model was judged with are bit for bit the weights the
decoder rebuilds.
"""

from dataclasses import dataclass

import keras
import numpy as np

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
    """Bits beyond a file's ``bits`` for the weights that cost most when rounded: the first
    Dense kernel and the tri-plane lattices, which every fine-stage feature passes through,
    and, on request (``vox_tf.pack --later-extra-bits``), the Dense kernels after the first.
    A packed file records all three.

    Example:
        >>> ExtraBits(input_layer=0, planes=3).name
        'x0p3'
        >>> ExtraBits(later_kernels=1).name
        'x2p4k1'
    """

    input_layer: int = INPUT_LAYER_EXTRA_BITS
    planes: int = PLANE_EXTRA_BITS
    later_kernels: int = 0

    @property
    def name(self):
        """Short form for file names and reports: x<input layer>p<planes>[k<later kernels>]."""
        later = f"k{self.later_kernels}" if self.later_kernels else ""
        return f"x{self.input_layer}p{self.planes}{later}"


DEFAULT_EXTRA_BITS = ExtraBits()


def weight_bits(model, bits, extra_bits=DEFAULT_EXTRA_BITS):
    """The bits of each of ``model.weights`` in a file of ``bits``: ``extra_bits.planes`` more
    for tri-plane lattices, ``extra_bits.input_layer`` more for the first Dense kernel,
    ``extra_bits.later_kernels`` more for the other Dense kernels, ``bits`` for the rest.

    Example:
        >>> weight_bits(build_occupancy_model("16:relu"), 8)  # planes, kernel, bias, output layer
        [12, 10, 8, 8, 8]
        >>> weight_bits(build_occupancy_model("16:relu"), 4, ExtraBits(later_kernels=1))
        [8, 6, 4, 5, 4]
    """
    kernels = [layer.kernel for layer in dense_layers(model)]

    def extra(weight):
        if len(weight.shape) == 4:
            return extra_bits.planes
        if kernels and weight is kernels[0]:
            return extra_bits.input_layer
        if any(weight is kernel for kernel in kernels[1:]):
            return extra_bits.later_kernels
        return 0

    return [bits + extra(w) for w in model.weights]


def dense_layers(model):
    """The keras.layers.Dense of ``model``, input side first."""
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
(vox_tf.quantized_finetuning) can take a channel's largest weight down a level or more."""


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
