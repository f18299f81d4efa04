"""Voxel files in and out: vox_tf's .npz, the reference implementation's dense .npz, binvox.

All three hold one R^3 occupancy grid whose voxel (i, j, k) lies along x, y, z (METHOD.md's grid
over [-1, 1]^3); they differ in how the voxels and the way back to the mesh's coordinates are
stored:

=================  =======================================================================
vox_tf ``.npz``    ``resolution``, ``indices`` int32 [N, 3], ``center``, ``scale``
                   (normalized = (original - center) * scale), ``source``
dense ``.npz``     the reference implementation's (scripts/prepare_dataset.py): ``arr_0``, a
                   dense [R, R, R] grid of any numeric or bool dtype, nonzero = occupied. Its
                   first index is x, then y, then z: the reference flattens ``arr_0`` in C order
                   next to voxel centres built by ``meshgrid(x, y, z, indexing="ij")``
                   (DualVoxel.voxel_all), so that is the order its training relies on. Its
                   meshes were normalized into [-1, 1]^3 before voxelizing and the transform
                   was not kept: center 0, scale 1 (the frame of ../shared/seedgrids).
``.binvox``        https://www.patrickmin.com/binvox/binvox.html, decoded and encoded by
                   trimesh.exchange.binvox. Its data runs y fastest, then z, then x; trimesh's
                   ``axis_order="xzy"`` turns that into [x, y, z]. The header's ``translate``
                   and ``scale`` place the grid in the model's coordinates: voxel i along an
                   axis spans translate + scale * [i, i + 1] / R, so the cube
                   [-1, 1]^3 of vox_tf maps to translate = center - 1 / scale_vox_tf and
                   scale = 2 / scale_vox_tf (and back: center = translate + scale / 2,
                   scale_vox_tf = 2 / scale).
=================  =======================================================================

The readers return the fields of :class:`vox_tf.grid.VoxelGrid` as a dict; a file that is not
one of these, or holds no usable cube, raises MeshError naming the file and the reason.
"""

import io
import zipfile
from pathlib import Path

import numpy as np
from trimesh.exchange import binvox
from trimesh.transformations import scale_and_translate
from trimesh.voxel import VoxelGrid as TrimeshVoxels
from trimesh.voxel.encoding import SparseBinaryEncoding

from vox_tf.errors import MeshError
from vox_tf.files import atomic_output

SUFFIXES = (".npz", ".binvox")
# A binvox header is a handful of short lines; reading more than this is reading data.
_MAX_HEADER_BYTES = 4096


def check_suffix(path):
    """Raises MeshError unless ``path`` ends in a voxel format's suffix (before anything runs)."""
    if Path(path).suffix.lower() not in SUFFIXES:
        raise MeshError(path, f"unknown voxel format {Path(path).suffix or '(no suffix)'!r}: "
                              f"use {' or '.join(SUFFIXES)}")


def read_voxel_file(path, resolution_range):
    """Reads any of the three formats (chosen by suffix, then by the .npz's keys).

    Args:
        path: a .npz (vox_tf's or a dense ``arr_0``) or a .binvox file.
        resolution_range: (lowest, highest) R accepted (for binvox, checked before decoding).
    Returns:
        dict with resolution (int), indices (int32 [N, 3], (i, j, k) along x, y, z, sorted),
        center (float64 [3]), scale (float) and source (str).

    Example:
        >>> write_voxel_file("one.binvox", 8, [[1, 2, 3]], np.zeros(3), 1.0, "")
        >>> read_voxel_file("one.binvox", (8, 1024))["indices"]
        array([[1, 2, 3]], dtype=int32)
    """
    path = Path(path)
    check_suffix(path)
    reader = _read_binvox if path.suffix.lower() == ".binvox" else _read_npz
    fields = reader(path, resolution_range)
    fields.setdefault("source", str(path))
    return fields


def write_voxel_file(path, resolution, indices, center, scale, source):
    """Writes a vox_tf .npz or a .binvox (by the suffix), atomically.

    Args:
        path: where to write; .npz keeps every field, .binvox keeps the voxels and the
            transform (as translate and scale) but not ``source``.
        resolution: R.
        indices: int [N, 3] occupied voxels, (i, j, k) along x, y, z.
        center: float [3] and scale: float, normalized = (original - center) * scale.
        source: where the voxels came from.

    Example:
        >>> write_voxel_file("cube.binvox", 8, np.array([[0, 0, 0]]), np.zeros(3), 1.0, "")
    """
    check_suffix(path)
    indices = np.asarray(indices, np.int32).reshape(-1, 3)
    center = np.asarray(center, np.float64)
    with atomic_output(path) as tmp:
        if Path(path).suffix.lower() == ".binvox":
            tmp.write_bytes(_binvox_bytes(resolution, indices, center, float(scale)))
        else:
            np.savez_compressed(tmp, resolution=np.int64(resolution), indices=indices,
                                center=center, scale=np.float64(scale), source=np.str_(source))


def _check_resolution(path, resolution, resolution_range):
    low, high = resolution_range
    if not low <= resolution <= high:
        raise MeshError(path, f"resolution {resolution} is outside [{low}, {high}]")


def _read_npz(path, resolution_range):
    if not path.is_file():
        raise MeshError(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "indices" in data and "resolution" in data:
                return _vox_tf_fields(path, data, resolution_range)
            if "arr_0" in data:
                return _dense_fields(path, data["arr_0"], resolution_range)
            keys = ", ".join(data.files) or "none"
    except MeshError:
        raise
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as err:
        raise MeshError(path, f"not a voxel .npz ({err})") from None
    raise MeshError(path, f"missing keys: a voxel .npz holds resolution and indices (vox_tf) "
                          f"or arr_0 (a dense grid), this one has {keys}")


def _vox_tf_fields(path, data, resolution_range):
    missing = [key for key in ("center", "scale") if key not in data]
    if missing:
        raise MeshError(path, f"missing keys: {', '.join(missing)}")
    resolution = int(data["resolution"])
    _check_resolution(path, resolution, resolution_range)
    indices = np.asarray(data["indices"])
    if indices.ndim != 2 or indices.shape[1] != 3 or indices.size and (
            indices.min() < 0 or indices.max() >= resolution):
        raise MeshError(path, f"indices must be [N, 3] within [0, {resolution})")
    fields = {"resolution": resolution, "indices": indices.astype(np.int32),
              "center": np.asarray(data["center"], np.float64), "scale": float(data["scale"])}
    if "source" in data:
        fields["source"] = str(data["source"])
    return fields


def _dense_fields(path, grid, resolution_range):
    if grid.ndim != 3 or len(set(grid.shape)) != 1:
        raise MeshError(path, f"arr_0 must be a cube [R, R, R], got shape {list(grid.shape)}")
    if grid.dtype != bool and not np.issubdtype(grid.dtype, np.number):
        raise MeshError(path, f"arr_0 must be numeric or bool, got {grid.dtype}")
    _check_resolution(path, grid.shape[0], resolution_range)
    return {"resolution": grid.shape[0], "indices": np.argwhere(grid).astype(np.int32),
            "center": np.zeros(3), "scale": 1.0}


def _read_binvox(path, resolution_range):
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MeshError(path, (err.strerror or str(err)).lower()) from None
    # trimesh reads header lines until "data"; in a file that is not binvox that "line" could
    # be megabytes of binary, so the header must end early.
    if b"data" not in raw[:_MAX_HEADER_BYTES]:
        raise MeshError(path, f"not a binvox file (no 'data' line in its first "
                              f"{_MAX_HEADER_BYTES} bytes)")
    try:
        header = binvox.parse_binvox(io.BytesIO(raw))
    except (UnicodeDecodeError, ValueError, TypeError, IndexError) as err:
        raise MeshError(path, f"not a binvox file ({err})") from None
    shape, translate, side = header.shape, header.translate, float(header.scale)
    if len(shape) != 3 or len(set(shape.tolist())) != 1:
        raise MeshError(path, f"binvox dim must be three equal sizes, got {shape.tolist()}")
    resolution = int(shape[0])
    _check_resolution(path, resolution, resolution_range)
    if translate.shape != (3,) or not np.isfinite(translate).all() or not side > 0:
        raise MeshError(path, f"binvox translate must be 3 numbers and scale positive, got "
                              f"{translate.tolist()} and {side}")
    try:
        grid = binvox.voxel_from_binvox(header.rle_data, shape, axis_order="xzy").encoding.dense
    except (ValueError, IndexError) as err:
        raise MeshError(path, f"binvox data does not fill {resolution}^3 voxels ({err})") from None
    return {"resolution": resolution, "indices": np.argwhere(grid).astype(np.int32),
            "center": translate + side / 2.0, "scale": 2.0 / side}


def _binvox_bytes(resolution, indices, center, scale):
    """The bytes of a .binvox file, through trimesh's encoder.

    trimesh's voxel transform spaces the first to the last voxel over its scale, and its
    encoder writes scale * (R - 1) as the header's scale: handing it side / (R - 1) makes the
    header hold the cube's side, as the binvox spec has it.
    """
    side = 2.0 / scale
    transform = scale_and_translate(scale=side / (resolution - 1), translate=center - side / 2.0)
    voxels = TrimeshVoxels(SparseBinaryEncoding(indices, shape=(resolution,) * 3), transform)
    return binvox.export_binvox(voxels, axis_order="xzy")
