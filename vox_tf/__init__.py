"""vox_tf: one 3D model -> the smallest neural network that reconstructs its voxels."""

from vox_tf import _oplib, console
from vox_tf.errors import MeshError

if console.is_vox_tf_command():
    # Before any vox_tf module imports TensorFlow: its start-up log reads like failures.
    console.quiet_tensorflow_start()
    console.quiet_expected_warnings()

# Refuse a missing or stale compiled library at import, with the command that fixes it,
# rather than a crash deep inside TensorFlow at first use.
_oplib.check_build()

__version__ = "0.1.0"


def load(path):
    """Loads a reconstructor saved by ``python -m vox_tf.train``, ``vox_tf.search`` or ``vox_tf.pack``.

    Args:
        path: the model directory (both stages' .keras files and metadata.json), or a packed
            model file (.vxz of ``python -m vox_tf.pack``).
    Returns:
        vox_tf.hierarchy.HierarchicalReconstructor; ``.predict_grid()`` gives bool [R, R, R].

    Example:
        >>> grid = vox_tf.load("runs/demo/model").predict_grid()
    """
    # Imported here so that `import vox_tf` stays free of Keras until a model is needed.
    from pathlib import Path

    if Path(path).is_file() or Path(path).suffix == ".vxz":  # a missing .vxz: say so as one
        from vox_tf.packed_model import read

        return read(path)
    from vox_tf.hierarchy import load as load_reconstructor

    return load_reconstructor(path)


__all__ = ["MeshError", "load", "__version__"]
