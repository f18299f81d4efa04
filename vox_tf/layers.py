"""The two input encodings of METHOD.md as Keras 3 layers: positional and tri-plane.

Both are pure TensorFlow ops (no Python control flow on values), so they compile under
``jit_compile=True`` and run on a GPU, and both serialize with a saved ``.keras`` model.
"""

import keras
import tensorflow as tf

PLANE_AXES = ((0, 1), (1, 2), (0, 2))
"""Coordinate axes of the xy, yz and xz planes, in the order their features are concatenated."""


@keras.saving.register_keras_serializable(package="vox_tf")
class PositionalEncoding(keras.layers.Layer):
    """Points -> [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)].

    No factor pi (METHOD.md). Each sin/cos group holds the three axes x, y, z.

    Args:
        levels: L, number of frequencies 2^0 .. 2^(L-1).
        include_input: put the point itself first.
    Input float32 [B, 3] -> output float32 [B, 3 * (2 L + include_input)] (39 for the defaults).

    Example:
        >>> PositionalEncoding(levels=1)(tf.zeros([2, 3])).numpy()[0]
        array([0., 0., 0., 0., 0., 0., 1., 1., 1.], dtype=float32)
    """

    def __init__(self, levels=6, include_input=True, **kwargs):
        super().__init__(**kwargs)
        if int(levels) != levels or levels < 0:
            raise ValueError(f"levels must be a non-negative integer, got {levels}")
        if levels == 0 and not include_input:
            raise ValueError("PositionalEncoding with levels=0 and include_input=False is empty")
        self.levels = int(levels)
        self.include_input = bool(include_input)

    def output_features(self, input_features=3):
        return input_features * (2 * self.levels + int(self.include_input))

    def call(self, points):
        points = tf.convert_to_tensor(points, self.compute_dtype)
        parts = [points] if self.include_input else []
        for level in range(self.levels):
            scaled = points * (2.0 ** level)
            parts += [tf.sin(scaled), tf.cos(scaled)]
        return tf.concat(parts, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_features(input_shape[-1]))

    def get_config(self):
        return {**super().get_config(), "levels": self.levels, "include_input": self.include_input}


@keras.saving.register_keras_serializable(package="vox_tf")
class TriPlaneEncoding(keras.layers.Layer):
    """Points -> bilinear samples of three learned feature planes (xy, yz, xz), concatenated.

    Each plane is a (resolution + 1) x (resolution + 1) lattice of ``channels`` features whose
    corner nodes sit exactly at -1 and 1 (the ``align_corners=True`` convention); a coordinate
    outside [-1, 1] is clamped to the border. Planes start as N(0, 0.01^2) and are trainable.

    Args:
        resolution: lattice cells per side (32 in METHOD.md).
        channels: C, features per plane.
    Input float32 [B, 3] -> output float32 [B, 3 C] ordered xy, yz, xz.
    Weights: ``planes`` float32 [3, resolution + 1, resolution + 1, C]; ``planes[p, i, j]`` is
    the node at (-1 + 2 i / resolution, -1 + 2 j / resolution) along plane p's two axes.

    Example:
        >>> layer = TriPlaneEncoding(resolution=4, channels=2)
        >>> layer(tf.zeros([5, 3])).shape
        TensorShape([5, 6])
    """

    def __init__(self, resolution=32, channels=2, **kwargs):
        super().__init__(**kwargs)
        if int(resolution) != resolution or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution}")
        if int(channels) != channels or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels}")
        self.resolution = int(resolution)
        self.channels = int(channels)

    def build(self, input_shape):
        side = self.resolution + 1
        self.planes = self.add_weight(
            name="planes", shape=(len(PLANE_AXES), side, side, self.channels),
            initializer=keras.initializers.RandomNormal(stddev=0.01), trainable=True)

    def output_features(self):
        return len(PLANE_AXES) * self.channels

    def call(self, points):
        points = tf.convert_to_tensor(points, self.compute_dtype)
        side = self.resolution + 1
        # Continuous lattice coordinate in [0, resolution]; the lower node is clamped to
        # resolution - 1 so the border value is reached with weight 1, not by reading past it.
        lattice = tf.clip_by_value((points + 1.0) * (0.5 * self.resolution), 0.0, float(self.resolution))
        lower = tf.minimum(tf.floor(lattice), float(self.resolution - 1))
        frac = lattice - lower
        lower = tf.cast(lower, tf.int32)

        first = tf.stack([lower[:, a] for a, _ in PLANE_AXES], axis=1)    # [B, 3]
        second = tf.stack([lower[:, b] for _, b in PLANE_AXES], axis=1)
        t_first = tf.stack([frac[:, a] for a, _ in PLANE_AXES], axis=1)   # [B, 3]
        t_second = tf.stack([frac[:, b] for _, b in PLANE_AXES], axis=1)

        # One gather over all planes: flat node index = (plane * side + i) * side + j.
        plane_offset = tf.range(len(PLANE_AXES), dtype=tf.int32) * side * side
        base = plane_offset[None, :] + first * side + second               # [B, 3]
        corners = tf.stack([base, base + 1, base + side, base + side + 1], axis=-1)  # [B, 3, 4]
        weights = tf.stack([(1 - t_first) * (1 - t_second), (1 - t_first) * t_second,
                            t_first * (1 - t_second), t_first * t_second], axis=-1)   # [B, 3, 4]
        nodes = tf.reshape(self.planes, [-1, self.channels])
        values = tf.gather(nodes, corners)                                  # [B, 3, 4, C]
        features = tf.reduce_sum(values * weights[..., None], axis=2)       # [B, 3, C]
        return tf.reshape(features, [-1, self.output_features()])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_features())

    def get_config(self):
        return {**super().get_config(), "resolution": self.resolution, "channels": self.channels}
