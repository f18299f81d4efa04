"""A packed model -> its voxel grid: ``python -m vox_tf.unpack MODEL.vxz -o GRID.npz``.

The output is the .npz of ``python -m vox_tf.voxelize`` (vox_tf.grid.VoxelGrid). A lossless
file is checked against the digest of the grid it was packed from: a decode that differs
(e.g. networks evaluated differently on another machine) is an error, never a silent change.
"""

import argparse
import sys
from pathlib import Path

from vox_tf.errors import MeshError
from vox_tf.packed_model import grid_digest, read


def unpack(path):
    """A .vxz file -> VoxelGrid of its reconstruction; MeshError if a lossless decode differs.

    Example:
        >>> unpack("bunny.vxz").indices.shape
        (175613, 3)
    """
    reconstructor = read(path)
    grid = reconstructor.predict_grid()
    expected = reconstructor.metrics.get("grid_digest")
    if expected is not None and grid_digest(grid).hex() != expected:
        raise MeshError(path, "the lossless decode differs from the grid it was packed from")
    voxels = reconstructor.to_voxel_grid()
    voxels.source = str(path)
    return voxels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vox_tf.unpack",
                                description="Decode a packed .vxz model into a voxel .npz file.")
    p.add_argument("model", type=Path, help="the .vxz file of python -m vox_tf.pack")
    p.add_argument("-o", "--output", type=Path, required=True, help="the voxel .npz to write")
    args = p.parse_args(argv)
    try:
        if args.output.suffix != ".npz":
            raise MeshError(args.output, "the voxel file's name must end in .npz")
        voxels = unpack(args.model)
        voxels.save(args.output)
    except MeshError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model}: {len(voxels.indices):,} voxels at {voxels.resolution}^3 -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
