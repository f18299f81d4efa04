"""Peak resident memory of building the fine-stage training set of a real mesh.

Each resolution runs in a fresh process, so one's peak does not hide the next's.

    python bench/sampling.py [MESH] [--resolutions 256 512] [--smoke]

Without MESH: bunny.obj of ../shared/meshes/real, or the built-in torus when that is absent.
``--smoke``: 64^3 only.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

from _common import parse_args, shared_or_builtin

SMOKE = {"resolutions": [64]}


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(mesh, resolution):
    """Voxelizes, then builds the fine set with a perfect coarse mask; returns figures."""
    from vox_tf.mesh_io import load_mesh
    from vox_tf.sampling import coarse_grid, fine_samples, upsample_mask
    from vox_tf.voxelize import voxelize

    voxels = voxelize(load_mesh(mesh) if mesh else shared_or_builtin("bunny.obj", "torus"),
                      resolution)
    mask = upsample_mask(coarse_grid(voxels), resolution)
    before = _peak_mib()
    start = time.perf_counter()
    samples = fine_samples(voxels, mask)
    seconds = time.perf_counter() - start
    return {"source": voxels.source, "resolution": resolution, "occupied": len(voxels.indices),
            "mask_voxels": int(mask.sum()), **samples.counts(),
            "seconds": round(seconds, 2), "peak_mib_before": round(before),
            "peak_mib": round(_peak_mib())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", nargs="?", help="default: the shared bunny, else a torus")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE, argv)
    if args.one:
        print(json.dumps(measure(args.mesh, args.resolutions[0])))
        return
    for number, resolution in enumerate(args.resolutions):
        out = subprocess.run([sys.executable, __file__, *filter(None, [args.mesh]), "--one",
                              "--resolutions", str(resolution)],
                             stdout=subprocess.PIPE, text=True, check=True)  # stderr: shown
        row = json.loads(out.stdout.strip().splitlines()[-1])
        if number == 0:
            print(f"fine set of {row['source']} (mask = upsampled exact 32^3 occupancy)")
        print(f"R={row['resolution']}: occupied {row['occupied']:,}, mask {row['mask_voxels']:,}, "
              f"support {row['repeated']:,} x{row['repeats']}, rest {row['once']:,}, "
              f"{row['samples']:,} samples/epoch; built in {row['seconds']} s; "
              f"peak RSS {row['peak_mib']} MiB (before building the set: "
              f"{row['peak_mib_before']} MiB)")


if __name__ == "__main__":
    main()
