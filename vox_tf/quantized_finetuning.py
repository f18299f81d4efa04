"""Fine-tuning a quantized fine net so that its k-bit file keeps the float32 model's IoU.

The Dense kernels learn, weight by weight, whether to round down or up (AdaRound, Nagel et al.
2020, with the stage's own loss instead of a layer-wise one); the tri-plane lattices and the
biases, which the file stores at their own scales and few of whose values are many bytes, are
trained as floats with their rounding to nearest in the forward pass (straight-through
gradients) and can move by any number of levels. Their scales are learned (LSQ, Esser et al.
2020) from the plain quantization's (vox_tf.quantization.channel_scales), and the kernels' too
where that pays (few bits), on the grid of scales a file stores, which the packer's
channel_scales finds again from the levels' largest: the file holds exactly the weights that
were judged. It needs no change to the Keras models, whose layers stay the plain ones the
decoder builds.

Wrong voxels of the fine stage after 30 epochs, Dense kernels rounded and the rest moved
against every weight rounded (4 / 5 / 6 bits): bunny 128^3 (runs/b0, 0 in float32) 1,808 / 284
/ 2 against 2,479 / 639 / 17; teapot 128^3 (0) 150 / 0 / 0 against 442 / 21 / 0;
3DSMaxExport 128^3 64 / 10 / 4 against 143 / 18 / 7.

A kernel weight that moves by one level at most cannot undo 4 bits at 256^3: thousands of
wrong voxels stay. :func:`train_quantized` trains every weight, kernels included, at its levels
for hundreds of epochs first (quantization-aware training, straight-through, LSQ scales), and
the fine-tuning then starts from its weights.
"""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from vox_tf.files import atomic_output
from vox_tf.quantization import (DEFAULT_EXTRA_BITS, SCALE_STEPS_PER_OCTAVE, channel_scales,
                                 dense_layers, max_level, scales_from_exponents, weight_bits)
from vox_tf.training_callbacks import cosine_decay

ROUNDING_STRETCH = (-0.1, 1.1)
"""AdaRound's rectified sigmoid spans this interval before clipping to [0, 1], so that a
rounding variable reaches a hard 0 or 1 with a finite value and stops moving there."""
ROUNDING_WEIGHT = 1e-2
"""lambda, the weight of the term that pushes every rounding to 0 or 1 against the mean
binary cross-entropy. Bunny 128^3, 4 bits, 30 epochs at 3e-2 with every weight's rounding
learned, the output kernel's too: 1,826 wrong voxels (1e-3 and 200 epochs: 1,606; the
straight-through fine-tuning of every weight, 200 epochs: 2,394)."""
ROUNDING_WARMUP = 0.2
"""Share of the steps taken on the loss alone before the push towards 0 or 1 starts."""
ROUNDING_SHARPNESS = (20.0, 2.0)
"""The push's exponent beta, lowered linearly after the warm-up: at 20 only roundings near
0.5 feel it, at 2 all do."""
QAT_FINAL_RATE = 1e-2
"""Where :func:`train_quantized`'s cosine ends, as a share of its first rate."""
QAT_EVALUATE_EVERY = 10
"""Epochs between :func:`train_quantized`'s judgements: one of the whole grid costs about an
epoch at 256^3."""


def finetune_quantized(model, data, bits, epochs, rounding_rate, weight_rate, scale_rate,
                       kernel_scale_rate=0.0, evaluate_every=None, extra_bits=DEFAULT_EXTRA_BITS,
                       scale_weights=None, bar=None):
    """Fine-tunes ``model``'s k-bit weights with the stage's loss; leaves ``model`` holding them.

    Every tensor's scales start at the plain quantization's (:func:`channel_scales` of
    ``scale_weights``); the tri-planes' and biases' are learned, the Dense kernels' at
    ``kernel_scale_rate`` only. Each hidden Dense kernel weight ends at floor(w / s0) or
    floor(w / s0) + 1 levels of its scale (s0: the plain one): a rounding variable
    h in [0, 1] replaces the +1 during training, pushed to 0 or 1 by a regularizer that grows after
    ROUNDING_WARMUP; at the end h >= 0.5 rounds up. The output layer's kernel stays rounded
    to nearest. The tri-plane lattices and the biases are trained as floats, rounded to
    their nearest level in the forward pass. Keeps whichever weights (the plain
    quantization's included) reconstruct ``data``'s grid with the fewest wrong voxels, so it
    never does worse than quantizing alone.

    Args:
        model: a trained keras.Model of vox_tf.models.
        data: vox_tf.stage_training.StageData of its stage (dataset, target, mask).
        bits: one of vox_tf.quantization.BITS.
        epochs: passes over data.dataset (0: plain quantization).
        rounding_rate: Adam's, for the kernels' rounding variables.
        weight_rate: Adam's, for the tri-planes and biases.
        scale_rate: Adam's, for the exponents of the tri-planes' and biases' scales (in
            steps of 2^(1/16)).
        kernel_scale_rate: the same for the Dense kernels' (0: they keep the plain scales).
        evaluate_every: epochs between grid evaluations (default: every epoch).
        extra_bits: ExtraBits of the weights that get more bits (weight_bits).
        scale_weights: float32 arrays in ``model.weights`` order whose plain scales to start
            from (default: the model's own). The packer stores the tri-planes without the nodes
            no voxel reads (vox_tf.packed_model.fine_weights_as_packed), which can give a
            channel another scale: passing those keeps the file's levels the ones judged here.
        bar: a bar of vox_tf.console.progress_bar over ``epochs``, advanced each epoch
            with the fewest wrong voxels so far (default: none).
    Returns:
        dict: wrong_voxels of the plain and of the kept quantization, and the epoch kept.

    Example:
        >>> finetune_quantized(fine, fine_stage_data(voxels, coarse, config), 4, 30, 3e-2, 1e-3,
        ...                    3e-3, 1e-2)
        {'wrong_voxels_plain': 14073, 'wrong_voxels': 4425, 'epoch': 30}
    """
    settings = _settings(model, bits, extra_bits, scale_weights)
    kernels = [layer.kernel for layer in dense_layers(model)]
    # The output kernel keeps rounding to nearest and the rest learn around it: one of its
    # weights half-rounded moves every logit, so the soft-rounded net the loss sees was far
    # from any hard rounding (mgn10_125611494287978_ShirtNoCoat 256^3, 4 bits: soft 8,565
    # wrong voxels, hard 604,152, plain 43,264; with the kernel fixed, hard 22,008 in 6 epochs).
    quantized = [_Rounding(np.asarray(w), *settings[id(w)], learned=w is not kernels[-1])
                 if any(w is kernel for kernel in kernels)
                 else _StraightThrough(np.asarray(w), *settings[id(w)])
                 for w in model.trainable_weights]
    roundings = [q for q in quantized if isinstance(q, _Rounding) and q.learned]
    floats = [q for q in quantized if isinstance(q, _StraightThrough)]
    rounding_variables = [q.variable for q in roundings]
    groups = [(rounding_rate, rounding_variables),
              (weight_rate, [q.variable for q in floats]),
              (scale_rate, [q.scales.exponent for q in floats]),
              (kernel_scale_rate,
               [q.scales.exponent for q in quantized if isinstance(q, _Rounding)])]
    steps = int(data.dataset.cardinality()) * epochs
    warmup = int(ROUNDING_WARMUP * steps)
    push = tf.Variable(0.0, trainable=False)
    sharpness = tf.Variable(ROUNDING_SHARPNESS[0], trainable=False)

    def before_step(done):
        progress = max(0.0, (done - warmup) / max(steps - warmup, 1))
        push.assign(float(done >= warmup))
        sharpness.assign(ROUNDING_SHARPNESS[0]
                         + progress * (ROUNDING_SHARPNESS[1] - ROUNDING_SHARPNESS[0]))

    def penalty():
        undecided = tf.add_n([r.undecided(sharpness) for r in roundings] or [0.0])
        return push * ROUNDING_WEIGHT * undecided

    return _fit(model, data, quantized, groups, epochs, evaluate_every or 1, bar, before_step,
                (penalty, rounding_variables) if roundings else None)


def train_quantized(model, data, bits, epochs, weight_rate, scale_rate,
                    evaluate_every=QAT_EVALUATE_EVERY, extra_bits=DEFAULT_EXTRA_BITS,
                    scale_weights=None, bar=None, checkpoint=None):
    """Trains every weight of ``model`` in the forward pass at its k-bit levels (quantization-
    aware training: straight-through gradients, learned scales); leaves ``model`` holding the
    best k-bit weights judged.

    Unlike :func:`finetune_quantized`, whose kernel weights move by one level at most, the
    weights here can go anywhere, and the net learns around its levels over hundreds of
    epochs; Adam's rate for the weights follows a cosine from ``weight_rate`` to
    QAT_FINAL_RATE of it. Run it first and :func:`finetune_quantized` on its result.
    ``data``'s error focus follows the quantized net's errors, as in training.

    Args:
        model, data, bits, extra_bits, scale_weights, bar: as :func:`finetune_quantized`.
        epochs: passes over data.dataset (0: plain quantization).
        weight_rate: Adam's first rate for every weight.
        scale_rate: Adam's, for the exponents of every tensor's scales.
        evaluate_every: epochs between grid evaluations (and the last epoch).
        checkpoint: a .npz path where the training's state is kept at each evaluation, and
            from which an interrupted call with the same arguments goes on (None: not kept).
            It is removed when the training ends.
    Returns:
        dict: as :func:`finetune_quantized`'s.

    Example:
        >>> train_quantized(fine, fine_stage_data(voxels, coarse, config), 4, 800, 1e-2, 3e-3)
        {'wrong_voxels_plain': 14048, 'wrong_voxels': 2964, 'epoch': 760}
    """
    settings = _settings(model, bits, extra_bits, scale_weights)
    quantized = [_StraightThrough(np.asarray(w), *settings[id(w)])
                 for w in model.trainable_weights]
    # the weights' rate: a function of the epoch (from 0), set as each one starts
    groups = [(cosine_decay(weight_rate, weight_rate * QAT_FINAL_RATE, max(epochs, 1)),
               [q.variable for q in quantized]),
              (scale_rate, [q.scales.exponent for q in quantized])]
    return _fit(model, data, quantized, groups, epochs, evaluate_every, bar, follow_focus=True,
                checkpoint=checkpoint)


def _settings(model, bits, extra_bits, scale_weights):
    """{id(weight): (bits, float32 array whose plain scales it starts from)}."""
    if scale_weights is None:
        scale_weights = [np.asarray(w) for w in model.weights]
    return {id(w): (b, scaled) for w, b, scaled
            in zip(model.weights, weight_bits(model, bits, extra_bits), scale_weights)}


def _fit(model, data, quantized, groups, epochs, every, bar, before_step=None, penalty=None,
         follow_focus=False, checkpoint=None):
    """The loop both fine-tunings share: trains ``groups`` of ``quantized`` (one per
    trainable weight) on the stage's loss, judges the hard weights every ``every`` epochs, and
    leaves ``model`` with the best. ``penalty``: (function giving a scalar, the variables list
    of the one group it is added to the loss for), or None.

    ``groups``: (Adam's rate, or a function of the epoch from 0 giving it; variables) each.
    ``before_step(steps done)`` runs before each step; ``follow_focus``: each judgement
    re-aims data's error focus. ``checkpoint``: a .npz path where the whole state is saved at
    each judgement and resumed from if it exists (removed at the end).
    """
    def judge():
        # the first judgement is the plain file: every weight starts at its nearest level
        for variable, weight in zip(model.trainable_weights, quantized):
            variable.assign(weight.weights(hard=True))
        prediction, metrics = data.judge(model, with_chamfer=False)
        if follow_focus and data.focus is not None:
            data.focus.update(prediction)
        return metrics["wrong_voxels"]

    groups = [(rate, variables) for rate, variables in groups if rate and variables]
    adams = [keras.optimizers.Adam(rate(0) if callable(rate) else rate) for rate, _ in groups]
    for adam, (_, variables) in zip(adams, groups):
        adam.build(variables)
    state = [v for q in quantized for v in (q.variable, q.scales.exponent)]
    state += [v for adam in adams for v in adam.variables]
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        with np.load(checkpoint) as saved:
            for i, variable in enumerate(state):
                variable.assign(saved[f"state{i}"])
            best = [saved[f"best{i}"] for i in range(len(model.weights))]
            start, best_wrong, plain_wrong, best_epoch = saved["progress"].tolist()
        judge()  # the focus as the last judgement left it
        if bar is not None:
            bar.update(start)
    else:
        best_wrong = plain_wrong = judge()
        best, best_epoch = model.get_weights(), 0
    loss_fn = keras.losses.BinaryCrossentropy()

    @tf.function(autograph=False)  # Python conditions on settings only: nothing to convert
    def step(points, labels):
        # The model's layers stay the plain ones the decoder builds: its variables are set to
        # the quantized weights, and the loss gradient there is carried back by hand.
        with tf.GradientTape(persistent=True) as outer:
            weights = [q.weights() for q in quantized]
            with tf.GradientTape() as inner:
                for variable, value in zip(model.trainable_weights, weights):
                    variable.assign(value)
                loss = loss_fn(labels, model(points, training=True))
            gradients = inner.gradient(loss, model.trainable_weights)
            extra = penalty[0]() if penalty is not None else None
        for adam, (_, variables) in zip(adams, groups):
            total = outer.gradient(weights, variables, output_gradients=gradients)
            if extra is not None and variables is penalty[1]:
                total = [g + p for g, p in zip(total, outer.gradient(extra, variables))]
            adam.apply(total, variables)
        return loss

    done = start * int(data.dataset.cardinality())
    for epoch in range(start + 1, epochs + 1):
        for adam, (rate, _) in zip(adams, groups):
            if callable(rate):
                adam.learning_rate.assign(rate(epoch - 1))
        for points, labels in data.dataset:
            if before_step is not None:
                before_step(done)
            step(points, labels)
            done += 1
        if epoch % every == 0 or epoch == epochs:
            wrong = judge()
            if wrong < best_wrong:
                best_wrong, best, best_epoch = wrong, model.get_weights(), epoch
            if checkpoint is not None and epoch < epochs:
                with atomic_output(checkpoint) as tmp:
                    np.savez(tmp, progress=np.array([epoch, best_wrong, plain_wrong, best_epoch]),
                             **{f"state{i}": v.numpy() for i, v in enumerate(state)},
                             **{f"best{i}": w for i, w in enumerate(best)})
        if bar is not None:
            bar.set_postfix({"best wrong voxels": best_wrong}, refresh=False)
            bar.update(1)
    model.set_weights(best)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return {"wrong_voxels_plain": int(plain_wrong), "wrong_voxels": int(best_wrong),
            "epoch": best_epoch}


class _LearnedScales:
    """Per channel an exponent k of a scale 2^(k/16) (LSQ, Esser et al. 2020), started at the
    plain quantization's of ``scale_weights`` and snapped to the file's grid of scales (a
    float16 value for a one-channel tensor, as the file stores it)."""

    def __init__(self, weights, bits, scale_weights):
        self.plain = channel_scales(scale_weights, bits)
        self.single = self.plain.size == 1  # channel_scales gave one float16 scale
        self.exponent = tf.Variable(
            (np.log2(self.plain.astype(np.float64)) * SCALE_STEPS_PER_OCTAVE).astype(np.float32))

    def __call__(self, hard=False):
        """The channels' scales: on the file's grid, with the exponent's gradient unless hard."""
        if self.single:  # a file stores a one-channel tensor's scale as float16, not as k
            smooth = tf.pow(2.0, self.exponent[0] / SCALE_STEPS_PER_OCTAVE)
            snapped = tf.cast(tf.cast(smooth, tf.float16), tf.float32)
        else:
            smooth = tf.pow(2.0, self.exponent / SCALE_STEPS_PER_OCTAVE)
            snapped = tf.pow(2.0, tf.round(self.exponent) / SCALE_STEPS_PER_OCTAVE)
            if hard:  # eager: bit for bit the decoder's scales, which tf.pow can miss by an ulp
                snapped = tf.constant(scales_from_exponents(np.rint(self.exponent.numpy())))
        return snapped if hard else smooth + tf.stop_gradient(snapped - smooth)


class _Rounding:
    """One Dense kernel's learned rounding from the plain quantization's scales of
    ``scale_weights``, which may be learned too."""

    def __init__(self, weights, bits, scale_weights, learned=True):
        self.scales = _LearnedScales(weights, bits, scale_weights)
        ratio = weights / self.scales.plain
        down = np.floor(ratio)
        low, high = ROUNDING_STRETCH
        # h starts at the fraction rounding to nearest would weigh: sigmoid(v) = (f - low) / span
        fraction = np.clip((ratio - down - low) / (high - low), 1e-6, 1 - 1e-6)
        self.down = tf.constant(down, tf.float32)
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
        return tf.clip_by_value(self.down + up, -self.top, self.top) * self.scales(hard)

    def undecided(self, sharpness):
        """AdaRound's regularizer: 0 where every h is 0 or 1."""
        return tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * self.up() - 1.0), sharpness))


class _StraightThrough:
    """One weight trained as a float, rounded to nearest in the forward pass at learned scales
    (:class:`_LearnedScales`). The gradients pass the roundings unchanged; a clipped weight
    gets none and pulls its scale up instead."""

    def __init__(self, weights, bits, scale_weights):
        self.scales = _LearnedScales(weights, bits, scale_weights)
        self.top = float(max_level(bits))
        self.variable = tf.Variable(weights.astype(np.float32))

    def weights(self, hard=False):
        scales = self.scales(hard)
        steps = tf.clip_by_value(self.variable / scales, -self.top, self.top)
        levels = tf.round(steps)
        if hard:  # exactly the decoder's level x scale (the straight-through sum is off by ulps)
            return levels * scales
        return (steps + tf.stop_gradient(levels - steps)) * scales
