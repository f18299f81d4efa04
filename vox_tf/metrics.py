"""Reconstruction quality and model size (METHOD.md "Metrics"), in NumPy and SciPy.

Grids are bool [R, R, R] occupancies on the grid of vox_tf.grid, thresholded already.
Ratios whose denominator is zero (IoU of two empty grids, precision with nothing predicted,
recall with nothing to find) are 1.0 when prediction and ground truth agree exactly and 0.0
otherwise, so a perfect reconstruction always scores 1.
"""

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from vox_tf.grid import voxel_centers

CHAMFER_CHUNK = 1 << 20
"""Points per KD-tree query: bounds the distance arrays to a few MiB whatever the grid."""

BYTES_PER_PARAMETER = {"float32": 4, "float16": 2, "int8": 1}


def confusion_counts(pred, gt):
    """bool grids -> dict of voxel counts true_positives, false_positives, false_negatives, true_negatives.

    Example:
        >>> confusion_counts(np.array([1, 1, 0], bool), np.array([1, 0, 1], bool))["false_positives"]
        1
    """
    pred, gt = _as_bool_pair(pred, gt)
    tp = int(np.count_nonzero(pred & gt))
    predicted, actual = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    return {"true_positives": tp, "false_positives": predicted - tp,
            "false_negatives": actual - tp, "true_negatives": pred.size - predicted - actual + tp}


def _ratio(numerator, denominator, agree):
    if denominator == 0:
        return 1.0 if agree else 0.0
    return numerator / denominator


def iou(pred, gt):
    """|pred AND gt| / |pred OR gt|."""
    c = confusion_counts(pred, gt)
    wrong = c["false_positives"] + c["false_negatives"]
    return _ratio(c["true_positives"], c["true_positives"] + wrong, wrong == 0)


def accuracy(pred, gt):
    """Fraction of voxels classified correctly."""
    c = confusion_counts(pred, gt)
    return (c["true_positives"] + c["true_negatives"]) / np.asarray(pred).size


def precision(pred, gt):
    """TP / (TP + FP): the fraction of predicted voxels that are occupied."""
    c = confusion_counts(pred, gt)
    return _ratio(c["true_positives"], c["true_positives"] + c["false_positives"],
                  c["false_negatives"] == 0)


def recall(pred, gt):
    """TP / (TP + FN): the fraction of occupied voxels that are predicted."""
    c = confusion_counts(pred, gt)
    return _ratio(c["true_positives"], c["true_positives"] + c["false_negatives"],
                  c["false_positives"] == 0)


def chamfer_l2(pred, gt):
    """L2 chamfer distance between the occupied voxel centres of two grids (coordinates in [-1, 1]).

    mean over pred of the squared distance to the nearest gt centre, plus the same from gt to
    pred. 0.0 when both grids are empty; inf when exactly one is (no nearest neighbour exists).

    Exact, but only the disagreeing voxels are queried, against a KD-tree of the other grid's
    6-connected boundary: a voxel that both grids hold contributes 0, and the nearest occupied
    voxel to an empty one always has an empty face neighbour (a step from it towards the query
    would otherwise be closer). That keeps 512^3 solids within memory; queries go in chunks
    of CHAMFER_CHUNK points.

    Example:
        >>> a = np.zeros((4, 4, 4), bool); a[0, 0, 0] = True
        >>> b = np.zeros((4, 4, 4), bool); b[1, 0, 0] = True
        >>> chamfer_l2(a, b)  # voxel size 0.5: 0.25 each way
        0.5
    """
    pred, gt = _as_bool_pair(pred, gt)
    if pred.ndim != 3 or len(set(pred.shape)) != 1:
        raise ValueError(f"chamfer_l2 needs cubic [R, R, R] grids, got {pred.shape}")
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_pred == 0 and n_gt == 0:
        return 0.0
    if n_pred == 0 or n_gt == 0:
        return float("inf")
    resolution = pred.shape[0]
    to_gt = _sum_squared_nearest(pred & ~gt, _face_boundary(gt), resolution)
    to_pred = _sum_squared_nearest(gt & ~pred, _face_boundary(pred), resolution)
    return float(to_gt / n_pred + to_pred / n_gt)


def _face_boundary(grid):
    """Occupied voxels with an empty 6-neighbour (outside the grid counts as empty)."""
    interior = ndimage.binary_erosion(grid, ndimage.generate_binary_structure(3, 1), border_value=0)
    return grid & ~interior


def _sum_squared_nearest(queries, targets, resolution):
    query_indices = np.argwhere(queries)
    if len(query_indices) == 0:
        return 0.0
    tree = cKDTree(voxel_centers(np.argwhere(targets), resolution))
    total = 0.0
    for start in range(0, len(query_indices), CHAMFER_CHUNK):
        points = voxel_centers(query_indices[start:start + CHAMFER_CHUNK], resolution)
        distances, _ = tree.query(points, k=1)
        total += float(np.sum(np.square(distances)))
    return total


def grid_metrics(pred, gt, with_chamfer=True):
    """All reconstruction metrics of METHOD.md for one pair of grids.

    Returns:
        dict: iou, accuracy, precision, recall, chamfer_l2 (if with_chamfer), the four
        confusion counts and wrong_voxels (FP + FN) as plain Python numbers.

    Example:
        >>> g = np.ones((8, 8, 8), bool)
        >>> grid_metrics(g, g)["iou"], grid_metrics(g, g)["wrong_voxels"]
        (1.0, 0)
    """
    pred, gt = _as_bool_pair(pred, gt)
    counts = confusion_counts(pred, gt)
    metrics = {"iou": iou(pred, gt), "accuracy": accuracy(pred, gt),
               "precision": precision(pred, gt), "recall": recall(pred, gt)}
    if with_chamfer:
        metrics["chamfer_l2"] = chamfer_l2(pred, gt)
    return {**metrics, **counts,
            "wrong_voxels": counts["false_positives"] + counts["false_negatives"]}


def _as_bool_pair(pred, gt):
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return pred, gt


def parameter_count(models):
    """Trainable parameters of one Keras model or of several (MLP weights and tri-plane planes).

    Example:
        >>> parameter_count(build_occupancy_model("8:relu", positional_levels=None, triplane=None))
        41
    """
    models = models if isinstance(models, (list, tuple)) else [models]
    return int(sum(np.prod(w.shape) for m in models for w in m.trainable_weights))


def storage_bytes(models, precision="float32"):
    """Bytes needed to store the parameters at ``precision`` (float32, float16 or int8).

    int8 assumes per-tensor symmetric quantization: one byte per parameter plus one float32
    scale per weight tensor. No container overhead is counted.

    Example:
        >>> storage_bytes(build_occupancy_model("8:relu", positional_levels=None, triplane=None), "int8")
        57
    """
    if precision not in BYTES_PER_PARAMETER:
        raise ValueError(f"precision must be one of {', '.join(BYTES_PER_PARAMETER)}, got {precision!r}")
    models = models if isinstance(models, (list, tuple)) else [models]
    size = parameter_count(models) * BYTES_PER_PARAMETER[precision]
    if precision == "int8":
        size += 4 * sum(len(m.trainable_weights) for m in models)
    return int(size)
