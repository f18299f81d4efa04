"""Voxel files in and out (vox_tf .npz, the reference's dense .npz, binvox) and the preview."""

import re

import numpy as np
import pytest
import trimesh
from matplotlib.image import imread
from trimesh.exchange import binvox as trimesh_binvox

from vox_tf import exports, train
from vox_tf.errors import MeshError
from vox_tf.grid import VoxelGrid, voxel_centers
from vox_tf.preview import error_grids, render_preview, shaded_panels
from vox_tf.run_layout import voxel_fingerprint
from vox_tf.voxelize import main as voxelize_main

RESOLUTION = 24
ARCH = "16:relu"


@pytest.fixture(scope="module")
def sphere_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mesh") / "ball.obj"
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    sphere.apply_translation([1.0, -2.0, 5.0])
    sphere.export(path)
    return path


@pytest.fixture(scope="module")
def voxelized(sphere_file, tmp_path_factory):
    """The same mesh voxelized by the command line into .npz and into .binvox."""
    out = tmp_path_factory.mktemp("voxels")
    for name in ("ball.npz", "ball.binvox"):
        assert voxelize_main([str(sphere_file), "-r", str(RESOLUTION), "-o", str(out / name)]) == 0
    return out / "ball.npz", out / "ball.binvox"


def binvox_file(path, resolution, occupied_flat, translate=(0, 0, 0), scale=1.0):
    """A binvox file built by the spec alone (no trimesh): run-length pairs (value, count)."""
    values = np.zeros(resolution ** 3, np.uint8)
    values[list(occupied_flat)] = 1
    runs, start = [], 0
    while start < values.size:
        stop = start + 1
        while stop < values.size and values[stop] == values[start] and stop - start < 255:
            stop += 1
        runs += [values[start], stop - start]
        start = stop
    header = (f"#binvox 1\ndim {resolution} {resolution} {resolution}\n"
              f"translate {' '.join(map(str, translate))}\nscale {scale}\ndata\n")
    path.write_bytes(header.encode() + bytes(runs))
    return path


def test_dense_npz_and_binvox_give_the_voxelize_grid(voxelized, tmp_path):
    npz, binvox = voxelized
    reference = VoxelGrid.load(npz)
    dense = tmp_path / "reference.npz"
    np.savez_compressed(dense, reference.dense().astype(np.int8))  # as prepare_dataset.py does
    for other in (VoxelGrid.load(binvox), VoxelGrid.load(dense)):
        assert other.resolution == reference.resolution == RESOLUTION
        np.testing.assert_array_equal(other.indices, reference.indices)
        assert voxel_fingerprint(other) == voxel_fingerprint(reference)  # the search's input
    from_binvox = VoxelGrid.load(binvox)
    np.testing.assert_allclose(from_binvox.center, reference.center, rtol=1e-12)
    assert from_binvox.scale == pytest.approx(reference.scale, rel=1e-12)


def test_vox_tf_binvox_opens_in_trimesh_with_the_same_voxels_and_frame(voxelized):
    npz, binvox = voxelized
    reference = VoxelGrid.load(npz)
    opened = trimesh.load(binvox)
    np.testing.assert_array_equal(np.argwhere(opened.matrix), reference.indices)
    with open(binvox, "rb") as file:
        header = trimesh_binvox.parse_binvox(file)
    np.testing.assert_allclose(header.translate, reference.center - 1 / reference.scale)
    assert header.scale == pytest.approx(2 / reference.scale)


def test_binvox_axis_order_and_frame_follow_the_spec(tmp_path):
    resolution, (x, y, z) = 8, (1, 2, 6)
    # The spec: y runs fastest, then z, then x.
    path = binvox_file(tmp_path / "one.binvox", resolution, [x * resolution ** 2 + z * resolution + y],
                       translate=(10.0, 20.0, 30.0), scale=4.0)
    voxels = VoxelGrid.load(path)
    assert voxels.indices.tolist() == [[x, y, z]]
    # Voxel i spans translate + scale * [i, i + 1] / R in the model's coordinates.
    expected = np.array([10.0, 20.0, 30.0]) + 4.0 * (np.array([x, y, z]) + 0.5) / resolution
    np.testing.assert_allclose(voxels.to_original(voxel_centers(voxels.indices, resolution))[0],
                               expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32])
def test_dense_npz_first_axis_is_x_and_any_nonzero_is_occupied(tmp_path, dtype):
    grid = np.zeros((16, 16, 16), dtype)
    grid[1, 2, 3] = 1
    grid[15, 0, 7] = 0.5 if dtype is np.float32 else 1
    np.savez(tmp_path / "dense.npz", grid)
    voxels = VoxelGrid.load(tmp_path / "dense.npz")
    assert voxels.indices.tolist() == [[1, 2, 3], [15, 0, 7]]
    assert voxels.resolution == 16 and voxels.scale == 1.0 and not voxels.center.any()


def test_npz_round_trip_keeps_every_field(tmp_path):
    voxels = VoxelGrid(16, np.array([[0, 1, 2], [15, 15, 15]], np.int32),
                       np.array([1.5, -2.0, 0.25]), 0.125, "somewhere.obj")
    for name in ("v.npz", "v.binvox"):
        voxels.save(tmp_path / name)
        again = VoxelGrid.load(tmp_path / name)
        np.testing.assert_array_equal(again.indices, voxels.indices)
        np.testing.assert_allclose(again.center, voxels.center)
        assert again.scale == pytest.approx(voxels.scale)
    assert VoxelGrid.load(tmp_path / "v.npz").source == "somewhere.obj"


def _bad_files():
    """{file name: (writer, what the message must say)} of unusable voxel files."""
    def npz(**arrays):
        def write(path):
            with open(path, "wb") as file:  # numpy would append .npz to other suffixes
                np.savez(file, **arrays)
        return write

    def raw(data):
        return lambda path: path.write_bytes(data)

    def spec_binvox(resolution):
        return lambda path: binvox_file(path, resolution, [0])

    return {
        "flat.npz": (npz(arr_0=np.ones((8, 8))), "must be a cube"),
        "box.npz": (npz(arr_0=np.ones((8, 8, 9))), "must be a cube"),
        "text.npz": (npz(arr_0=np.full((8, 8, 8), "a")), "numeric or bool"),
        "tiny.npz": (npz(arr_0=np.ones((4, 4, 4))), "resolution 4 is outside [8, 1024]"),
        "huge.npz": (npz(resolution=2048, indices=np.zeros((1, 3), np.int32), center=np.zeros(3),
                         scale=1.0), "resolution 2048 is outside"),
        "nokeys.npz": (npz(voxels=np.ones((8, 8, 8))), "missing keys"),
        "nocenter.npz": (npz(resolution=8, indices=np.zeros((1, 3), np.int32)), "missing keys: center"),
        "outside.npz": (npz(resolution=8, indices=np.array([[0, 0, 8]]), center=np.zeros(3),
                            scale=1.0), "within [0, 8)"),
        "garbage.npz": (raw(b"not a zip file"), "not a voxel .npz"),
        "model.vox": (npz(arr_0=np.ones((8, 8, 8))), "unknown voxel format '.vox'"),
        "text.binvox": (raw(b"hello\nworld\n"), "not a binvox file"),
        "flat.binvox": (raw(b"#binvox 1\ndim 8 8\ndata\n\x00\xff"), "three equal sizes"),
        "letters.binvox": (raw(b"#binvox 1\ndim a b c\ndata\n\x00\xff"), "not a binvox file"),
        "nodata.binvox": (raw(b"#binvox 1\ndim 8 8 8\n" + b"\x00" * 5000), "no 'data' line"),
        "box.binvox": (raw(b"#binvox 1\ndim 8 8 9\ndata\n\x00\xff"), "three equal sizes"),
        "tiny.binvox": (spec_binvox(4), "resolution 4 is outside"),
        "short.binvox": (raw(b"#binvox 1\ndim 8 8 8\ndata\n\x00\xff\x01\x02"), "does not fill 8^3"),
        "flipped.binvox": (raw(b"#binvox 1\ndim 8 8 8\nscale -1\ndata\n\x00\xff\x00\xff\x00\x02"),
                           "scale positive"),
    }


@pytest.mark.parametrize("name", list(_bad_files()))
def test_unusable_voxel_file_exits_2_naming_it_and_writes_nothing(tmp_path, capsys, name):
    write, reason = _bad_files()[name]
    bad = tmp_path / name
    write(bad)
    with pytest.raises(MeshError, match=re.escape(reason)):
        VoxelGrid.load(bad)
    out = tmp_path / "run"
    assert train.main(["--voxel", str(bad), "--coarse-arch", ARCH, "--fine-arch", ARCH,
                       "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and reason in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_voxelize_to_an_unknown_format_exits_2_and_writes_nothing(sphere_file, tmp_path, capsys):
    output = tmp_path / "ball.vox"
    assert voxelize_main([str(sphere_file), "-r", "16", "-o", str(output),
                          "--preview", str(tmp_path / "ball.png")]) == 2
    assert capsys.readouterr().err == (f"error: {output}: unknown voxel format '.vox': "
                                       "use .npz or .binvox\n")
    assert not list(tmp_path.iterdir())


def test_run_directory_gets_the_reconstruction_as_binvox(tmp_path, voxelized):
    truth = VoxelGrid.load(voxelized[0])
    pred = truth.dense()
    pred[tuple(truth.indices[0])] = False
    exports.write_all(tmp_path, pred, truth, {"iou": 0.99, "params": 1234})
    from_npz = VoxelGrid.load(tmp_path / exports.RECONSTRUCTION_NPZ)
    from_binvox = VoxelGrid.load(tmp_path / exports.RECONSTRUCTION_BINVOX)
    np.testing.assert_array_equal(from_binvox.indices, from_npz.indices)
    np.testing.assert_array_equal(from_npz.dense(), pred)
    np.testing.assert_allclose(from_binvox.center, truth.center)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def _reddish(image):
    red, green, blue = (image[..., c].astype(int) for c in range(3))
    return (red > 2 * green + 30) & (red > 2 * blue + 30)


def _bluish(image):
    red, green, blue = (image[..., c].astype(int) for c in range(3))
    return (blue > 2 * red + 30) & (blue > green + 30)


def _shell(resolution):
    centers = voxel_centers(np.argwhere(np.ones((resolution,) * 3)), resolution)
    radius = np.linalg.norm(centers, axis=1).reshape((resolution,) * 3)
    return np.abs(radius - 0.7) < 1.5 / resolution


def test_preview_png_marks_errors_in_the_3d_views(tmp_path):
    gt = _shell(RESOLUTION)
    pred = gt.copy()
    pred[2:6, 10:14, 10:14] = True            # false positives outside the shell, on the left
    pred[np.argwhere(gt)[-30:].T.tolist()] = False  # a hole at the far end of z: false negatives
    path = tmp_path / "preview.png"
    exports.write_preview(path, pred, gt, "IoU 90 %")
    image = render_preview(pred, gt, "IoU 90 %")
    assert image.dtype == np.uint8 and image.shape == (1236, 900, 3)
    written = imread(path)
    assert written.shape[:2] == image.shape[:2]
    views = image[:image.shape[0] // 4]  # title and the shaded 3D views
    ground_truth, reconstruction = views[:, :300], views[:, 300:]
    assert _reddish(reconstruction).sum() > 20 and _bluish(reconstruction).sum() > 20
    assert not _reddish(ground_truth).any() and not _bluish(ground_truth).any()
    assert (ground_truth < 200).all(axis=2).sum() > 1000  # the shaded object itself

    clean = render_preview(gt, gt)[:1200 // 4]
    assert not _reddish(clean).any() and not _bluish(clean).any()


def test_shaded_view_draws_up_as_up_seen_from_above():
    grid = np.zeros((16,) * 3, bool)
    grid[4:12, 1:15, 4:12] = True               # a pillar along y
    top, bottom = np.zeros_like(grid), np.zeros_like(grid)
    top[7:9, 14, 7:9] = True                    # marks in the middle of its top face
    bottom[7:9, 1, 7:9] = True                  # and of its bottom face
    layers = {"pillar": (grid, (0.7, 0.7, 0.7)), "top": (top, (0.9, 0.1, 0.1)),
              "bottom": (bottom, (0.1, 0.2, 0.9))}
    upright = shaded_panels("pillar", layers, ["front"], up="y")[0].image
    lying = shaded_panels("pillar", layers, ["front"], up="x")[0].image
    rows, columns = np.nonzero((upright < 0.99).any(axis=2))
    assert np.ptp(rows) > 1.3 * np.ptp(columns)  # taller than wide
    rows, columns = np.nonzero((lying < 0.99).any(axis=2))
    assert np.ptp(columns) > 1.1 * np.ptp(rows)  # wider than tall, though turned 35 degrees
    as_bytes = (upright * 255).astype(np.uint8)
    red_rows = np.nonzero(_reddish(as_bytes))[0]
    assert red_rows.size and red_rows.max() < as_bytes.shape[0] / 3  # the top face, on top
    assert not _bluish(as_bytes).any()  # the camera is above: the bottom face is hidden


def test_large_grids_are_pooled_for_the_3d_view_without_losing_a_lone_error():
    resolution = 136  # above the 128 drawn: pooled by 2
    gt = np.zeros((resolution,) * 3, bool)
    gt[30:100, 30:100, 30:100] = True
    pred = gt.copy()
    pred[64, 99, 64] = False  # one false negative on the top face
    image = shaded_panels("cube", {label: (grid, color) for (label, color), grid in zip(
        exports.ERROR_CLASSES, error_grids(pred, gt).values())}, ["front"])[0].image
    assert max(image.shape[:2]) < 130 * 2  # drawn from the pooled 68^3 grid
    assert _bluish((image * 255).astype(np.uint8)).any()


def test_voxelize_binvox_with_a_z_up_preview(sphere_file, tmp_path):
    output, preview = tmp_path / "model128.binvox", tmp_path / "model128.png"
    assert voxelize_main([str(sphere_file), "--resolution", "16", "-o", str(output), "--preview",
                          str(preview), "--preview-up", "z"]) == 0
    image = imread(preview)
    assert image.shape[:2] == (600, 900)
    assert (image[:300, :, :3] < 0.8).all(axis=2).sum() > 500  # three shaded views
    assert VoxelGrid.load(output).resolution == 16
