"""Mesh -> exact surface (or solid) voxels, and the command line ``python -m vox_tf.voxelize``.

Example:
    python -m vox_tf.voxelize bunny.obj --resolution 256 --preview bunny.png
    # writes bunny_256.npz (see vox_tf.grid.VoxelGrid) in the current directory
    python -m vox_tf.voxelize bunny.obj --resolution 256 -o bunny.binvox   # binvox instead
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from vox_tf.errors import MeshError
from vox_tf.grid import VoxelGrid, check_resolution
from vox_tf.mesh_io import Mesh, load_mesh
from vox_tf.voxel_formats import check_suffix

DEFAULT_RESOLUTION = 256
PREVIEW_RESOLUTION = 256


def voxelize(mesh: Mesh, resolution, fill=False) -> VoxelGrid:
    """Voxels whose closed box some triangle of ``mesh`` touches (plus the inside with ``fill``).

    Filling a mesh that is not watertight warns but still runs: an open surface usually lets
    the outside flow in (the result is then just the surface), yet cracks smaller than a voxel
    leave the voxel shell closed and the fill correct, which only the voxels can tell.

    Args:
        mesh: a normalized :class:`vox_tf.mesh_io.Mesh`.
        resolution: R in [8, 1024].
        fill: also mark the voxels the surface encloses.
    Returns:
        VoxelGrid with sorted int32 [N, 3] indices and the mesh's transform.

    Example:
        >>> voxelize(from_trimesh(trimesh.creation.box(), "box"), 16).indices.shape
        (1016, 3)
    """
    from vox_tf import ops  # TensorFlow loads only when voxels are actually made

    resolution = check_resolution(resolution)
    if fill and not mesh.watertight:
        warnings.warn(f"{mesh.source}: the mesh is not watertight, so filling its inside may "
                      "leave just the surface (wherever the outside leaks in through a hole)",
                      stacklevel=2)
    indices = ops.voxelize_mesh(mesh.vertices, mesh.faces, resolution, fill=fill).numpy()
    return VoxelGrid(resolution, indices, mesh.center, mesh.scale, mesh.source)


def voxelize_file(path, resolution, fill=False) -> VoxelGrid:
    """Loads a mesh file (raising MeshError if it is unusable) and voxelizes it."""
    return voxelize(load_mesh(path), resolution, fill=fill)


def preview_grid(voxels: VoxelGrid, size=PREVIEW_RESOLUTION):
    """bool [P, P, P] occupancy for a picture, P = min(R, size): max-pooled, never R^3 dense.

    Example:
        >>> preview_grid(VoxelGrid(512, np.array([[511, 0, 0]], np.int32)))[255, 0, 0]
        True
    """
    size = min(voxels.resolution, size)
    grid = np.zeros((size,) * 3, bool)
    cells = voxels.indices.astype(np.int64) * size // voxels.resolution
    grid[cells[:, 0], cells[:, 1], cells[:, 2]] = True
    return grid


def _resolution(text):
    try:
        return check_resolution(int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m vox_tf.voxelize",
        description="Exact surface voxelization of a mesh (OBJ, PLY, STL, OFF, GLB/GLTF): a "
                    "voxel of the R^3 grid over the normalized mesh's cube [-1, 1]^3 is occupied "
                    "when a triangle touches it. Writes an .npz with resolution, indices "
                    "(int32 [N, 3]), center and scale (normalized = (vertex - center) * scale), "
                    "or a .binvox (the grid's cube as its translate and scale).",
        epilog="Exit status 2 on a bad input file, with 'error: FILE: reason' on stderr and no "
               "output written.")
    parser.add_argument("mesh", type=Path, help="the mesh file")
    parser.add_argument("-r", "--resolution", type=_resolution, default=DEFAULT_RESOLUTION,
                        help=f"voxels along each axis, 8..1024 (default {DEFAULT_RESOLUTION})")
    parser.add_argument("--fill", action="store_true",
                        help="also fill the inside (for watertight meshes; warns otherwise)")
    parser.add_argument("-o", "--output", type=Path,
                        help="the .npz or .binvox to write, by its suffix (default: "
                             "MESHNAME_R.npz in the current directory)")
    parser.add_argument("--preview", type=Path, metavar="PNG",
                        help="also write a PNG: shaded 3D views from three sides and three "
                             "orthographic projections")
    parser.add_argument("--preview-up", choices=("x", "y", "z"), default="y",
                        help="the axis drawn upwards in the preview's 3D views (default y, as in "
                             "OBJ and glTF; z for most STL and CAD models)")
    return parser


def _write_preview(voxels, args, output):
    """Writes the --preview PNG; a failure takes the just-written .npz with it (no partial run)."""
    from vox_tf.preview import render_grid, save_png

    kind = "solid" if args.fill else "surface"
    try:
        save_png(render_grid(preview_grid(voxels), f"{args.mesh.name} {args.resolution}^3 {kind}",
                             up=args.preview_up), args.preview)
    except BaseException:
        output.unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    """Runs the command line; returns the exit status (0 done, 2 bad input)."""
    args = _parser().parse_args(argv)
    output = args.output or Path(f"{args.mesh.stem}_{args.resolution}.npz")
    if args.preview is not None and args.preview.suffix.lower() != ".png":
        print(f"error: {args.preview}: the preview must be a .png file", file=sys.stderr)
        return 2
    try:
        check_suffix(output)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mesh = load_mesh(args.mesh)
            from vox_tf import ops  # noqa: F401 - TensorFlow's start-up is not voxelizing time

            started = time.perf_counter()
            voxels = voxelize(mesh, args.resolution, fill=args.fill)
            seconds = time.perf_counter() - started
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        voxels.save(output)
        if args.preview is not None:
            _write_preview(voxels, args, output)
    except MeshError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err.filename or output}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"{args.mesh}: {len(voxels.indices):,} voxels at {args.resolution}^3 "
          f"({'solid' if args.fill else 'surface'}) in {seconds:.2f} s -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
