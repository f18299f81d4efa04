"""PositionalEncoding and TriPlaneEncoding against NumPy references, under XLA, and after saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vox_tf.layers import PositionalEncoding, TriPlaneEncoding


def positional_reference(points, levels, include_input):
    parts = [points] if include_input else []
    for k in range(levels):
        parts += [np.sin(2.0 ** k * points), np.cos(2.0 ** k * points)]
    return np.concatenate(parts, axis=1)


def triplane_reference(planes, points):
    """Bilinear lookup written the slow, obvious way: align_corners, border clamping."""
    resolution = planes.shape[1] - 1
    out = []
    for p in points:
        features = []
        for plane, (a, b) in zip(planes, [(0, 1), (1, 2), (0, 2)]):
            u = np.clip((p[a] + 1) / 2 * resolution, 0, resolution)
            v = np.clip((p[b] + 1) / 2 * resolution, 0, resolution)
            i0, j0 = int(np.floor(u)), int(np.floor(v))
            i1, j1 = min(i0 + 1, resolution), min(j0 + 1, resolution)
            tu, tv = u - i0, v - j0
            features.append((1 - tu) * (1 - tv) * plane[i0, j0] + (1 - tu) * tv * plane[i0, j1]
                            + tu * (1 - tv) * plane[i1, j0] + tu * tv * plane[i1, j1])
        out.append(np.concatenate(features))
    return np.array(out)


def sample_points(rng, n=300):
    # Inside, exactly on nodes, on the borders and corners, and outside [-1, 1] (clamped).
    inside = rng.uniform(-1, 1, (n, 3))
    nodes = rng.integers(0, 5, (20, 3)) / 4 * 2 - 1
    borders = np.array([[-1, -1, -1], [1, 1, 1], [1, -1, 0.3], [-1, 0.5, 1], [0.999999, 1, -0.999999]])
    outside = rng.uniform(-3, 3, (40, 3))
    return np.concatenate([inside, nodes, borders, outside]).astype(np.float32)


@pytest.mark.parametrize("levels, include_input", [(6, True), (3, False), (0, True)])
def test_positional_encoding_matches_numpy(levels, include_input):
    points = sample_points(np.random.default_rng(0))
    layer = PositionalEncoding(levels, include_input)
    out = layer(points).numpy()
    assert out.shape == (len(points), layer.output_features())
    np.testing.assert_allclose(out, positional_reference(points, levels, include_input), atol=2e-6)


def test_positional_encoding_default_has_39_features():
    assert PositionalEncoding().output_features() == 39


def test_triplane_matches_numpy_on_borders_and_outside():
    points = sample_points(np.random.default_rng(1))
    layer = TriPlaneEncoding(resolution=4, channels=3)
    layer.build((None, 3))
    planes = np.random.default_rng(2).normal(size=layer.planes.shape).astype(np.float32)
    layer.planes.assign(planes)
    np.testing.assert_allclose(layer(points).numpy(), triplane_reference(planes, points), atol=1e-5)


def test_triplane_hits_corner_nodes_exactly():
    layer = TriPlaneEncoding(resolution=2, channels=1)
    layer.build((None, 3))
    planes = np.arange(27, dtype=np.float32).reshape(3, 3, 3, 1)
    layer.planes.assign(planes)
    out = layer(np.array([[-1, -1, -1], [1, 1, 1], [5, -5, 0]], np.float32)).numpy()
    np.testing.assert_array_equal(out[0], [planes[0, 0, 0, 0], planes[1, 0, 0, 0], planes[2, 0, 0, 0]])
    np.testing.assert_array_equal(out[1], [planes[0, 2, 2, 0], planes[1, 2, 2, 0], planes[2, 2, 2, 0]])
    # (5, -5, 0) clamps to (1, -1, 0): xy -> [2, 0], yz -> [0, 1], xz -> [2, 1]
    np.testing.assert_array_equal(out[2], [planes[0, 2, 0, 0], planes[1, 0, 1, 0], planes[2, 2, 1, 0]])


def test_triplane_initialisation_and_trainability():
    layer = TriPlaneEncoding()
    layer.build((None, 3))
    planes = layer.planes.numpy()
    assert planes.shape == (3, 33, 33, 2) and layer.planes.trainable
    assert 0.008 < planes.std() < 0.012 and abs(planes.mean()) < 0.002


def test_triplane_gradients_reach_the_planes():
    layer = TriPlaneEncoding(resolution=4, channels=2)
    points = tf.constant(sample_points(np.random.default_rng(3), 50))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(points) ** 2)
    grad = tape.gradient(loss, layer.planes)
    assert grad is not None and np.count_nonzero(tf.convert_to_tensor(grad).numpy()) > 0


def test_layers_compile_with_xla():
    points = tf.constant(sample_points(np.random.default_rng(4)))
    for layer in (PositionalEncoding(), TriPlaneEncoding(resolution=8)):
        eager = layer(points).numpy()
        compiled = tf.function(layer.__call__, jit_compile=True)(points).numpy()
        np.testing.assert_allclose(compiled, eager, atol=1e-5)


def test_config_round_trip():
    for layer in (PositionalEncoding(levels=4, include_input=False), TriPlaneEncoding(16, 3)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    assert keras.saving.get_registered_name(TriPlaneEncoding) == "vox_tf>TriPlaneEncoding"


def test_saved_keras_model_reloads_identical(tmp_path):
    points = keras.Input((3,))
    features = keras.layers.Concatenate()([PositionalEncoding(2)(points), TriPlaneEncoding(4, 2)(points)])
    model = keras.Model(points, keras.layers.Dense(1)(features))
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = sample_points(np.random.default_rng(5))
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        TriPlaneEncoding(resolution=0)
    with pytest.raises(ValueError):
        PositionalEncoding(levels=-1)
