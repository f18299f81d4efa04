"""The packed model file (.vxz): the coarse mask and the k-bit fine net, in one small file.

Layout (little-endian)::

    magic "VXZ\\0" | version u8 | payload length u32 | CRC-32 of the payload u32 | payload
    payload:
        grid     resolution u16, coarse resolution u16, bits u8, lossless u8,
                 center 3 x f64, scale f64, the first Dense kernel's bits beyond ``bits`` u8
                 (version 4; 2 before), the tri-plane lattices' bits beyond ``bits`` u8
                 (version 5; 4 before), the later Dense kernels' bits beyond ``bits`` u8
                 (version 7; 0 before)
        coarse   length u32, then the coarse net's occupancy on the Rc^3 grid
                 (vox_tf.grid_coding: version 6 context-codes it or takes LZMA2, whichever
                 is smaller; versions 3-5 bit-packed it and took LZMA2)
        fine net positional levels u8 (255: none), tri-plane resolution u16 (0: none),
                 tri-plane channels u8, layers u8, then per layer units u16 and activation
                 u8 (index in vox_tf.models.ACTIVATIONS)
        weights  length u32, then the fine tensors' scales and levels (model.weights order;
                 vox_tf.weight_coding), each tensor at its vox_tf.quantization.weight_bits for
                 the file's ``bits``; of the tri-plane lattice only the nodes some voxel of
                 the mask reads (:func:`read_plane_nodes`), as [nodes, C]
        residual (lossless only) coding u8, grid digest 8 bytes, length u32, bytes
                 (vox_tf.lossless; its probability coding holds a calibration temperature
                 since version 3)

The coarse stage is stored as what it computes, not as the network: the coarse net is only
ever asked on the Rc^3 grid, and its prediction there costs 109-349 bytes on the eight
256^3 seed grids (190-610 as LZMA2) where the net takes 1,077-2,665 at 4 bits;
the mask is the float32 coarse net's, so no coarse error is added. Versions 1 and 2 (still
read) held the coarse net's weights beside the fine net's (``nets`` records for both);
version 1 also held every tensor at ``bits``, the tri-planes with square-law levels.

Version 7 (:data:`VERSION`) records the extra bits of the Dense kernels after the first
(vox_tf.quantization.ExtraBits.later_kernels, ``vox_tf.pack --later-extra-bits``). Version 6
context-codes the coarse grid (CODED_GRID_SINCE) and entropy-codes the channel scales
(vox_tf.weight_coding.CODED_SCALES_SINCE): 137-445 bytes less a file on the eight seed grids.
Version 5 recorded the tri-plane lattices' extra bits too (a lossless file
may take fewer than 4). Version 4 stored the channel scales as one byte each, dropped the
unread tri-plane nodes and recorded the first Dense kernel's extra bits; version 3 held float16
scales, the lattice whole (its unread nodes as zeros) and that kernel at 2 more bits. Every
older version is still read.

The fine net's architecture is those few bytes: the decoder rebuilds it with
vox_tf.models.build_occupancy_model, which fixes every tensor's shape, and sets the
dequantized weights.
"""

import hashlib
import lzma
import struct
import zlib
from pathlib import Path

import numpy as np

from vox_tf import grid_coding, lossless
from vox_tf.errors import MeshError
from vox_tf.files import atomic_output
from vox_tf.grid import voxel_centers
from vox_tf.hierarchy import HierarchicalReconstructor
from vox_tf.layers import PLANE_AXES
from vox_tf.models import ACTIVATIONS, TriPlaneConfig, arch_of, build_occupancy_model
from vox_tf.quantization import (DEFAULT_EXTRA_BITS, ExtraBits, QuantizedTensor, quantize,
                                 quantize_model, weight_bits)
from vox_tf.sampling import coarse_cells
from vox_tf.weight_coding import read_weights_section, weights_section

MAGIC = b"VXZ\0"
VERSION = 7
CODED_GRID_SINCE = 6
"""Files of this version on hold the coarse grid context-coded (vox_tf.grid_coding)."""
SUFFIX = ".vxz"
_PREAMBLE = struct.Struct("<4sBII")
_GRID = struct.Struct("<HHBB3dd")
_NET = struct.Struct("<BHBB")
_LAYER = struct.Struct("<HB")
_LENGTH = struct.Struct("<I")
_EXTRA_BITS = struct.Struct("<BBB")
_EXTRA_BITS_V5 = struct.Struct("<BB")
_INPUT_LAYER_EXTRA_BITS = struct.Struct("<B")
UNRECORDED_EXTRA_BITS = ExtraBits(input_layer=2, planes=4, later_kernels=0)
"""What older files packed with and did not record: the first Dense kernel's before version
4, the tri-plane lattices' before version 5, the later Dense kernels' before version 7."""
NO_POSITIONAL = 255


def grid_digest(grid):
    """8 bytes identifying a bool [R, R, R] grid: a lossless file's check on its decode."""
    return hashlib.sha256(np.packbits(np.asarray(grid, bool)).tobytes()).digest()[:8]


def encodings_of(model):
    """(positional levels or None, TriPlaneConfig or None) of a vox_tf.models network."""
    names = {layer.name: layer for layer in model.layers}
    positional = names["positional"].levels if "positional" in names else None
    planes = names.get("triplane")
    return positional, None if planes is None else TriPlaneConfig(planes.resolution, planes.channels)


def _net_record(model):
    positional, planes = encodings_of(model)
    arch = arch_of(model)
    record = _NET.pack(NO_POSITIONAL if positional is None else positional,
                       planes.resolution if planes else 0, planes.channels if planes else 0,
                       len(arch))
    return record + b"".join(_LAYER.pack(units, ACTIVATIONS.index(act)) for units, act in arch)


def _read_net(reader, name):
    positional, plane_resolution, channels, depth = reader.unpack(_NET)
    arch = []
    for _ in range(depth):
        units, activation = reader.unpack(_LAYER)
        if activation >= len(ACTIVATIONS):
            raise ValueError(f"unknown activation code {activation}")
        arch.append((units, ACTIVATIONS[activation]))
    planes = TriPlaneConfig(plane_resolution, channels) if plane_resolution else None
    return build_occupancy_model(arch, None if positional == NO_POSITIONAL else positional,
                                 planes, name=name)


def pack(reconstructor, bits, residual=None, extra_bits=DEFAULT_EXTRA_BITS):
    """A reconstructor -> the bytes of its .vxz file, and what each part costs.

    Args:
        reconstructor: HierarchicalReconstructor; its coarse grid is stored as it is, its fine
            net's weights quantized (already k-bit after fine-tuning: quantizing again leaves
            them unchanged, unless zeroing the unread tri-plane nodes narrows a channel's
            scale), all but the tri-plane nodes that no voxel of the mask reads.
        bits: one of vox_tf.quantization.BITS.
        residual: optional (method, bytes, digest) of vox_tf.lossless for a lossless file.
        extra_bits: vox_tf.quantization.ExtraBits of the first Dense kernel, the
            tri-plane lattices and the later Dense kernels, recorded in the file.
    Returns:
        (bytes, dict of sizes: total, coarse_grid, residual, the fine weights coded each
        way (weights_ans, weights_lzma, weights_mixed, scales included), the coder kept and
        the extra_bits).

    Example:
        >>> data, sizes = pack(vox_tf.load("runs/bunny"), 8)
    """
    occupancy = reconstructor.coarse_grid()  # a coarse net call for a run directory: once
    coarse = grid_coding.encode_grid(occupancy)
    fine = reconstructor.fine
    nodes = read_plane_nodes(fine, occupancy, reconstructor.resolution)
    tensors = [quantize(w, b) for w, b in zip(_zero_unread_nodes(fine, nodes),
                                               weight_bits(fine, bits, extra_bits))]
    weights, sizes = weights_section(_without_unread_nodes(tensors, nodes))
    payload = (_GRID.pack(reconstructor.resolution, reconstructor.coarse_resolution, bits,
                          residual is not None, *reconstructor.center, reconstructor.scale)
               + _EXTRA_BITS.pack(extra_bits.input_layer, extra_bits.planes,
                                  extra_bits.later_kernels)
               + _LENGTH.pack(len(coarse)) + coarse + _net_record(fine)
               + _LENGTH.pack(len(weights)) + weights)
    if residual is not None:
        method, data, digest = residual
        payload += struct.pack("<B8sI", method, digest, len(data)) + data
    blob = _PREAMBLE.pack(MAGIC, VERSION, len(payload), zlib.crc32(payload)) + payload
    return blob, {"total": len(blob), "coarse_grid": len(coarse),
                  "residual": len(residual[1]) if residual else 0,
                  "extra_bits": extra_bits, **sizes}


def read_plane_nodes(fine, coarse_occupancy, resolution):
    """(index of the tri-plane lattice in fine.weights, bool [3, L+1, L+1]: the nodes some
    voxel of the mask reads), or None for a fine net without tri-planes.

    The fine net is only ever asked inside the mask, and the decoder knows the mask from the
    coarse grid before it reads the weights, so only these nodes are stored. A voxel reads on
    plane (a, b) by its a and b coordinates alone, so the mask's shadow on that plane (the
    coarse grid's, upsampled) gives them without the R^3 mask.

    Args:
        fine: the fine keras.Model.
        coarse_occupancy: bool [Rc, Rc, Rc], the coarse stage's grid (the mask's source).
        resolution: R of the fine grid.
    """
    planes = {layer.name: layer for layer in fine.layers}.get("triplane")
    if planes is None:
        return None
    lattice = planes.resolution
    centers = voxel_centers(np.arange(resolution), resolution)
    # TriPlaneEncoding's corner rule: lower node clamped to lattice - 1, and the one above it.
    lower = np.minimum(np.floor(np.clip((centers + 1.0) * (0.5 * lattice), 0, lattice)),
                       lattice - 1).astype(np.int64)
    cell = coarse_cells(np.arange(resolution), len(coarse_occupancy), resolution)
    read = np.zeros((len(PLANE_AXES), lattice + 1, lattice + 1), bool)
    for plane, axes in enumerate(PLANE_AXES):
        (other,) = set(range(3)) - set(axes)  # axes are in increasing order
        a, b = np.nonzero(coarse_occupancy.any(axis=other)[np.ix_(cell, cell)])
        for da in (0, 1):
            for db in (0, 1):
                read[plane, lower[a] + da, lower[b] + db] = True
    return next(i for i, w in enumerate(fine.weights) if w is planes.planes), read


def fine_weights_as_packed(reconstructor):
    """The fine net's weights with the tri-plane nodes that no voxel of the mask reads set to 0
    (:func:`read_plane_nodes`): they change no answer, and as zeros they no longer widen their
    channel's quantization scale. (Fine-tuning keeps them: its samples, spread inside the mask's
    cells, read nodes that no voxel center does; zeroed, 4 epochs on the 64^3 shell of
    tests/test_pack.py no longer take 4 bits from 17 wrong voxels to 0.)
    """
    fine = reconstructor.fine
    return _zero_unread_nodes(fine, read_plane_nodes(fine, reconstructor.coarse_grid(),
                                                     reconstructor.resolution))


def _zero_unread_nodes(fine, nodes):
    arrays = [np.asarray(w) for w in fine.weights]
    if nodes is not None:
        index, read = nodes
        arrays[index] = np.where(read[..., None], arrays[index], 0.0).astype(np.float32)
    return arrays


def _without_unread_nodes(tensors, nodes):
    """The tensors to code: the tri-plane lattice's levels as [read nodes, C]."""
    if nodes is None:
        return tensors
    index, read = nodes
    planes = tensors[index]
    return [*tensors[:index], QuantizedTensor(planes.levels[read], planes.scales, planes.bits),
            *tensors[index + 1:]]


def _with_unread_nodes(tensors, nodes, shape):
    """Inverse of :func:`_without_unread_nodes`: unread nodes at level 0."""
    if nodes is None:
        return tensors
    index, read = nodes
    planes = tensors[index]
    levels = np.zeros(shape, np.int32)
    levels[read] = planes.levels
    return [*tensors[:index], QuantizedTensor(levels, planes.scales, planes.bits),
            *tensors[index + 1:]]


def network_bytes(model, bits):
    """What a fine network adds to a .vxz file at ``bits``: its architecture record, scales
    and coded levels (the search's packed_reward objective prices a trial's network with it;
    the coarse stage is stored as its grid, whatever its network).

    Example:
        >>> network_bytes(build_occupancy_model("16:relu", triplane=None), 8)
    """
    weights, _ = weights_section(quantize_model(model, bits))
    return len(_net_record(model)) + len(weights)


def write(path, blob):
    """Writes a packed file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(blob)


class _Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def unpack(self, layout):
        values = layout.unpack_from(self.data, self.at)
        self.at += layout.size
        return values

    def take(self, length):
        if self.at + length > len(self.data):
            raise ValueError("a section runs past the end")
        chunk = self.data[self.at:self.at + length]
        self.at += length
        return chunk


def read(path):
    """A .vxz file -> HierarchicalReconstructor (``vox_tf.load`` of a packed file).

    A lossless file's reconstructor answers with the input grid exactly: its ``residual``
    holds the wrong voxels, and ``metrics["grid_digest"]`` the digest its decode must match.
    Raises MeshError naming the file for a truncated, corrupted, foreign or newer file.

    Example:
        >>> vox_tf.packed_model.read("bunny.vxz").predict_grid().shape
        (128, 128, 128)
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MeshError(path, f"cannot read ({err.strerror or err})") from None
    if len(data) < _PREAMBLE.size or not data.startswith(MAGIC):
        raise MeshError(path, "not a packed vox_tf model (no VXZ header)")
    _, version, length, checksum = _PREAMBLE.unpack_from(data)
    if version > VERSION:
        raise MeshError(path, f"packed by a newer vox_tf (format version {version}; "
                              f"this one reads up to {VERSION})")
    payload = data[_PREAMBLE.size:]
    if len(payload) < length:
        raise MeshError(path, f"truncated ({len(payload)} of {length} payload bytes)")
    if len(payload) > length or zlib.crc32(payload) != checksum:
        raise MeshError(path, "corrupted (checksum mismatch)")
    try:
        return _decode(_Reader(payload), version)
    except (ValueError, struct.error, lzma.LZMAError) as err:
        raise MeshError(path, f"corrupted ({err})") from None


def _decode(reader, version):
    resolution, coarse_resolution, bits, is_lossless, *rest = reader.unpack(_GRID)
    center, scale = rest[:3], rest[3]
    extra = _read_extra_bits(reader, version)
    if version >= 3:
        (length,) = reader.unpack(_LENGTH)
        decode_grid = (grid_coding.decode_grid if version >= CODED_GRID_SINCE
                       else grid_coding.decode_lzma_grid)
        coarse = decode_grid(reader.take(length), coarse_resolution)
        nets = [_read_net(reader, "fine")]
    else:
        nets = [_read_net(reader, name) for name in ("coarse", "fine")]
        coarse = nets[0]
    (length,) = reader.unpack(_LENGTH)
    weights = reader.take(length)
    metrics = {"bits": bits, "input_layer_extra_bits": extra.input_layer,
               "plane_extra_bits": extra.planes, "later_kernel_extra_bits": extra.later_kernels}
    variables = [w for net in nets for w in net.weights]
    shapes = [tuple(w.shape) for w in variables]
    tensor_bits = ([bits] * len(variables) if version == 1
                   else [b for net in nets for b in weight_bits(net, bits, extra)])
    reconstructor = HierarchicalReconstructor(coarse, nets[-1], resolution, center, scale,
                                              coarse_resolution, "packed", metrics)
    # From version 4 the lattice holds only the nodes the mask reads (known from the coarse
    # grid); before, the mask came from a coarse net still to be decoded.
    nodes = read_plane_nodes(nets[-1], coarse, resolution) if version >= 4 else None
    coded_shapes = list(shapes)
    if nodes is not None:
        index, read = nodes
        coded_shapes[index] = (int(read.sum()), shapes[index][-1])
    tensors = _with_unread_nodes(read_weights_section(weights, coded_shapes, tensor_bits, version),
                                 nodes, shapes[nodes[0]] if nodes else None)
    for variable, tensor in zip(variables, tensors):
        if version == 1 and tensor.levels.ndim == 4:
            tensor.power = 2  # version 1's square-law planes
        variable.assign(tensor.dequantize())
    if is_lossless:
        method, digest, length = reader.unpack(struct.Struct("<B8sI"))
        residual = reader.take(length)
        probabilities = None
        if method == lossless.PROBABILITIES:
            probabilities = reconstructor.fine_probabilities()
        reconstructor.residual = lossless.decode_residual(method, residual, reconstructor.mask(),
                                                          probabilities, version >= 3)
        metrics["grid_digest"] = digest.hex()
    return reconstructor


def _read_extra_bits(reader, version):
    if version >= 7:
        return ExtraBits(*reader.unpack(_EXTRA_BITS))
    if version >= 5:
        return ExtraBits(*reader.unpack(_EXTRA_BITS_V5), UNRECORDED_EXTRA_BITS.later_kernels)
    if version == 4:
        (input_layer,) = reader.unpack(_INPUT_LAYER_EXTRA_BITS)
        return ExtraBits(input_layer, UNRECORDED_EXTRA_BITS.planes)
    return UNRECORDED_EXTRA_BITS


def lzma_bytes(grid):
    """What a generic codec needs for the grid, losslessly: bytes of lzma (xz, preset 9
    extreme) of the bit-packed bool [R, R, R] grid (reference_results.csv's lzma_bytes).

    Example:
        >>> lzma_bytes(np.zeros((32, 32, 32), bool))
        72
    """
    return len(lzma.compress(np.packbits(np.asarray(grid, bool)).tobytes(),
                             preset=9 | lzma.PRESET_EXTREME))


def size_figures(coarse, fine, voxels, coarse_resolution, bits=8):
    """results.json's size keys: bytes_packed (the .vxz at ``bits``, no fine-tuning), bpov
    (its bits per occupied voxel) and lzma_bytes of the same grid.

    Args:
        coarse, fine: the trained keras.Models.
        voxels: vox_tf.grid.VoxelGrid they were trained on.
        coarse_resolution: Rc of the coarse stage.
    """
    reconstructor = HierarchicalReconstructor(coarse, fine, voxels.resolution, voxels.center,
                                              voxels.scale, coarse_resolution)
    blob, _ = pack(reconstructor, bits)
    return {"bytes_packed": len(blob), "bpov": 8 * len(blob) / max(len(voxels.indices), 1),
            "lzma_bytes": lzma_bytes(voxels.dense())}
