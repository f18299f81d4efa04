"""Peak resident memory of building the fine-stage training set of a real mesh.

Each resolution runs in a fresh process, so one's peak does not hide the next's.

    python bench/sampling.py [MESH] [--resolutions 256 512]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MESH = Path(__file__).resolve().parents[2] / "shared" / "meshes" / "real" / "bunny.obj"


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(mesh, resolution):
    """Voxelizes, then builds the fine set with a perfect coarse mask; returns figures."""
    from vox_tf.sampling import coarse_grid, fine_samples, upsample_mask
    from vox_tf.voxelize import voxelize_file

    voxels = voxelize_file(mesh, resolution)
    mask = upsample_mask(coarse_grid(voxels), resolution)
    before = _peak_mib()
    start = time.perf_counter()
    samples = fine_samples(voxels, mask)
    seconds = time.perf_counter() - start
    return {"resolution": resolution, "occupied": len(voxels.indices),
            "mask_voxels": int(mask.sum()), **samples.counts(),
            "seconds": round(seconds, 2), "peak_mib_before": round(before),
            "peak_mib": round(_peak_mib())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", nargs="?", default=str(DEFAULT_MESH))
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.mesh, args.resolutions[0])))
        return
    print(f"fine set of {args.mesh} (mask = upsampled exact 32^3 occupancy)")
    for resolution in args.resolutions:
        out = subprocess.run([sys.executable, __file__, args.mesh, "--one", "--resolutions",
                              str(resolution)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"R={row['resolution']}: occupied {row['occupied']:,}, mask {row['mask_voxels']:,}, "
              f"support {row['repeated']:,} x{row['repeats']}, rest {row['once']:,}, "
              f"{row['samples']:,} samples/epoch; built in {row['seconds']} s; "
              f"peak RSS {row['peak_mib']} MiB (before building the set: "
              f"{row['peak_mib_before']} MiB)")


if __name__ == "__main__":
    main()
