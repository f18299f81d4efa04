"""k-bit weights for a packed model: per-output-channel quantization and the fine-tuning that
keeps a quantized model's IoU.

Quantization is symmetric, one scale per output channel (the last axis: a Dense kernel's
units, a tri-plane's feature channel); a 1-D tensor (a bias) has one scale for all of it::

    w ~ s sign(q) |q|^p,  |q| <= Q = 2^(bits-1) - 1,  s = max|w| / Q^p (stored as float16)

p = 1 (uniform levels) for Dense weights. Tri-plane lattices (rank 4) use p = 2, levels
uniform in sqrt|w|: their features are heavy-tailed (bunny 128^3: largest 11.7, median
0.013), so uniform 8-bit levels round most of them to 0 (297 wrong voxels instead of 11,
measured with only the planes quantized) where square-law levels keep them (32).

The packer, the decoder and the fine-tuning all go through :func:`quantize`, so the weights a
fine-tuned model was judged with are bit for bit the weights the decoder rebuilds.

Fine-tuning (:func:`finetune_quantized`) is quantization-aware training with the
straight-through estimator done by swapping weights: each step the model's variables are set
to the quantized float "shadow" weights, the loss gradient is taken there, and the shadow
weights are updated with it (the quantizer's derivative taken as 1). That needs no change to
the Keras models, whose layers stay the plain ones the decoder builds.
"""

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

BITS = (8, 6, 4)


def max_level(bits):
    """Q, the largest |q| at ``bits`` bits (symmetric, so -Q..Q, 2^bits - 1 levels).

    Example:
        >>> max_level(4)
        7
    """
    if bits not in BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits}")
    return 2 ** (bits - 1) - 1


def level_power(shape):
    """p of the quantizer for a tensor of this shape: 2 for tri-plane lattices, else 1."""
    return 2 if len(shape) == 4 else 1


@dataclass
class QuantizedTensor:
    """One weight tensor at k bits.

    Attributes:
        levels: int32, the tensor's shape, in [-Q, Q].
        scales: float16 [C] (C = the last axis, or 1 for a 1-D tensor).
    """

    levels: np.ndarray
    scales: np.ndarray

    def dequantize(self):
        """float32, the tensor's shape: s sign(q) |q|^p with s the scale of its channel."""
        flat = self.levels.reshape(-1, len(self.scales)).astype(np.float32)
        magnitude = np.abs(flat) ** level_power(self.levels.shape)
        return (np.sign(flat) * magnitude * self.scales.astype(np.float32)).reshape(self.levels.shape)


def quantize(weights, bits):
    """A float tensor -> QuantizedTensor, one scale per output channel (:func:`channel_scales`).

    Args:
        weights: float array, any shape (1-D: one scale; else per last-axis channel).
        bits: 8, 6 or 4.
    Returns:
        QuantizedTensor.

    Example:
        >>> q = quantize(np.array([[0.5, -1.0], [0.25, 0.5]]), 4)
        >>> q.levels.tolist(), q.dequantize().tolist()
        ([[7, -7], [4, 4]], [[0.5, -1.0], [0.28564453125, 0.5]])
    """
    weights = np.asarray(weights, np.float32)
    scales = channel_scales(weights, bits)
    flat = _channels(weights)
    levels = _levels(flat, scales.astype(np.float32), max_level(bits), level_power(weights.shape))
    return QuantizedTensor(levels.astype(np.int32).reshape(weights.shape), scales)


def _channels(weights):
    return weights.reshape(-1, 1 if weights.ndim == 1 else weights.shape[-1])


def _levels(flat, scales, top, power):
    magnitude = np.abs(flat) / scales
    if power == 2:
        magnitude = np.sqrt(magnitude)
    return np.sign(flat) * np.clip(np.rint(magnitude), 0, top)


CLIP_RATIOS = np.linspace(0.4, 1.0, 13)
"""Largest level as a fraction of max|w| tried per channel; 1.0 (no clipping) included."""


def channel_scales(weights, bits):
    """float16 [C]: per output channel, the scale with the least squared quantization error.

    The largest level is placed at r max|w| for r in CLIP_RATIOS: a few clipped outliers
    often cost less than the coarser steps they would force on every other weight (at 4 bits
    especially). The scale is rounded to float16, as the file stores it, before it is judged.
    """
    weights = np.asarray(weights, np.float32)
    top, power = max_level(bits), level_power(weights.shape)
    flat = _channels(weights)
    peak = np.abs(flat).max(axis=0, initial=0.0)
    best_error, best = None, None
    for ratio in CLIP_RATIOS:
        scales = (np.float32(ratio) * peak / np.float32(top ** power)).astype(np.float16)
        scales[scales == 0] = np.float16(1.0)  # an all-zero channel: any scale gives levels 0
        scales32 = scales.astype(np.float32)
        levels = _levels(flat, scales32, top, power)
        error = np.square(flat - np.sign(levels) * np.abs(levels) ** power * scales32).sum(axis=0)
        if best is None:
            best_error, best = error, scales
        else:
            better = error < best_error
            best_error, best = np.where(better, error, best_error), np.where(better, scales, best)
    return best.astype(np.float16)


def quantize_model(model, bits):
    """QuantizedTensor per weight of ``model``, in ``model.weights`` order."""
    return [quantize(np.asarray(w), bits) for w in model.weights]


def set_quantized(model, bits):
    """Replaces ``model``'s weights by their dequantized k-bit values; returns the tensors."""
    tensors = quantize_model(model, bits)
    model.set_weights([t.dequantize() for t in tensors])
    return tensors


def finetune_quantized(model, data, bits, epochs, learning_rate, evaluate_every=None):
    """Quantization-aware fine-tuning of one stage; leaves ``model`` holding k-bit weights.

    Starts from the plain quantization of ``model`` and keeps whichever quantized weights
    (the start included) reconstruct ``data``'s grid with the fewest wrong voxels, so it
    never does worse than quantizing alone.

    Args:
        model: a trained keras.Model of vox_tf.models.
        data: vox_tf.stage_training.StageData of its stage (dataset, target, mask).
        bits: 8, 6 or 4.
        epochs: passes over data.dataset (0: plain quantization).
        learning_rate: Adam's at the start, decayed to 0 along half a cosine (measured
            choices: vox_tf.pack.FINETUNE_LR).
        evaluate_every: epochs between grid evaluations (default: every epoch).
    Returns:
        dict: wrong_voxels of the plain and of the kept quantization, and the epoch kept.

    Example:
        >>> finetune_quantized(fine, fine_stage_data(voxels, coarse, config), 8, 10, 1e-4)
        {'wrong_voxels_plain': 77, 'wrong_voxels': 19, 'epoch': 10}
    """
    shadow = [tf.Variable(np.asarray(w), trainable=False) for w in model.trainable_weights]
    set_quantized(model, bits)
    best_wrong = plain_wrong = data.evaluate(model, with_chamfer=False)["wrong_voxels"]
    best, best_epoch = model.get_weights(), 0
    steps = int(data.dataset.cardinality()) * max(epochs, 1)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    loss_fn = keras.losses.BinaryCrossentropy()
    top = max_level(bits)

    # The scales follow the weights once per epoch; within one they are constants.
    scales = [tf.Variable(np.ones(_channels(np.asarray(w)).shape[1], np.float32), trainable=False)
              for w in shadow]

    @tf.function
    def step(points, labels):
        for variable, float_weights, scale in zip(model.trainable_weights, shadow, scales):
            variable.assign(fake_quantize(float_weights, scale, top))
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(points, training=True))
        gradients = tape.gradient(loss, model.trainable_weights)
        optimizer.apply(gradients, shadow)
        return loss

    every = evaluate_every or 1
    for epoch in range(1, epochs + 1):
        for scale, float_weights in zip(scales, shadow):
            scale.assign(channel_scales(np.asarray(float_weights), bits).astype(np.float32))
        for points, labels in data.dataset:
            step(points, labels)
        if epoch % every and epoch != epochs:
            continue
        model.set_weights([np.asarray(s) for s in shadow])
        set_quantized(model, bits)
        wrong = data.evaluate(model, with_chamfer=False)["wrong_voxels"]
        if wrong < best_wrong:
            best_wrong, best, best_epoch = wrong, model.get_weights(), epoch
    model.set_weights(best)
    return {"wrong_voxels_plain": int(plain_wrong), "wrong_voxels": int(best_wrong),
            "epoch": best_epoch}


def fake_quantize(weights, scales, top):
    """TensorFlow twin of QuantizedTensor.dequantize(quantize(...)) for given channel scales.

    Args:
        weights: float32 tf.Tensor of one weight.
        scales: float32 [C], e.g. channel_scales(weights, bits) as float32.
        top: max_level(bits).
    Returns:
        float32, the shape of ``weights``: the same values the packer's levels decode to.
    """
    power = level_power(weights.shape)
    if weights.shape.rank == 1:
        scales = scales[0]
    magnitude = tf.abs(weights) / scales
    if power == 2:
        magnitude = tf.sqrt(magnitude)
    level = tf.minimum(tf.round(magnitude), float(top))
    return tf.sign(weights) * level ** power * scales
