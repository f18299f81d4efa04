"""The compiled ops against the brute-force NumPy/SciPy references of tests/reference_ops.py."""

import numpy as np
import pytest
import tensorflow as tf
import trimesh
from scipy import ndimage

from reference_ops import boundary_reference, fill_reference, voxelize_reference
from vox_tf import ops
from vox_tf.mesh_io import from_trimesh

RESOLUTIONS = (8, 12, 16, 31, 32)


def _lattice(resolution, steps):
    """Coordinates of voxel faces (-1 + 2i/R) for integer ``steps``; half-integers give centres."""
    return -1.0 + 2.0 * np.asarray(steps, np.float64) / resolution


def _soup(triangles):
    """[T, 3, 3] triangle corners -> (float32 vertices [3T, 3], int32 faces [T, 3])."""
    triangles = np.asarray(triangles, np.float32).reshape(-1, 3, 3)
    return triangles.reshape(-1, 3), np.arange(3 * len(triangles), dtype=np.int32).reshape(-1, 3)


def _random_triangles(rng, count, spread=1.0):
    return rng.uniform(-spread, spread, (count, 3, 3))


def _on_lattice(rng, resolution, count):
    """Every corner on a voxel corner: triangles along voxel faces, edges and through corners."""
    return _lattice(resolution, rng.integers(0, resolution + 1, (count, 3, 3)))


def _on_half_lattice(rng, resolution, count):
    """Corners on voxel corners, face centres, edge midpoints and centres (half-integer steps)."""
    return _lattice(resolution, rng.integers(0, 2 * resolution + 1, (count, 3, 3)) / 2)


def _in_voxel_planes(rng, resolution, count):
    """Triangles lying exactly in planes x = -1 + 2i/R (or y, z), other coordinates random."""
    triangles = rng.uniform(-1, 1, (count, 3, 3))
    for triangle in triangles:
        axis = rng.integers(3)
        triangle[:, axis] = _lattice(resolution, rng.integers(0, resolution + 1))
    return triangles


def _axis_aligned_on_lattice(rng, resolution, count):
    """In a voxel plane with edges along voxel edges or diagonals: every test is a tie."""
    triangles = _on_lattice(rng, resolution, count)
    for triangle in triangles:
        axis = rng.integers(3)
        triangle[:, axis] = triangle[0, axis]
    return triangles


def _degenerate(rng, resolution, count):
    """Zero-area triangles: collinear corners, repeated corners, single points on corners."""
    starts = _on_lattice(rng, resolution, count)[:, 0]
    ends = _on_lattice(rng, resolution, count)[:, 0]
    t = rng.uniform(0, 1, (count, 1))
    collinear = np.stack([starts, ends, starts + t * (ends - starts)], axis=1)
    repeated = np.stack([starts, starts, ends], axis=1)
    points = np.stack([starts, starts, starts], axis=1)
    random_points = np.repeat(rng.uniform(-1, 1, (count, 1, 3)), 3, axis=1)
    return np.concatenate([collinear, repeated, points, random_points])


def _slivers(rng, resolution, count):
    """Long needle triangles a hair wide, some along voxel edges."""
    starts = rng.uniform(-1, 1, (count, 3))
    ends = rng.uniform(-1, 1, (count, 3))
    starts[: count // 2] = _on_lattice(rng, resolution, count // 2)[:, 0]
    ends[: count // 2] = starts[: count // 2]
    ends[: count // 2, 0] = _lattice(resolution, rng.integers(0, resolution + 1, count // 2))
    offset = rng.normal(size=(count, 3)) * 1e-6
    return np.stack([starts, ends, ends + offset], axis=1)


def _large(rng, resolution, count):
    """Triangles much bigger than the cube, clipped by it; some touch a cube face from outside."""
    triangles = rng.uniform(-4, 4, (count, 3, 3))
    triangles[0] = [[1, -3, -3], [1, 3, -3], [1, 0, 3]]        # in the cube's face x = 1
    triangles[1] = [[-3, -1, -3], [3, -1, -3], [0, -1, 3]]     # in the cube's face y = -1
    triangles[2] = [[1.001, -3, -3], [1.001, 3, -3], [1.001, 0, 3]]  # just outside
    return triangles


def _outside(rng, resolution, count):
    """Entirely outside the cube, and corners touching it from outside."""
    triangles = rng.uniform(1.01, 2, (count, 3, 3)) * rng.choice([-1, 1], (count, 1, 3))
    triangles[0] = [[1, 1, 1], [2, 1, 1], [1, 2, 1]]  # touches the cube in one corner
    return triangles


GENERATORS = {
    "random": lambda rng, r: _random_triangles(rng, 12),
    "random_partly_outside": lambda rng, r: _random_triangles(rng, 12, spread=1.3),
    "lattice": lambda rng, r: _on_lattice(rng, r, 12),
    "half_lattice": lambda rng, r: _on_half_lattice(rng, r, 12),
    "voxel_planes": lambda rng, r: _in_voxel_planes(rng, r, 10),
    "axis_aligned_lattice": lambda rng, r: _axis_aligned_on_lattice(rng, r, 10),
    "degenerate": lambda rng, r: _degenerate(rng, r, 6),
    "slivers": lambda rng, r: _slivers(rng, r, 8),
    "large": lambda rng, r: _large(rng, r, 4),
    "outside": lambda rng, r: _outside(rng, r, 6),
    "small": lambda rng, r: rng.uniform(-1, 1, (1, 1, 3)) + rng.uniform(-0.02, 0.02, (30, 3, 3)),
}

# 65 meshes: every generator at every resolution, plus more seeds of the random and the
# all-ties lattice kinds.
CASES = ([(name, resolution, 0) for name in GENERATORS for resolution in RESOLUTIONS]
         + [("random", 16, seed) for seed in range(1, 6)]
         + [("lattice", 8, seed) for seed in range(1, 6)])


@pytest.mark.parametrize("name,resolution,seed", CASES)
def test_voxelize_mesh_matches_reference(name, resolution, seed):
    rng = np.random.default_rng([seed, resolution, list(GENERATORS).index(name)])
    vertices, faces = _soup(GENERATORS[name](rng, resolution))
    got = ops.voxelize_mesh(vertices, faces, resolution).numpy()
    expected = voxelize_reference(vertices, faces, resolution)
    _assert_same_voxels(got, expected, vertices, faces, resolution)


def _assert_same_voxels(got, expected, vertices, faces, resolution):
    assert got.dtype == np.int32 and got.ndim == 2 and got.shape[1] == 3
    assert np.array_equal(got, np.unique(got, axis=0)), "op output is not sorted and unique"
    if not np.array_equal(got, expected):
        extra = _difference(got, expected)
        missing = _difference(expected, got)
        culprit = _first_culprit(vertices, faces, resolution, extra, missing)
        pytest.fail(f"R={resolution}: op has {len(extra)} extra and {len(missing)} missing "
                    f"voxels (e.g. extra {extra[:3].tolist()}, missing {missing[:3].tolist()}); "
                    f"a triangle showing it: {culprit}")


def _difference(a, b):
    b_rows = {tuple(row) for row in b.tolist()}
    rows = [row for row in a.tolist() if tuple(row) not in b_rows]
    return np.array(rows, np.int32).reshape(-1, 3)


def _first_culprit(vertices, faces, resolution, extra, missing):
    """The corners (float32, repr exact) of one triangle on which op and reference differ."""
    for face in faces:
        one = (vertices[face], np.arange(3, dtype=np.int32)[None])
        if not np.array_equal(ops.voxelize_mesh(*one, resolution).numpy(),
                              voxelize_reference(*one, resolution)):
            return one[0].tolist()
    return None


def test_voxelize_mesh_without_faces_is_empty():
    got = ops.voxelize_mesh(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.int32), 8)
    assert got.shape == (0, 3)


def test_voxelize_mesh_is_deterministic_on_many_faces():
    rng = np.random.default_rng(7)
    vertices, faces = _soup(_random_triangles(rng, 3000))
    first = ops.voxelize_mesh(vertices, faces, 64).numpy()
    assert all(np.array_equal(first, ops.voxelize_mesh(vertices, faces, 64).numpy())
               for _ in range(3))


def _closed_meshes():
    return {"sphere": trimesh.creation.icosphere(subdivisions=3),
            "box": trimesh.creation.box(extents=(1.0, 0.6, 0.8)),
            "torus": trimesh.creation.torus(major_radius=1.0, minor_radius=0.35)}


@pytest.mark.parametrize("shape", ["sphere", "box", "torus"])
@pytest.mark.parametrize("resolution", [16, 31])
def test_fill_matches_reference(shape, resolution):
    mesh = from_trimesh(_closed_meshes()[shape], shape)
    assert mesh.watertight
    surface = ops.voxelize_mesh(mesh.vertices, mesh.faces, resolution).numpy()
    solid = ops.voxelize_mesh(mesh.vertices, mesh.faces, resolution, fill=True).numpy()
    assert np.array_equal(surface, voxelize_reference(mesh.vertices, mesh.faces, resolution))
    expected = fill_reference(surface, resolution)
    assert len(expected) > len(surface), "the fixture should enclose some voxels"
    assert np.array_equal(solid, expected)


def test_fill_of_a_tilted_box_matches_reference():
    slab = trimesh.creation.box(extents=(1.2, 1.2, 0.5))
    slab.apply_transform(trimesh.transformations.rotation_matrix(0.7, [1, 1, 0]))
    mesh = from_trimesh(slab, "slab")
    surface = ops.voxelize_mesh(mesh.vertices, mesh.faces, 24).numpy()
    solid = ops.voxelize_mesh(mesh.vertices, mesh.faces, 24, fill=True).numpy()
    assert np.array_equal(solid, fill_reference(surface, 24))


def test_fill_of_an_open_box_adds_nothing():
    """The outside flows in through the missing face, so there is no inside to fill."""
    box = trimesh.creation.box()
    open_box = trimesh.Trimesh(box.vertices, box.faces[np.abs(box.face_normals[:, 2] - 1) > 1e-6])
    mesh = from_trimesh(open_box, "open box")
    surface = ops.voxelize_mesh(mesh.vertices, mesh.faces, 16).numpy()
    solid = ops.voxelize_mesh(mesh.vertices, mesh.faces, 16, fill=True).numpy()
    assert np.array_equal(solid, surface)


def _blobs(rng, shape, density):
    noise = rng.normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, 1.5)
    return smooth > np.quantile(smooth, 1 - density)


def _boundary_grids():
    rng = np.random.default_rng(3)
    grids = {
        "random_sparse_13x7x10": rng.random((13, 7, 10)) < 0.05,
        "random_half_9x9x9": rng.random((9, 9, 9)) < 0.5,
        "random_dense_17x11x5": rng.random((17, 11, 5)) < 0.95,
        "blobs_30x20x25": _blobs(rng, (30, 20, 25), 0.3),
        "blobs_32": _blobs(rng, (32, 32, 32), 0.4),
        "empty_10x12x14": np.zeros((10, 12, 14), bool),
        "full_10x12x14": np.ones((10, 12, 14), bool),
        "thin_1x8x5": rng.random((1, 8, 5)) < 0.5,
        "single_voxel_1x1x1": np.ones((1, 1, 1), bool),
        "one_corner": np.pad(np.ones((1, 1, 1), bool), ((0, 6), (0, 5), (0, 4))),
        # Rows longer than one 64-voxel word: neighbours carried across word boundaries.
        "blobs_6x9x130": _blobs(rng, (6, 9, 130), 0.4),
        "random_half_5x4x128": rng.random((5, 4, 128)) < 0.5,
        "full_3x3x64": np.ones((3, 3, 64), bool),
        "word_edges_3x3x129": np.isin(np.arange(129), [62, 63, 64, 65, 127, 128])[None, None]
        .repeat(3, 0).repeat(3, 1),
    }
    border = np.zeros((11, 9, 7), bool)
    border[0] = border[:, -1] = border[:, :, 0] = True
    grids["touching_border_11x9x7"] = border
    return grids


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("name", list(_boundary_grids()))
def test_dual_voxel_boundary_matches_reference(name, with_mask):
    occupancy = _boundary_grids()[name]
    mask = np.random.default_rng(11).random(occupancy.shape) < 0.6 if with_mask else None
    labels = ops.dual_voxel_boundary(occupancy, mask).numpy()
    expected = boundary_reference(occupancy, mask)
    assert labels.dtype == np.int8 and labels.shape == occupancy.shape
    np.testing.assert_array_equal(labels, expected)

    lists = ops.dual_voxel_indices(occupancy, mask)
    classes = (ops.OUTSIDE, ops.INSIDE, ops.OUTER_BOUNDARY, ops.INNER_BOUNDARY)
    assert list(lists.counts().values()) == [int((expected == c).sum()) for c in classes]
    for listed, label in zip(lists, classes):
        np.testing.assert_array_equal(listed.numpy(), np.argwhere(expected == label))


@pytest.mark.skipif(not tf.config.list_physical_devices("GPU") or not ops.built_with_cuda(),
                    reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("name", list(_boundary_grids()))
def test_dual_voxel_boundary_gpu_kernel_matches_cpu_kernel(name):
    occupancy = _boundary_grids()[name]
    mask = np.random.default_rng(5).random(occupancy.shape) < 0.6
    for device_mask in (None, mask):
        with tf.device("/CPU:0"):
            cpu = ops.dual_voxel_boundary(occupancy, device_mask)
        with tf.device("/GPU:0"):
            gpu = ops.dual_voxel_boundary(occupancy, device_mask)
        assert "GPU" in gpu.device
        np.testing.assert_array_equal(gpu.numpy(), cpu.numpy())


def test_dual_voxel_indices_lists_only_requested_classes():
    occupancy = _boundary_grids()["blobs_30x20x25"]
    lists = ops.dual_voxel_indices(occupancy, classes=(ops.INNER_BOUNDARY,))
    expected = boundary_reference(occupancy)
    assert lists.counts() == {"outside": 0, "inside": 0, "outer_boundary": 0,
                              "inner_boundary": int((expected == ops.INNER_BOUNDARY).sum())}


TRIANGLE = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0, 0.5, 0]], np.float32)


@pytest.mark.parametrize("vertices,faces,resolution", [
    (TRIANGLE.ravel(), [[0, 1, 2]], 16),                          # vertices of rank 1
    (TRIANGLE[:, :2], [[0, 1, 2]], 16),                           # vertices [V, 2]
    (TRIANGLE, [0, 1, 2], 16),                                    # faces of rank 1
    (TRIANGLE, [[0, 1, 2, 0]], 16),                               # faces [F, 4]
    (TRIANGLE, [[0, 1, 3]], 16),                                  # index == V
    (TRIANGLE, [[0, -1, 2]], 16),                                 # negative index
    (TRIANGLE, [[0, 1, 2]], 7),                                   # resolution < 8
    (TRIANGLE, [[0, 1, 2]], 1025),                                # resolution > 1024
], ids=["vertices_rank1", "vertices_V2", "faces_rank1", "faces_F4", "index_too_large",
        "index_negative", "resolution_7", "resolution_1025"])
def test_voxelize_mesh_rejects_bad_arguments(vertices, faces, resolution):
    with pytest.raises(tf.errors.InvalidArgumentError):
        ops.voxelize_mesh(vertices, np.asarray(faces, np.int32), resolution)


@pytest.mark.parametrize("vertices,faces,message", [
    (TRIANGLE, np.array([[0.0, 1.0, 2.0]]), "faces must be integer"),
    (TRIANGLE.astype(np.int32), [[0, 1, 2]], "vertices must be floating"),
    (np.where(np.eye(3, dtype=bool), np.nan, TRIANGLE).astype(np.float32), [[0, 1, 2]],
     "not finite"),
])
def test_voxelize_mesh_names_the_bad_argument(vertices, faces, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.voxelize_mesh(vertices, faces, 16)


@pytest.mark.parametrize("occupancy,mask", [
    (np.ones((4, 4), bool), None),
    (np.ones((2, 4, 4, 4), bool), None),
    (np.ones((4, 4, 4), bool), np.ones((4, 4, 5), bool)),
    (np.ones((4, 4, 4), bool), np.ones((4, 4), bool)),
], ids=["occupancy_rank2", "occupancy_rank4", "mask_shape", "mask_rank"])
def test_dual_voxel_boundary_rejects_bad_arguments(occupancy, mask):
    with pytest.raises(tf.errors.InvalidArgumentError):
        ops.dual_voxel_boundary(occupancy, mask)


def test_ops_are_registered_without_gradient():
    from tensorflow.python.framework import ops as framework_ops

    for op_type in ("VoxelizeMesh", "DualVoxelBoundary"):
        # tf.no_gradient registers None; an unregistered op would raise LookupError here.
        assert framework_ops._gradient_registry.lookup(op_type) is None
    vertices = tf.Variable(TRIANGLE)
    occupancy = tf.Variable(np.ones((4, 4, 4), np.float32))
    with tf.GradientTape(persistent=True) as tape:
        voxels = tf.cast(ops.voxelize_mesh(vertices, [[0, 1, 2]], 8), tf.float32)
        labels = tf.cast(ops.dual_voxel_boundary(occupancy > 0.5), tf.float32)
    assert tape.gradient(voxels, vertices) is None
    assert tape.gradient(labels, occupancy) is None
