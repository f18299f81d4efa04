"""vox_tf: one 3D model -> the smallest neural network that reconstructs its voxels."""

from vox_tf.errors import MeshError
from vox_tf import _oplib as _library

# Refuse a missing or stale compiled library at import, with the command that fixes it,
# rather than a crash deep inside TensorFlow at first use.
_library.check_build()

__version__ = "0.1.0"
__all__ = ["MeshError", "__version__"]
