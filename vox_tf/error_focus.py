"""Training that dwells on the voxels the network gets wrong (the fine stage's ``focus``)."""

import numpy as np
import tensorflow as tf
from scipy import ndimage


class ErrorFocus:
    """The voxels a network gets wrong, for its training epochs to dwell on.

    :meth:`update` takes a reconstruction (after each grid evaluation); the wrong voxels inside
    the mask and their 26-neighbours become the focus set. Each epoch of a
    vox_tf.sampling.SampleSet.dataset built with this object then draws ``fraction`` of its samples
    uniformly from that set, in place of as many of its regular samples picked at random, so an
    epoch keeps its length and cost. Before the first update, and while nothing is wrong, the
    epochs are the plain ones. The set lives in tf.Variables, so the running input pipeline
    sees each update without being rebuilt. It is not part of the resume checkpoint: a resumed
    stage samples plainly until its next evaluation.

    Why: at 256^3 most of an epoch is voxels the network already classifies right. Measured on
    thingi32_64444 (fine net 64:relu x3, PE L=9, 30 epochs, cosine 1e-2, evaluation every 10):
    wrong voxels 2,910 without focus; 2,266 / 2,128 / 2,426 with fraction 0.25 / 0.5 / 0.75;
    7,629 with fraction 0.5 on the wrong voxels alone (no neighbours): the neighbours matter.

    Args:
        fraction: share of each epoch drawn from the focus set, in (0, 1).
        target: bool [R, R, R] ground truth (the labels of the focus voxels).
        mask: bool [R, R, R] where the network answers; None for everywhere.

    Example:
        >>> focus = ErrorFocus(0.5, target, mask)
        >>> dataset = fine_samples(voxels, mask).dataset(2048, seed=0, focus=focus)
        >>> focus.update(prediction)  # voxels in the focus set
        1539
    """

    def __init__(self, fraction, target, mask=None):
        if not 0 < fraction < 1:
            raise ValueError(f"focus fraction must be in (0, 1), got {fraction}")
        self.fraction = float(fraction)
        self.target = np.asarray(target, bool)
        self.mask = None if mask is None else np.asarray(mask, bool)
        # One placeholder element, so that a draw is well defined before the first update.
        self.voxels = tf.Variable(tf.zeros([1], tf.int32), shape=tf.TensorShape([None]), trainable=False)
        self.labels = tf.Variable(tf.zeros([1], tf.bool), shape=tf.TensorShape([None]), trainable=False)
        self.active = tf.Variable(False, trainable=False)

    def reset(self):
        """Back to plain epochs (e.g. before another network trains on the same dataset)."""
        self.active.assign(False)

    def update(self, prediction):
        """Focuses on where bool [R, R, R] ``prediction`` differs from the target; returns the
        number of voxels in the focus set (0: plain epochs)."""
        near = np.asarray(prediction, bool) != self.target
        if self.mask is not None:
            near &= self.mask
        if not near.any():
            self.reset()
            return 0
        near = ndimage.binary_dilation(near, structure=np.ones((3, 3, 3), bool))
        if self.mask is not None:
            near &= self.mask
        flat = np.flatnonzero(near).astype(np.int32)
        self.voxels.assign(flat)
        self.labels.assign(self.target.reshape(-1)[flat])
        self.active.assign(True)
        return len(flat)

    def draw(self, order, seed):
        """An epoch's sample ids: ``order`` with its tail replaced by focus draws (ids -1 - k
        for the focus set's k-th voxel), reshuffled."""
        def focused():
            total = tf.size(order, out_type=order.dtype)
            count = tf.cast(tf.cast(total, tf.float64) * self.fraction, order.dtype)
            picks = tf.random.stateless_uniform([count], tf.stack([seed, 1]), 0,
                                                tf.size(self.voxels), dtype=tf.int32)
            ids = tf.concat([order[:total - count], -1 - tf.cast(picks, order.dtype)], 0)
            return tf.random.experimental.stateless_shuffle(ids, seed=tf.stack([seed, 2]))

        return tf.cond(self.active, focused, lambda: order)

    def substitute(self, ids, flat, labels):
        """(flat voxel numbers, labels) with the focus draws among ``ids`` looked up."""
        drawn = ids < 0
        # Clamped: a draw made just before an update may point past a smaller new set.
        picks = tf.minimum(tf.cast(tf.maximum(-1 - ids, 0), tf.int32), tf.size(self.voxels) - 1)
        return (tf.where(drawn, tf.gather(self.voxels, picks), flat),
                tf.where(drawn, tf.gather(self.labels, picks), labels))
