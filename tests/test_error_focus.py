"""Error-focused fine epochs: same length, part of them drawn from the wrong voxels' neighbourhood."""

import numpy as np
import pytest

from tests.test_sampling import block_grid, epoch_counts
from vox_tf.error_focus import ErrorFocus
from vox_tf.sampling import fine_samples


def focus_setup(fraction=0.5):
    voxels = block_grid(16, 6, 10)
    mask = np.zeros((16,) * 3, bool)
    mask[:12] = True
    focus = ErrorFocus(fraction, voxels.dense(), mask)
    return voxels, mask, focus


def test_focus_set_is_the_wrong_voxels_and_their_neighbours_inside_the_mask():
    voxels, mask, focus = focus_setup()
    prediction = voxels.dense().copy()
    prediction[6, 6, 6] = False  # a missed voxel
    prediction[11, 0, 0] = True  # a false one on the mask's edge: x = 12 is outside the mask
    assert focus.update(prediction) == 27 + 2 * 2 * 2
    flat = focus.voxels.numpy()
    chosen = set(zip(*(axis.tolist() for axis in np.unravel_index(flat, (16,) * 3))))
    assert (5, 5, 5) in chosen and (7, 7, 7) in chosen and (10, 1, 1) in chosen
    assert (12, 0, 0) not in chosen
    np.testing.assert_array_equal(focus.labels.numpy(), voxels.dense().reshape(-1)[flat])
    assert focus.update(voxels.dense()) == 0  # nothing wrong: plain epochs again
    assert not focus.active.numpy()


def test_focused_epoch_keeps_its_length_and_draws_its_share_from_the_focus_set():
    voxels, mask, focus = focus_setup(0.5)
    plain = fine_samples(voxels, mask).dataset(batch_size=500, seed=1)
    focused = fine_samples(voxels, mask).dataset(batch_size=500, seed=1, focus=focus)
    plain_seen, _, plain_order = epoch_counts(plain, 16)
    # Before any evaluation a focused dataset gives the plain epochs.
    seen, _, order = epoch_counts(focused, 16)
    assert order == plain_order

    prediction = voxels.dense().copy()
    prediction[0, 0, 0] = True  # one false voxel in a corner: its neighbourhood is 8 voxels
    focus.update(prediction)
    seen, labels, _ = epoch_counts(focused, 16)
    total = sum(plain_seen.values())
    assert sum(seen.values()) == total
    corner = [(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    drawn = sum(seen[v] for v in corner) - sum(plain_seen[v] for v in corner)
    assert drawn == pytest.approx(total // 2, rel=0.1)
    assert all(labels[v] == 0.0 for v in corner)

    focus.reset()
    seen, _, _ = epoch_counts(focused, 16)
    assert sum(seen[v] for v in corner) <= sum(plain_seen[v] for v in corner) + 8


def test_focus_fraction_must_be_a_share():
    with pytest.raises(ValueError, match="focus fraction"):
        ErrorFocus(1.0, np.zeros((8,) * 3, bool))
