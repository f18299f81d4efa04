"""TFDS builders of vox_tf, installed as ``vox_tf.datasets``.

Importing this package registers the ``voxel_dataset`` builder, so
``tfds build voxel_dataset --imports vox_tf.datasets`` and
``tfds.load("voxel_dataset/surface_256")`` (after ``import vox_tf.datasets``) find it.
"""

from vox_tf.datasets.voxel_dataset import voxel_dataset_dataset_builder

__all__ = ["voxel_dataset_dataset_builder"]
