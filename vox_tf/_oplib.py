"""Finds the compiled custom-op library and checks it matches the installed TensorFlow.

Kept free of TensorFlow imports so that ``import vox_tf`` can refuse a stale build at once
and cheaply; the library itself is loaded by :func:`load` on first use of an op.
"""

import functools
import importlib.machinery
import json
from importlib import metadata
from pathlib import Path

_HERE = Path(__file__).resolve().parent / "ops"
BUILD_INFO = _HERE / "_build_info.json"
REBUILD_HINT = ("rebuild it in the vox_tf checkout with `make build` "
                "(or `pip install --no-build-isolation -e .`)")


def library_path():
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = _HERE / f"_vox_ops{suffix}"
        if candidate.exists():
            return candidate
    return None


def check_build():
    """Raises ImportError with a rebuild hint if the library is missing or stale."""
    path = library_path()
    if path is None or not BUILD_INFO.exists():
        raise ImportError(f"vox_tf's compiled ops are missing from {_HERE}: {REBUILD_HINT}")
    built_with = json.loads(BUILD_INFO.read_text())["tensorflow"]
    installed = metadata.version("tensorflow")
    if built_with != installed:
        raise ImportError(
            f"vox_tf's compiled ops ({path.name}) were built against TensorFlow {built_with} "
            f"but TensorFlow {installed} is installed: {REBUILD_HINT}")
    return path


@functools.cache
def load():
    """The loaded op module (tf.load_op_library), or ImportError with a rebuild hint."""
    import tensorflow as tf

    path = check_build()
    try:
        return tf.load_op_library(str(path))
    except tf.errors.NotFoundError as err:
        raise ImportError(f"vox_tf's compiled ops ({path}) cannot be loaded ({err}): "
                          f"{REBUILD_HINT}") from None


def built_with_cuda():
    """Whether the library holds the CUDA kernels."""
    return bool(json.loads(BUILD_INFO.read_text()).get("cuda", False))
