"""Occupancy grids as bytes: the coarse stage's grid in a packed file.

From packed format version 6 (:func:`encode_grid`) a grid is coded two ways and the smaller kept,
behind one byte that says which: CONTEXT or LZMA (the coding of versions 3-5: the bit-packed
grid, np.packbits in index order, as a raw LZMA2 stream).

CONTEXT codes each cell's bit with constriction's ANS coder (vox_tf.lossless.bernoulli_encode)
under an adaptive Bernoulli model. Its context is seven neighbours on the origin's side, one
step back along x, y, z, two of them, all three::

    context = 8 (faces occupied, 0-3) + 2 (edges occupied, 0-3) + corner (0-1)   # 32 contexts

and each context's probability is its counts so far (starting at 1/2 and 1/2). The cells go
in diagonal planes x + y + z = s: every neighbour of a cell's context lies on an earlier plane,
so a decoder reads a whole plane per coder call (3 Rc - 2 calls) and the counts are updated
plane by plane. A coarse grid is a shell of cells around the surface, which its neighbours
predict well: on the eight 256^3 seed grids' 32^3 grids (the default search's coarse nets)
CONTEXT takes 108-348 bytes where LZMA took 190-610. Larger contexts (three more neighbours,
32-512 contexts) moved those by -25 to +13 bytes. LZMA wins on regular shapes, whose rows
repeat from slice to slice: the cells a 128^3 ellipsoid shell occupies, pooled to 32^3, take
229 bytes with LZMA and 312 with CONTEXT.
"""

import numpy as np

from vox_tf import lossless

_BACK = np.array([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)])
_WEIGHT = np.array([8, 8, 8, 2, 2, 2, 1])
CONTEXTS = 32
_PRIOR = 0.5
CONTEXT, LZMA = 0, 1


def _planes(resolution):
    """int [3, n] cell coordinates per diagonal plane x + y + z = s, for s = 0 .. 3R - 3."""
    cells = np.indices((resolution,) * 3).reshape(3, -1)
    plane = cells.sum(axis=0)
    order = np.argsort(plane, kind="stable")
    bounds = np.searchsorted(plane[order], np.arange(3 * resolution - 1))
    return [cells[:, order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def _contexts(padded, cells):
    """int [n] contexts of ``cells`` in ``padded`` (the grid with one empty layer in front of
    each axis, as int8)."""
    x, y, z = cells + 1
    return sum(weight * padded[x - dx, y - dy, z - dz].astype(np.int64)
               for (dx, dy, dz), weight in zip(_BACK, _WEIGHT))


def _coded_planes(resolution, bits_of_plane):
    """Walks the planes in order: for each, its cells and occupancy probabilities; the bits
    ``bits_of_plane(cells, probabilities)`` returns are written into the grid and counted.
    Returns the bool [R, R, R] grid."""
    padded = np.zeros((resolution + 1,) * 3, np.int8)
    counts = np.full((CONTEXTS, 2), _PRIOR)
    for cells in _planes(resolution):
        context = _contexts(padded, cells)
        bits = np.asarray(bits_of_plane(cells, counts[context, 1] / counts[context].sum(axis=1)),
                          bool)
        padded[tuple(cells + 1)] = bits
        np.add.at(counts, (context, bits.astype(np.int64)), 1)
    return padded[1:, 1:, 1:].astype(bool)


def encode_grid(grid):
    """bool [R, R, R] -> bytes: a coding byte, then the grid coded that way (the smaller of
    CONTEXT and LZMA).

    Example:
        >>> grid = np.zeros((32, 32, 32), bool); grid[8:24, 8:24, 8:24] = True
        >>> np.array_equal(decode_grid(encode_grid(grid), 32), grid)
        True
    """
    grid = np.asarray(grid, bool)
    codings = {CONTEXT: _context_coded(grid),
               LZMA: lossless.compress(np.packbits(grid).tobytes())}
    method = min(codings, key=lambda m: len(codings[m]))
    return bytes([method]) + codings[method]


def _context_coded(grid):
    bits, probabilities = [], []

    def record(cells, plane_probabilities):
        bits.append(grid[tuple(cells)])
        probabilities.append(plane_probabilities)
        return bits[-1]

    _coded_planes(len(grid), record)
    return lossless.bernoulli_encode(np.concatenate(bits), np.concatenate(probabilities))


def decode_grid(data, resolution):
    """Inverse of :func:`encode_grid`: bool [R, R, R] for R = ``resolution``; ValueError for
    an unknown coding or an LZMA grid of another size."""
    if not data or data[0] not in (CONTEXT, LZMA):
        raise ValueError("unknown coarse grid coding")
    if data[0] == LZMA:
        return decode_lzma_grid(data[1:], resolution)
    decoder = lossless.BernoulliDecoder(data[1:])
    return _coded_planes(resolution, lambda cells, probabilities: decoder.decode(probabilities))


def decode_lzma_grid(data, resolution):
    """The LZMA coding (a packed file's coarse grid in versions 3-5, without the coding byte):
    ValueError when the bits are not R^3."""
    bits = np.frombuffer(lossless.decompress(data), np.uint8)
    cells = resolution ** 3
    if len(bits) != (cells + 7) // 8:
        raise ValueError(f"a coarse grid of {len(bits)} bytes for {resolution}^3 cells")
    return np.unpackbits(bits, count=cells).astype(bool).reshape((resolution,) * 3)
