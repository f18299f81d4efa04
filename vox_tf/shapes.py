"""Procedural 3D models, so that every tool has something to work on without the user's data.

:func:`builtin_shapes` gives primitives of ``trimesh.creation`` and boolean combinations of
them (constructive solid geometry). The booleans are evaluated on signed distance fields and
meshed with marching cubes: trimesh's own mesh booleans need the ``manifold3d`` engine, which
vox_tf does not depend on, and a distance field gives the same watertight solid on every
machine. Everything here is deterministic: the same call gives the same vertices.
"""

import numpy as np
import trimesh
from skimage import measure

# Marching-cubes samples across the cube [-1, 1]^3: fine enough that the composites keep
# their holes and handles at 512^3 voxels' worth of detail without heavy meshes (20-60k faces).
CSG_SAMPLES = 96


def _sphere(points, center, radius):
    return np.linalg.norm(points - np.asarray(center, np.float64), axis=-1) - radius


def _box(points, half_extents):
    q = np.abs(points) - np.asarray(half_extents, np.float64)
    return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(axis=-1), 0.0)


def _cylinder(points, radius, half_height, axis=2, center=(0.0, 0.0, 0.0)):
    p = points - np.asarray(center, np.float64)
    radial = np.linalg.norm(np.delete(p, axis, axis=-1), axis=-1) - radius
    axial = np.abs(p[..., axis]) - half_height
    outside = np.hypot(np.maximum(radial, 0.0), np.maximum(axial, 0.0))
    return outside + np.minimum(np.maximum(radial, axial), 0.0)


def _torus(points, major_radius, minor_radius, axis=2, center=(0.0, 0.0, 0.0)):
    p = points - np.asarray(center, np.float64)
    ring = np.linalg.norm(np.delete(p, axis, axis=-1), axis=-1) - major_radius
    return np.hypot(ring, p[..., axis]) - minor_radius


def _mesh_from_distance(distance, samples=CSG_SAMPLES):
    """Signed distance function (negative inside) -> watertight trimesh.Trimesh of its zero set.

    Args:
        distance: callable float64 [..., 3] -> float64 [...], defined on [-1.1, 1.1]^3;
            the solid must lie inside [-1, 1]^3 so the sampled box closes it.
    """
    axis = np.linspace(-1.1, 1.1, samples)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    step = axis[1] - axis[0]
    # marching_cubes treats larger values as inside with its default gradient direction.
    vertices, faces, _, _ = measure.marching_cubes(-distance(points), level=0.0,
                                                   spacing=(step, step, step))
    mesh = trimesh.Trimesh(vertices + axis[0], faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _rounded_cube_with_holes():
    """The classic CSG example: (cube AND sphere) minus three crossing cylinders."""
    def distance(p):
        body = np.maximum(_box(p, [0.7, 0.7, 0.7]), _sphere(p, [0, 0, 0], 0.92))
        holes = np.minimum.reduce([_cylinder(p, 0.38, 1.0, axis=a) for a in range(3)])
        return np.maximum(body, -holes)
    return _mesh_from_distance(distance)


def _mug():
    """A cup (a cylinder hollowed from the top) with a torus handle: genus one, thin walls."""
    def distance(p):
        cup = np.maximum(_cylinder(p, 0.55, 0.7),
                         -_cylinder(p, 0.45, 0.7, center=(0, 0, 0.12)))
        handle = np.maximum(_torus(p, 0.3, 0.08, axis=1, center=(0.55, 0, 0)),
                            -_cylinder(p, 0.5, 0.8))
        return np.minimum(cup, handle)
    return _mesh_from_distance(distance)


def _dumbbell():
    """Two spheres joined by a bar: a union of three solids."""
    def distance(p):
        return np.minimum.reduce([_sphere(p, [-0.6, 0, 0], 0.38), _sphere(p, [0.6, 0, 0], 0.38),
                                  _cylinder(p, 0.12, 0.6, axis=0)])
    return _mesh_from_distance(distance)


def _cloth():
    """A wavy open sheet, like a piece of cloth: NOT watertight (a surface, no inside)."""
    u = np.linspace(-0.9, 0.9, 61)
    x, y = np.meshgrid(u, u, indexing="ij")
    z = 0.15 * np.sin(3.0 * x) * np.cos(2.0 * y)
    vertices = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    n = len(u)
    corner = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    faces = np.concatenate([np.stack([corner, corner + n, corner + 1], axis=1),
                            np.stack([corner + 1, corner + n, corner + n + 1], axis=1)])
    return trimesh.Trimesh(vertices, faces, process=True)


_SHAPES = {
    "box": lambda: trimesh.creation.box(extents=[1.6, 1.0, 0.6]),
    "sphere": lambda: trimesh.creation.icosphere(subdivisions=3, radius=0.9),
    "cylinder": lambda: trimesh.creation.cylinder(radius=0.5, height=1.6, sections=48),
    "capsule": lambda: trimesh.creation.capsule(height=1.0, radius=0.4, count=[32, 32]),
    "cone": lambda: trimesh.creation.cone(radius=0.7, height=1.4, sections=48),
    "torus": lambda: trimesh.creation.torus(major_radius=0.65, minor_radius=0.25,
                                            major_sections=64, minor_sections=24),
    "annulus": lambda: trimesh.creation.annulus(r_min=0.4, r_max=0.8, height=0.3, sections=48),
    "rounded_cube_with_holes": _rounded_cube_with_holes,
    "mug": _mug,
    "dumbbell": _dumbbell,
    "cloth": _cloth,
}

DEFAULT_SHAPE = "rounded_cube_with_holes"
BUILTIN_SHAPE_NAMES = tuple(_SHAPES)


def builtin_shapes():
    """{name: trimesh.Trimesh}: the built-in models, freshly made (callers may modify them).

    Eleven shapes: seven ``trimesh.creation`` primitives, three boolean composites
    (``rounded_cube_with_holes``, ``mug``, ``dumbbell``) and one open surface (``cloth``,
    the only one that is not watertight, so solid voxelization skips it).

    Example:
        >>> sorted(builtin_shapes())[:3]
        ['annulus', 'box', 'capsule']
    """
    return {name: make() for name, make in _SHAPES.items()}


def builtin_shape(name):
    """One built-in model by name (see BUILTIN_SHAPE_NAMES), without making the others.

    Example:
        >>> len(builtin_shape("box").faces)
        12
    """
    if name not in _SHAPES:
        raise KeyError(f"no built-in shape {name!r}; there are {', '.join(_SHAPES)}")
    return _SHAPES[name]()


def default_shape():
    """The model tools use when given none: a cube cut by a sphere and drilled three ways.

    Example:
        >>> default_shape().is_watertight
        True
    """
    return builtin_shape(DEFAULT_SHAPE)


def random_blob(seed, faces=50_000):
    """A closed star-shaped blob of about ``faces`` triangles, different for every seed.

    A UV sphere whose radius is modulated by a few random low-frequency waves; meant for
    benchmarks that need many distinct meshes of a chosen size.

    Example:
        >>> len(random_blob(0, faces=2000).faces) in range(1800, 2200)
        True
    """
    rng = np.random.default_rng(seed)
    # uv_sphere(count=[n, n]) has 4 n (n - 2) triangles.
    rings = max(4, int(round(np.sqrt(faces / 4.0))) + 1)
    mesh = trimesh.creation.uv_sphere(radius=1.0, count=[rings, rings])
    directions = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    waves = rng.normal(size=(6, 3)) * 2.5
    amplitudes = rng.uniform(0.03, 0.12, size=6)
    phases = rng.uniform(0, 2 * np.pi, size=6)
    radius = 1.0 + (amplitudes * np.sin(directions @ waves.T + phases)).sum(axis=1)
    mesh.vertices = directions * radius[:, None]
    return mesh
