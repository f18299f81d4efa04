"""Reading triangle meshes (OBJ, PLY, STL, OFF, GLB/GLTF) and normalizing them to the grid's cube.

Every way a file can be unusable ends in one :class:`vox_tf.MeshError` naming the file and
the reason; no exception of the underlying reader (trimesh) reaches the caller.

Normalization (METHOD.md): centre = (max + min) / 2 of the vertices, moved to the origin, then
scaled so the farthest vertex lies at distance 1: ``normalized = (vertex - center) * scale``.
"""

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from vox_tf.errors import MeshError

SUPPORTED_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")

# The fewest bytes one element can take in an ASCII OFF file ("0 0 0\n", "3 0 0 0\n"):
# a header claiming more elements than that allows is absurd, and is refused before any
# reader allocates arrays for it.
_MIN_OFF_VERTEX_BYTES = 6
_MIN_OFF_FACE_BYTES = 8


@dataclass
class Mesh:
    """A triangle mesh normalized to the unit ball, with the transform back.

    Attributes:
        vertices: float32 [V, 3], normalized: max |vertex| == 1, bounding box centred at 0.
        faces: int32 [F, 3] indices into ``vertices``.
        center: float64 [3]; normalized = (original - center) * scale.
        scale: float.
        source: the file (or description) the mesh came from, for messages.
        watertight: every edge is shared by exactly two faces (trimesh's ``is_watertight``);
            only then does filling the inside mean something.
    """

    vertices: np.ndarray
    faces: np.ndarray
    center: np.ndarray
    scale: float
    source: str
    watertight: bool

    def to_original(self, points):
        """Normalized points -> the file's coordinates (float64 [N, 3])."""
        return np.asarray(points, np.float64) / self.scale + self.center


def normalize(vertices):
    """Centres the bounding box at the origin and scales the farthest vertex to distance 1.

    Args:
        vertices: float [V, 3], V >= 1, finite, not all equal.
    Returns:
        (normalized float32 [V, 3], center float64 [3], scale float) with
        normalized = (vertices - center) * scale.

    Example:
        >>> normalize(np.array([[0., 0, 0], [2, 0, 0]]))[0]
        array([[-1.,  0.,  0.],
               [ 1.,  0.,  0.]], dtype=float32)
    """
    vertices = np.asarray(vertices, np.float64)
    center = (vertices.max(axis=0) + vertices.min(axis=0)) / 2.0
    radius = np.linalg.norm(vertices - center, axis=1).max()
    if not radius > 0:
        raise ValueError("all vertices coincide; there is nothing to normalize")
    scale = 1.0 / radius
    return ((vertices - center) * scale).astype(np.float32), center, float(scale)


def from_trimesh(tm, source):
    """A trimesh.Trimesh -> normalized :class:`Mesh`; raises MeshError(source, reason) if unusable.

    Unreferenced vertices are dropped before normalizing, so a stray vertex cannot shrink the
    model; duplicate vertices are merged, so the watertight test sees shared edges (STL files
    store every triangle's corners separately).

    Example:
        >>> from_trimesh(trimesh.creation.box(), "box").watertight
        True
    """
    vertices = np.asarray(tm.vertices, np.float64).reshape(-1, 3)
    faces = np.asarray(tm.faces).reshape(-1, 3) if len(tm.faces) else np.zeros((0, 3), np.int64)
    if len(faces) == 0:
        held = f"only {len(vertices)} vertices" if len(vertices) else "no triangles or polygons"
        raise MeshError(source, f"no faces ({held}: points and lines cannot be voxelized)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        bad = faces.max() if faces.max() >= len(vertices) else faces.min()
        raise MeshError(source, f"malformed faces: a face refers to vertex index {bad} but "
                                f"there are {len(vertices)} vertices")
    used = vertices[np.unique(faces)]
    if not np.isfinite(used).all():
        bad = int((~np.isfinite(used)).any(axis=1).sum())
        raise MeshError(source, f"{bad} vertices have NaN or infinite coordinates")
    corners = vertices[faces]
    areas = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]),
                           axis=1)
    if not (areas > 0).any():
        raise MeshError(source, f"all {len(faces)} faces are degenerate (zero area)")

    merged = trimesh.Trimesh(vertices, faces, process=True)
    merged.remove_unreferenced_vertices()
    normalized, center, scale = normalize(merged.vertices)
    return Mesh(vertices=normalized, faces=np.asarray(merged.faces, np.int32), center=center,
                scale=scale, source=str(source), watertight=bool(merged.is_watertight))


def load_mesh(path):
    """Reads a mesh file and normalizes it; raises MeshError naming the file on any bad input.

    Scenes (GLB/GLTF, multi-object files) are merged into one mesh with their transforms
    applied. Polygons are split into triangles.

    Args:
        path: a .obj, .ply, .stl, .off, .glb or .gltf file.
    Returns:
        :class:`Mesh`.

    Example:
        >>> mesh = load_mesh("bunny.obj")
        >>> float(np.linalg.norm(mesh.vertices, axis=1).max())
        1.0
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise MeshError(path, "no such file")
    if not path.is_file():
        raise MeshError(path, "not a file")
    if suffix not in SUPPORTED_SUFFIXES:
        raise MeshError(path, f"unsupported format '{path.suffix or '(no extension)'}' "
                              f"(supported: {' '.join(SUPPORTED_SUFFIXES)})")
    size = path.stat().st_size
    if size == 0:
        raise MeshError(path, "empty file (0 bytes)")

    off_faces = _check_off_header(path, size) if suffix == ".off" else None
    if suffix == ".obj":
        _check_obj_faces(path)
    try:
        tm = trimesh.load(str(path), file_type=suffix[1:], force="mesh", process=False)
    except MemoryError:
        raise MeshError(path, "too large to load into memory") from None
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file, said as such
        reason = f"cannot be read as {suffix[1:].upper()} ({_describe(err)})"
        raise MeshError(path, reason) from None
    if not isinstance(tm, trimesh.Trimesh):
        raise MeshError(path, f"holds no triangle mesh (found {type(tm).__name__})")
    # Polygons only ever become more triangles, so fewer faces than announced means the
    # reader skipped broken face lines.
    if off_faces is not None and len(tm.faces) < off_faces:
        raise MeshError(path, f"malformed face list: the header announces {off_faces} faces but "
                              f"only {len(tm.faces)} could be read")
    return from_trimesh(tm, path)


def _describe(err):
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _check_off_header(path, size):
    """Refuses an OFF header whose counts cannot fit in the file; returns the face count."""
    with open(path, "rb") as stream:
        head = stream.read(4096).decode("ascii", errors="replace")
    tokens = []
    for line in head.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            tokens.extend(line.split())
        if len(tokens) >= 4:
            break
    if not tokens or not tokens[0].upper().endswith("OFF"):
        raise MeshError(path, "not an OFF file (the first word is not 'OFF')")
    counts = tokens[1:3]
    if len(counts) < 2 or not all(re.fullmatch(r"\d+", c) for c in counts):
        raise MeshError(path, "malformed OFF header (expected 'OFF' then vertex and face counts)")
    n_vertices, n_faces = int(counts[0]), int(counts[1])
    if n_vertices * _MIN_OFF_VERTEX_BYTES + n_faces * _MIN_OFF_FACE_BYTES > size:
        raise MeshError(path, f"absurd OFF header (or truncated file): it announces "
                              f"{n_vertices} vertices and {n_faces} faces, more than a "
                              f"{size}-byte file can hold")
    return n_faces


_OBJ_INDEX = re.compile(rb"^[+-]?\d+")


def _check_obj_faces(path):
    """Refuses OBJ face indices that name no vertex; warns about face lines without indices.

    trimesh's reader wraps an index of 0 or an out-of-range negative index silently onto
    another vertex, so the indices are checked here against the vertices defined before each
    face (OBJ's rule for relative indices).
    """
    n_vertices = 0
    empty_lines = []
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, start=1):
            if line.startswith(b"v ") or line.startswith(b"v\t"):
                n_vertices += 1
            elif line.startswith(b"f ") or line.startswith(b"f\t") or line.rstrip() == b"f":
                words = line.split(b"#", 1)[0].split()[1:]
                if not words:
                    empty_lines.append(number)
                    continue
                for word in words:
                    match = _OBJ_INDEX.match(word)
                    index = int(match.group()) if match else 0
                    if index == 0 or index > n_vertices or -index > n_vertices:
                        raise MeshError(path, f"malformed face on line {number}: vertex index "
                                              f"'{word.decode(errors='replace')}' does not name "
                                              f"one of the {n_vertices} vertices defined before it")
    if empty_lines:
        warnings.warn(f"{path}: dropped {len(empty_lines)} face line(s) without vertex indices "
                      f"(line {', '.join(map(str, empty_lines[:5]))})", stacklevel=3)
