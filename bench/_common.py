"""What the benchmark scripts share: the shared real meshes, their fallback and ``--smoke``.

Every script takes ``--smoke``: the same code paths at the smallest sizes, so that
tests/test_bench.py can check in seconds that the script still runs and prints its figures.
Smoke figures measure nothing.
"""

from pathlib import Path

SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "meshes" / "real"


def parse_args(parser, smoke_defaults, argv=None):
    """Adds ``--smoke`` to ``parser`` and parses; with it, ``smoke_defaults`` replace the defaults.

    Options given explicitly still win over the smoke defaults.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser()
        >>> parser.add_argument("--repeats", type=int, default=3)
        >>> parse_args(parser, {"repeats": 1}, ["--smoke"]).repeats
        1
    """
    parser.add_argument("--smoke", action="store_true",
                        help="smallest sizes, to check in seconds that the benchmark runs "
                             f"({', '.join(f'{k}={v}' for k, v in smoke_defaults.items())})")
    known, _ = parser.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**smoke_defaults)
    return parser.parse_args(argv)


def shared_or_builtin(name, shape):
    """The normalized shared real mesh ``name``, or the built-in ``shape`` when it is absent.

    Example:
        >>> shared_or_builtin("bunny.obj", "torus").source  # on a machine without ../shared
        'torus'
    """
    from vox_tf.mesh_io import from_trimesh, load_mesh
    from vox_tf.shapes import builtin_shape

    path = SHARED_REAL / name
    return load_mesh(path) if path.exists() else from_trimesh(builtin_shape(shape), shape)
