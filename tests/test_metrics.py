"""Reconstruction metrics on hand-made grids, and model sizes."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from vox_tf import metrics
from vox_tf.grid import voxel_centers
from vox_tf.models import build_occupancy_model


def grid(resolution, *indices):
    g = np.zeros((resolution,) * 3, bool)
    for i in indices:
        g[i] = True
    return g


def brute_force_chamfer(pred, gt):
    a = voxel_centers(np.argwhere(pred), pred.shape[0]).astype(np.float64)
    b = voxel_centers(np.argwhere(gt), gt.shape[0]).astype(np.float64)
    d = cdist(a, b, "sqeuclidean")
    return d.min(axis=1).mean() + d.min(axis=0).mean()


def test_confusion_based_metrics_use_standard_definitions():
    gt = grid(4, (0, 0, 0), (0, 0, 1), (0, 0, 2), (1, 1, 1))
    pred = grid(4, (0, 0, 0), (0, 0, 1), (3, 3, 3))
    # TP 2, FP 1 (3,3,3), FN 2 ((0,0,2), (1,1,1)), TN 59
    m = metrics.grid_metrics(pred, gt)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"], m["true_negatives"]) == (2, 1, 2, 59)
    assert m["wrong_voxels"] == 3
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["accuracy"] == pytest.approx(61 / 64)
    assert m["precision"] == pytest.approx(2 / 3)   # swapping fp/fn (the reference's slip) gives 2/4
    assert m["recall"] == pytest.approx(2 / 4)


def test_perfect_and_empty_cases():
    g = grid(8, (1, 2, 3), (4, 4, 4))
    empty = np.zeros_like(g)
    for key in ("iou", "accuracy", "precision", "recall"):
        assert metrics.grid_metrics(g, g)[key] == 1.0
        assert metrics.grid_metrics(empty, empty)[key] == 1.0
    assert metrics.chamfer_l2(g, g) == 0.0 and metrics.chamfer_l2(empty, empty) == 0.0
    assert metrics.chamfer_l2(empty, g) == float("inf") == metrics.chamfer_l2(g, empty)
    assert metrics.precision(empty, g) == 0.0 and metrics.recall(g, empty) == 0.0
    assert metrics.iou(empty, g) == 0.0


def test_chamfer_by_hand():
    # One voxel each, one voxel apart at R = 4: voxel size 0.5 -> 0.25 each way.
    assert metrics.chamfer_l2(grid(4, (0, 0, 0)), grid(4, (1, 0, 0))) == pytest.approx(0.5)
    # pred {a, b}, gt {a}: pred->gt mean (0 + 0.25) / 2, gt->pred 0.
    assert metrics.chamfer_l2(grid(4, (0, 0, 0), (0, 1, 0)), grid(4, (0, 0, 0))) == pytest.approx(0.125)


@pytest.mark.parametrize("seed", range(4))
def test_chamfer_matches_brute_force_on_random_solids(seed):
    rng = np.random.default_rng(seed)
    # Blobby solids so the boundary shortcut (querying only disagreeing voxels) is exercised.
    x = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"), -1)
    gt = np.linalg.norm(x - rng.uniform(-0.3, 0.3, 3), axis=-1) < rng.uniform(0.4, 0.8)
    pred = gt ^ (rng.random(gt.shape) < 0.03)
    assert metrics.chamfer_l2(pred, gt) == pytest.approx(brute_force_chamfer(pred, gt), rel=1e-9)


def test_chamfer_chunks_queries(monkeypatch):
    rng = np.random.default_rng(9)
    pred, gt = rng.random((12, 12, 12)) < 0.2, rng.random((12, 12, 12)) < 0.2
    expected = metrics.chamfer_l2(pred, gt)
    monkeypatch.setattr(metrics, "CHAMFER_CHUNK", 7)
    assert metrics.chamfer_l2(pred, gt) == pytest.approx(expected, rel=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        metrics.iou(np.zeros((4, 4, 4), bool), np.zeros((8, 8, 8), bool))


def test_sizes_in_parameters_and_bytes():
    model = build_occupancy_model("8:relu", positional_levels=None, triplane=None)
    assert metrics.parameter_count(model) == 41          # 3*8 + 8 + 8*1 + 1
    assert metrics.storage_bytes(model) == 164
    assert metrics.storage_bytes(model, "float16") == 82
    assert metrics.storage_bytes(model, "int8") == 41 + 4 * 4   # plus a float32 scale per tensor
    assert metrics.storage_bytes([model, model]) == 328
    with pytest.raises(ValueError):
        metrics.storage_bytes(model, "float64")
