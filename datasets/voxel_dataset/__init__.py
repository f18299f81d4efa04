"""voxel_dataset: meshes -> voxel TFRecords (see README.md)."""
