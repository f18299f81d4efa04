"""voxel_dataset: meshes -> exact surface (or solid) voxels of each model, as TFRecords.

Configs ``surface_R`` and ``solid_R`` for R in 32, 64, 128, 256, 512. Sources are every mesh
file under ``--manual_dir`` (recursively), or the built-in procedural shapes of
``vox_tf.shapes`` when no manual dir is given. A mesh that cannot be read, or a non-watertight
mesh in a ``solid_`` config, is skipped with a warning and listed in ``info.metadata``.

With ``--beam_pipeline_options`` the meshes are voxelized inside a Beam pipeline (one mesh per
element), so the same builder runs on a Beam cluster for large collections.

Imports of vox_tf are absolute on purpose: ``tfds build`` run inside ``datasets/`` imports this
folder as the plain module ``voxel_dataset``, not as ``vox_tf.datasets.voxel_dataset``.
"""

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils.lazy_imports_utils import apache_beam as beam

from vox_tf.datasets.voxel_dataset.voxel_indices import VoxelIndices
from vox_tf.errors import MeshError
from vox_tf.mesh_io import SUPPORTED_SUFFIXES, from_trimesh, load_mesh
from vox_tf.shapes import BUILTIN_SHAPE_NAMES, builtin_shape
from vox_tf.voxelize import voxelize

RESOLUTIONS = (32, 64, 128, 256, 512)
BUILTIN_PREFIX = "builtin/"
_BEAM_NAMESPACE = "voxel_dataset"
_log = logging.getLogger(__name__)


@dataclasses.dataclass
class VoxelConfig(tfds.core.BuilderConfig):
    """A grid resolution and whether the inside is filled (``solid_``) or not (``surface_``)."""

    resolution: int = 256
    fill: bool = False


def _configs():
    configs = []
    for fill, kind in ((False, "surface"), (True, "solid")):
        for resolution in RESOLUTIONS:
            what = ("filled solids of watertight meshes" if fill else
                    "surface voxels (a shell of voxels touched by triangles)")
            configs.append(VoxelConfig(name=f"{kind}_{resolution}", resolution=resolution,
                                       fill=fill, description=f"{resolution}^3 grid, {what}."))
    return configs


@dataclasses.dataclass(frozen=True)
class MeshSource:
    """One model to voxelize: a file under the manual dir, or a built-in shape.

    Attributes:
        key: "relative/path.obj" or "builtin/<shape>"; unique, the example's key and `source`.
        path: absolute file path, or "" for a built-in shape.
    """

    key: str
    path: str = ""

    @property
    def name(self):
        return Path(self.key).stem

    def load(self):
        """-> vox_tf.mesh_io.Mesh; raises MeshError naming the source if it is unusable."""
        if self.path:
            return load_mesh(self.path)
        return from_trimesh(builtin_shape(self.key[len(BUILTIN_PREFIX):]), self.key)


def mesh_sources(manual_dir):
    """Every mesh file under ``manual_dir`` (recursively, sorted), or the built-in shapes.

    Args:
        manual_dir: a folder, or None for the built-in shapes.
    Returns:
        (list of MeshSource, list of relative paths of other files, which are ignored).
    """
    if manual_dir is None:
        return [MeshSource(BUILTIN_PREFIX + name) for name in BUILTIN_SHAPE_NAMES], []
    root = Path(manual_dir)
    sources, ignored = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() in SUPPORTED_SUFFIXES:
            sources.append(MeshSource(relative, str(path)))
        else:
            ignored.append(relative)
    return sources, ignored


def voxelize_source(source: MeshSource, resolution, fill):
    """One source -> features of its example, or the reason it is skipped (a str).

    Never raises for a bad mesh, so one broken file cannot stop a build.
    """
    try:
        mesh = source.load()
    except MeshError as err:
        return f"broken: {err.reason}"
    if fill and not mesh.watertight:
        return "not watertight: a solid config only fills closed meshes"
    voxels = voxelize(mesh, resolution, fill=fill)
    return {
        "name": source.name,
        "source": source.key,
        "resolution": resolution,
        "indices": voxels.indices,
        "center": np.asarray(voxels.center, np.float64),
        "scale": np.float64(voxels.scale),
        "num_faces": len(mesh.faces),
        "watertight": mesh.watertight,
    }


def _warn_skipped(key, reason):
    warnings.warn(f"voxel_dataset: skipped {key}: {reason}", stacklevel=2)


def _beam_examples(numbered_source, resolution, fill):
    """Beam step: yields (number, features) for a usable mesh, counts and names a skipped one."""
    number, source = numbered_source
    outcome = voxelize_source(source, resolution, fill)
    if isinstance(outcome, dict):
        yield number, outcome
        return
    _warn_skipped(source.key, outcome)
    kind = "broken" if outcome.startswith("broken") else "not_watertight"
    beam.metrics.Metrics.counter(_BEAM_NAMESPACE, f"skipped_{kind}").inc()
    beam.metrics.Metrics.string_set(_BEAM_NAMESPACE, "skipped").add(f"{source.key}\t{outcome}")


class Builder(tfds.core.GeneratorBasedBuilder):
    """Voxels of 3D models (surface or solid) at 32^3 to 512^3, one example per mesh."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _configs()
    DEFAULT_CONFIG_NAME = "surface_256"
    # TFDS would look for README.md under vox_tf/datasets/..., which is not where an editable
    # install (package_dir maps vox_tf.datasets onto datasets/) keeps it.
    pkg_dir_path = epath.Path(__file__).parent
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional. Put mesh files (.obj .ply .stl .off .glb .gltf; sub-folders are searched) "
        "in a folder and pass it as --manual_dir. Without it the built-in procedural shapes "
        "of vox_tf.shapes are used.")

    def _info(self):
        dtype = np.uint8 if self.builder_config.resolution <= 256 else np.uint16
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "name": tfds.features.Text(doc="file name without suffix, or the shape's name"),
                "source": tfds.features.Text(doc="path relative to the manual dir, or builtin/<shape>"),
                "resolution": tfds.features.Scalar(np.int32, doc="R of the R^3 grid"),
                "indices": VoxelIndices(dtype=dtype, doc="occupied voxels (i, j, k), sorted"),
                # tf.train.Example keeps floats as float32: raw bytes keep float64 exact.
                "center": tfds.features.Tensor(shape=(3,), dtype=np.float64, encoding="bytes",
                                               doc="normalized = (original - center) * scale"),
                "scale": tfds.features.Tensor(shape=(), dtype=np.float64, encoding="bytes"),
                "num_faces": tfds.features.Scalar(np.int64, doc="triangles of the loaded mesh"),
                "watertight": tfds.features.Scalar(np.bool_),
            }),
            homepage="https://github.com/tensorflow/datasets",
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError:  # TFDS's way of saying: no (or an empty) manual dir
            manual_dir = None
        sources, ignored = mesh_sources(manual_dir)
        if ignored:
            _log.info("voxel_dataset: ignoring %d files that are not meshes (%s)",
                      len(ignored), ", ".join(ignored[:5]))
        self.info.metadata.update({"sources": len(sources), "ignored_files": len(ignored)})
        return {"train": self._generate_examples(sources)}

    def _download_and_prepare(self, dl_manager, download_config):
        # Beam only when asked for, so a plain `tfds build` stays a quick in-process loop.
        self._use_beam = bool(download_config.beam_options or download_config.beam_runner)
        super()._download_and_prepare(dl_manager, download_config)

    def _generate_examples(self, sources):
        # Example keys are the sources' positions in their sorted list: ints, because the Beam
        # writer of unshuffled datasets needs numeric keys, and the same on both paths.
        config = self.builder_config
        if getattr(self, "_use_beam", False):
            return (beam.Create(list(enumerate(sources)))
                    | beam.Reshuffle()  # spread the meshes over workers
                    | beam.FlatMap(_beam_examples, config.resolution, config.fill))
        return self._examples_in_process(sources)

    def _examples_in_process(self, sources):
        config = self.builder_config
        skipped = []
        for number, source in enumerate(tfds.core.utils.tqdm(
                sources, desc=f"Voxelizing at {config.resolution}^3", unit=" meshes",
                leave=False)):
            outcome = voxelize_source(source, config.resolution, config.fill)
            if isinstance(outcome, dict):
                yield number, outcome
            else:
                _warn_skipped(source.key, outcome)
                skipped.append((source.key, outcome))
        self._record_skipped(skipped)

    def _process_pipeline_result(self, pipeline_result):
        query = pipeline_result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace(_BEAM_NAMESPACE))
        names = set()
        for result in query.get("string_sets", []):
            names |= set(result.committed or result.attempted or ())
        self._record_skipped(sorted(tuple(name.split("\t", 1)) for name in names))

    def _record_skipped(self, skipped):
        """Puts the skipped meshes, their reasons and counts in info.metadata."""
        broken = sum(reason.startswith("broken") for _, reason in skipped)
        self.info.metadata.update({
            "skipped": [{"source": key, "reason": reason} for key, reason in skipped],
            "skipped_broken": broken,
            "skipped_not_watertight": len(skipped) - broken,
        })
