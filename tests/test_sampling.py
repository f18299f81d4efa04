"""The training sets of both stages follow METHOD.md's counting rules, on grids counted by hand."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

from vox_tf.grid import VoxelGrid, indices_from_dense, points_to_indices, voxel_centers
from vox_tf.sampling import (as_voxel_grid, coarse_grid, coarse_samples, fine_samples, grid_points,
                             upsample_mask)


def block_grid(resolution, lo, hi):
    """VoxelGrid whose occupied voxels are the box [lo, hi)^3."""
    dense = np.zeros((resolution,) * 3, bool)
    dense[lo:hi, lo:hi, lo:hi] = True
    return VoxelGrid(resolution, indices_from_dense(dense))


def epoch_counts(dataset, resolution):
    """One pass -> (Counter {voxel index tuple: times seen}, {voxel: label}, order of voxels)."""
    seen, labels, order = collections.Counter(), {}, []
    for points, batch_labels in dataset:
        indices = points_to_indices(points.numpy(), resolution)
        for index, label in zip(map(tuple, indices), batch_labels.numpy()[:, 0]):
            seen[index] += 1
            labels[index] = label
            order.append(index)
    return seen, labels, order


def test_coarse_counts_follow_method_formula():
    # A 4^3 block in a 32^3 grid: inner boundary 4^3 - 2^3 = 56, outer 6^3 - 4^3 = 152.
    voxels = block_grid(32, 10, 14)
    boundary, rest = 56 + 152, 32**3 - (56 + 152)
    repeats = math.ceil(rest / boundary)
    assert coarse_samples(voxels).counts() == {
        "repeated": boundary, "once": rest, "repeats": repeats,
        "samples": rest + repeats * boundary}

    seen, labels, _ = epoch_counts(coarse_samples(voxels).dataset(batch_size=8192, seed=0), 32)
    assert len(seen) == 32**3  # every coarse voxel
    assert sum(seen.values()) == rest + repeats * boundary
    assert seen[(10, 10, 10)] == repeats and seen[(9, 9, 9)] == repeats  # inner, outer
    assert seen[(12, 12, 12)] == 1 and seen[(0, 0, 0)] == 1  # inside, outside
    assert labels[(11, 12, 13)] == 1.0 and labels[(9, 12, 12)] == 0.0


def test_coarse_grid_max_pools_multiples_of_32():
    dense = np.random.default_rng(0).random((64, 64, 64)) > 0.999
    pooled = dense.reshape(32, 2, 32, 2, 32, 2).any(axis=(1, 3, 5))
    np.testing.assert_array_equal(coarse_grid(VoxelGrid(64, indices_from_dense(dense))), pooled)


def test_coarse_stage_below_32_stays_at_its_resolution():
    voxels = block_grid(16, 3, 9)
    np.testing.assert_array_equal(coarse_grid(voxels), voxels.dense())
    # 6^3 block: inner 6^3 - 4^3 = 152, outer 8^3 - 6^3 = 296.
    assert coarse_samples(voxels).counts()["repeated"] == 152 + 296


def test_coarse_grid_of_other_resolutions_covers_every_voxel():
    # 48 is no multiple of 32: the pooled grid, upsampled back, must still hold every voxel.
    dense = np.random.default_rng(1).random((48, 48, 48)) > 0.995
    pooled = coarse_grid(VoxelGrid(48, indices_from_dense(dense)))
    assert pooled.shape == (32, 32, 32)
    assert not (dense & ~upsample_mask(pooled, 48)).any()


def test_upsample_mask_is_nearest():
    coarse = np.random.default_rng(2).random((32, 32, 32)) > 0.5
    expected = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    np.testing.assert_array_equal(upsample_mask(coarse, 64), expected)


def test_fine_counts_follow_method_formula_and_cover_the_mask():
    # Occupied block [6, 10)^3 in 16^3; mask = x < 8, so kernel = [6, 8) x [6, 10)^2 (32 voxels),
    # support = its dilation [5, 9) x [5, 11)^2 (144 voxels, 36 of them at x = 8 outside the
    # mask), non-support = 8 * 16 * 16 mask voxels minus the 108 support voxels inside it.
    voxels = block_grid(16, 6, 10)
    mask = np.zeros((16,) * 3, bool)
    mask[:8] = True
    support, rest = 144, 8 * 16 * 16 - 108
    repeats = math.ceil(rest / support)
    assert fine_samples(voxels, mask).counts() == {
        "repeated": support, "once": rest, "repeats": repeats,
        "samples": rest + repeats * support}

    seen, labels, _ = epoch_counts(fine_samples(voxels, mask).dataset(batch_size=1000, seed=3), 16)
    assert set(map(tuple, np.argwhere(mask))) <= set(seen)
    assert sum(seen.values()) == rest + repeats * support
    assert seen[(7, 9, 9)] == repeats and seen[(5, 5, 5)] == repeats  # kernel, its boundary
    assert seen[(8, 8, 8)] == repeats and labels[(8, 8, 8)] == 1.0  # support beyond the mask
    assert seen[(0, 0, 0)] == 1 and (9, 9, 9) not in seen
    occupied = voxels.dense()
    assert all(labels[index] == occupied[index] for index in seen)


def test_reshuffling_changes_order_not_content():
    dataset = coarse_samples(block_grid(32, 4, 20)).dataset(batch_size=4096, seed=7)
    first, _, first_order = epoch_counts(dataset, 32)
    second, _, second_order = epoch_counts(dataset, 32)
    assert first == second
    assert first_order != second_order
    # The same seed gives the same sequence of epochs.
    again_dataset = coarse_samples(block_grid(32, 4, 20)).dataset(batch_size=4096, seed=7)
    _, _, again = epoch_counts(again_dataset, 32)
    assert again == first_order


def test_batches_have_the_shapes_keras_expects():
    dataset = coarse_samples(block_grid(32, 4, 20)).dataset(batch_size=1000)
    points_spec, labels_spec = dataset.element_spec
    assert points_spec.dtype == tf.float32 and points_spec.shape.as_list() == [None, 3]
    assert labels_spec.dtype == tf.float32 and labels_spec.shape.as_list() == [None, 1]
    assert [len(p) for p, _ in dataset][0] == 1000


def test_training_and_reconstruction_streams_run_without_the_autotune_thread():
    # Keras makes an iterator per epoch and per reconstruction, and tearing one down waits out
    # that thread's sleep: seconds of two idle cores (vox_tf.sampling.without_autotune).
    training = coarse_samples(block_grid(32, 4, 20)).dataset(batch_size=1000)
    for dataset in (training, grid_points(16)):
        assert dataset.options().autotune.enabled is False


@pytest.mark.parametrize("resolution", [16, 48, 64])
def test_index_center_index_round_trip(resolution):
    indices = np.argwhere(np.ones((resolution,) * 3, bool)).astype(np.int32)
    points = np.concatenate([p.numpy() for p, _ in grid_points(resolution, batch_size=5000)])
    np.testing.assert_array_equal(points, voxel_centers(indices, resolution))
    np.testing.assert_array_equal(points_to_indices(points, resolution), indices)


def test_grid_points_cover_the_mask_once_in_order():
    mask = np.random.default_rng(4).random((32, 32, 32)) > 0.7
    batches = list(grid_points(32, mask, batch_size=999))
    indices = np.concatenate([i.numpy() for _, i in batches])
    np.testing.assert_array_equal(indices, np.argwhere(mask))
    assert all(i.dtype == tf.int32 for _, i in batches)


def test_inputs_from_npz_and_dataset_example(tmp_path):
    voxels = block_grid(32, 10, 14)
    voxels.save(tmp_path / "block.npz")
    example = {"resolution": np.int32(32), "indices": voxels.indices.astype(np.uint8),
               "name": b"block"}
    expected = coarse_samples(voxels).counts()
    assert coarse_samples(tmp_path / "block.npz").counts() == expected
    assert coarse_samples(example).counts() == expected
    assert as_voxel_grid(example).source == "block"


def test_fine_mask_of_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="mask"):
        fine_samples(block_grid(16, 2, 4), np.ones((8, 8, 8), bool))
