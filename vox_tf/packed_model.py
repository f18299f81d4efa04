"""The packed model file (.vxz): the coarse mask and the k-bit fine net, in one small file.

Layout (little-endian)::

    magic "VXZ\\0" | version u8 | payload length u32 | CRC-32 of the payload u32 | payload
    payload:
        grid     resolution u16, coarse resolution u16, bits u8, lossless u8,
                 center 3 x f64, scale f64
        coarse   length u32, then the coarse net's occupancy on the Rc^3 grid, bit-packed
                 (np.packbits, index order) and LZMA2-compressed
        fine net positional levels u8 (255: none), tri-plane resolution u16 (0: none),
                 tri-plane channels u8, layers u8, then per layer units u16 and activation
                 u8 (index in vox_tf.models.ACTIVATIONS)
        weights  length u32, then the per-channel float16 scales of every fine tensor
                 (model.weights order) and the coded levels (:func:`encode_levels`), each
                 tensor at its vox_tf.quantization.weight_bits for the file's ``bits``
        residual (lossless only) coding u8, grid digest 8 bytes, length u32, bytes
                 (vox_tf.lossless; its probability coding holds a calibration temperature
                 since version 3)

The coarse stage is stored as what it computes, not as the network: the coarse net is only
ever asked on the Rc^3 grid, and its prediction there costs 190-610 bytes on the eight
256^3 seed grids where the net takes 1,077-2,665 at 4 bits (9-21 % of a 4-bit file);
the mask is the float32 coarse net's, so no coarse error is added. Versions 1 and 2 (still
read) held the coarse net's weights beside the fine net's (``nets`` records for both);
version 1 also held every tensor at ``bits``, the tri-planes with square-law levels.

The fine net's architecture is those few bytes: the decoder rebuilds it with
vox_tf.models.build_occupancy_model, which fixes every tensor's shape, and sets the
dequantized weights. Each tensor's levels are coded either with constriction's ANS coder
under a quantized Laplace model (its scale b stored as float16) or with raw LZMA2, whichever
is smaller for it; :func:`weight_codings` also measures all-ANS and all-LZMA.
"""

import hashlib
import lzma
import struct
import zlib
from pathlib import Path

import constriction
import numpy as np

from vox_tf import lossless
from vox_tf.errors import MeshError
from vox_tf.files import atomic_output
from vox_tf.grid import voxel_centers
from vox_tf.hierarchy import HierarchicalReconstructor
from vox_tf.layers import PLANE_AXES
from vox_tf.models import ACTIVATIONS, TriPlaneConfig, arch_of, build_occupancy_model
from vox_tf.quantization import (QuantizedTensor, max_level, quantize, quantize_model,
                                 weight_bits)

MAGIC = b"VXZ\0"
VERSION = 3
SUFFIX = ".vxz"
_PREAMBLE = struct.Struct("<4sBII")
_GRID = struct.Struct("<HHBB3dd")
_NET = struct.Struct("<BHBB")
_LAYER = struct.Struct("<HB")
_LENGTH = struct.Struct("<I")
NO_POSITIONAL = 255
ANS, LZMA = 0, 1
CODER_NAMES = {ANS: "ans", LZMA: "lzma"}


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


def _laplace_scale(tensor):
    """The maximum-likelihood Laplace scale of a tensor's levels, as float16 (>= 0.1)."""
    return np.float16(max(np.abs(tensor.levels).mean(), 0.1))


def _flat_levels(tensors):
    if not tensors:
        return np.zeros(0, np.int32)
    return np.concatenate([t.levels.reshape(-1) for t in tensors]).astype(np.int32)


def _ans_encode(levels, scales, top):
    coder = constriction.stream.stack.AnsCoder()
    if len(levels):
        coder.encode_reverse(levels, constriction.stream.model.QuantizedLaplace(-top, top),
                             np.zeros(len(levels)), scales)
    return coder.get_compressed().tobytes()


def _level_ranges(tensor_bits, coders):
    """(Q of the ANS stream, NumPy dtype of the LZMA stream) for tensors of these bits: each
    stream spans the largest |level| of the tensors it holds."""
    ans_top = max([max_level(b) for b, c in zip(tensor_bits, coders) if c == ANS], default=1)
    lzma_top = max([max_level(b) for b, c in zip(tensor_bits, coders) if c == LZMA], default=0)
    return ans_top, np.int8 if lzma_top <= np.iinfo(np.int8).max else np.int16


def encode_levels(tensors, coders):
    """The levels of ``tensors`` coded tensor by tensor with ``coders`` (ANS or LZMA each).

    Bytes: one coder byte per tensor, the float16 Laplace scale of each ANS tensor, the
    length (u32) of the ANS stream, the ANS stream of those tensors, then one LZMA2 stream of
    the others (int8 levels, int16 when one of them has more than 8 bits).
    """
    ans_top, lzma_dtype = _level_ranges([t.bits for t in tensors], coders)
    by_ans = [t for t, c in zip(tensors, coders) if c == ANS]
    laplace = np.array([_laplace_scale(t) for t in by_ans], np.float16)
    ans = _ans_encode(_flat_levels(by_ans),
                      np.repeat(laplace.astype(np.float64), [t.levels.size for t in by_ans]),
                      ans_top)
    by_lzma = [t for t, c in zip(tensors, coders) if c == LZMA]
    rest = (lossless.compress(_flat_levels(by_lzma).astype(lzma_dtype).tobytes())
            if by_lzma else b"")
    return bytes(coders) + laplace.tobytes() + struct.pack("<I", len(ans)) + ans + rest


def weight_codings(tensors):
    """The levels coded three ways: {"ans": all ANS, "lzma": all LZMA, "mixed": each tensor
    with whichever of the two codes it alone in fewer bytes} (scales not included).

    ANS (a quantized Laplace per tensor) is near the entropy for MLP kernels; LZMA finds the
    spatial repetition of tri-plane features that a per-symbol model cannot see.

    Example:
        >>> sizes = {k: len(v) for k, v in weight_codings(quantize_model(fine, 8)).items()}
    """
    def alone(tensor, coder):
        return len(encode_levels([tensor], [coder]))

    mixed = [min((ANS, LZMA), key=lambda c: alone(t, c)) for t in tensors]
    return {name: encode_levels(tensors, coders) for name, coders in
            (("ans", [ANS] * len(tensors)), ("lzma", [LZMA] * len(tensors)), ("mixed", mixed))}


def _decode_levels(data, shapes, tensor_bits):
    sizes = [int(np.prod(s)) for s in shapes]
    coders = list(data[:len(shapes)])
    if any(c not in CODER_NAMES for c in coders):
        raise ValueError("unknown weight coder")
    top, lzma_dtype = _level_ranges(tensor_bits, coders)
    n_ans = coders.count(ANS)
    at = len(shapes)
    laplace = np.frombuffer(data[at:at + 2 * n_ans], np.float16)
    at += 2 * n_ans
    (ans_length,) = struct.unpack_from("<I", data, at)
    at += 4
    ans_sizes = [n for n, c in zip(sizes, coders) if c == ANS]
    ans_levels = np.zeros(0, np.int32)
    if n_ans:
        words = np.frombuffer(data[at:at + ans_length], np.uint32).copy()
        ans_levels = constriction.stream.stack.AnsCoder(words).decode(
            constriction.stream.model.QuantizedLaplace(-top, top), np.zeros(sum(ans_sizes)),
            np.repeat(laplace.astype(np.float64), ans_sizes))
    rest = data[at + ans_length:]
    lzma_levels = (np.frombuffer(lossless.decompress(rest), lzma_dtype).astype(np.int32)
                   if rest else np.zeros(0, np.int32))
    if len(lzma_levels) != sum(sizes) - sum(ans_sizes):
        raise ValueError(f"{len(lzma_levels)} LZMA-coded weight levels for "
                         f"{sum(sizes) - sum(ans_sizes)} weights")
    streams = {ANS: iter(np.split(ans_levels, np.cumsum(ans_sizes)[:-1]) if n_ans else []),
               LZMA: iter(np.split(lzma_levels, np.cumsum([n for n, c in zip(sizes, coders)
                                                            if c == LZMA])[:-1]))}
    return [next(streams[c]).reshape(s) for c, s in zip(coders, shapes)]


def pack(reconstructor, bits, residual=None):
    """A reconstructor -> the bytes of its .vxz file, and what each part costs.

    Args:
        reconstructor: HierarchicalReconstructor; its coarse grid is stored as it is, its fine
            net's weights quantized (already k-bit after fine-tuning: quantizing again leaves
            them unchanged, unless zeroing the unread tri-plane nodes narrows a channel's scale).
        bits: one of vox_tf.quantization.BITS.
        residual: optional (method, bytes, digest) of vox_tf.lossless for a lossless file.
    Returns:
        (bytes, dict of sizes: total, coarse_grid, residual, the fine weights coded each
        way (weights_ans, weights_lzma, weights_mixed, scales included) and the coder kept).

    Example:
        >>> data, sizes = pack(vox_tf.load("runs/bunny"), 8)
    """
    coarse = coarse_grid_bytes(reconstructor.coarse_grid())
    fine = reconstructor.fine
    weights, sizes = _weights_section([quantize(w, b) for w, b in
                                       zip(fine_weights_as_packed(reconstructor),
                                           weight_bits(fine, bits))])
    payload = (_GRID.pack(reconstructor.resolution, reconstructor.coarse_resolution, bits,
                          residual is not None, *reconstructor.center, reconstructor.scale)
               + _LENGTH.pack(len(coarse)) + coarse + _net_record(fine)
               + _LENGTH.pack(len(weights)) + weights)
    if residual is not None:
        method, data, digest = residual
        payload += struct.pack("<B8sI", method, digest, len(data)) + data
    blob = _PREAMBLE.pack(MAGIC, VERSION, len(payload), zlib.crc32(payload)) + payload
    return blob, {"total": len(blob), "coarse_grid": len(coarse),
                  "residual": len(residual[1]) if residual else 0, **sizes}


def coarse_grid_bytes(occupancy):
    """bool [Rc, Rc, Rc] -> its bits (np.packbits, index order) as a raw LZMA2 stream.

    Example:
        >>> len(coarse_grid_bytes(np.zeros((32, 32, 32), bool)))  # 4,096 bytes of zeros
        14
    """
    return lossless.compress(np.packbits(np.asarray(occupancy, bool)).tobytes())


def coarse_grid_from_bytes(data, coarse_resolution):
    """Inverse of :func:`coarse_grid_bytes`; ValueError when the bits are not Rc^3."""
    bits = np.frombuffer(lossless.decompress(data), np.uint8)
    cells = coarse_resolution ** 3
    if len(bits) != (cells + 7) // 8:
        raise ValueError(f"a coarse grid of {len(bits)} bytes for {coarse_resolution}^3 cells")
    return np.unpackbits(bits, count=cells).astype(bool).reshape((coarse_resolution,) * 3)


def fine_weights_as_packed(reconstructor):
    """The fine net's weights with the tri-plane nodes that no voxel of the mask reads set to 0.

    The fine net is only ever asked inside the mask, so those nodes (still their random
    initial values) change no answer; as zeros they cost almost nothing to code and no
    longer widen their channel's quantization scale.
    """
    fine = reconstructor.fine
    arrays = [np.asarray(w) for w in fine.weights]
    planes = {layer.name: layer for layer in fine.layers}.get("triplane")
    if planes is None:
        return arrays
    lattice = planes.resolution
    points = voxel_centers(np.argwhere(reconstructor.mask()), reconstructor.resolution)
    # TriPlaneEncoding's corner rule: lower node clamped to lattice - 1, and the one above it.
    lower = np.minimum(np.floor(np.clip((points + 1.0) * (0.5 * lattice), 0, lattice)),
                       lattice - 1).astype(np.int64)
    read = np.zeros((len(PLANE_AXES), lattice + 1, lattice + 1), bool)
    for plane, (a, b) in enumerate(PLANE_AXES):
        for da in (0, 1):
            for db in (0, 1):
                read[plane, lower[:, a] + da, lower[:, b] + db] = True
    index = next(i for i, w in enumerate(fine.weights) if w is planes.planes)
    arrays[index] = np.where(read[..., None], arrays[index], 0.0).astype(np.float32)
    return arrays


def _weights_section(tensors):
    """(scales + the smallest coding of the levels, {coder kept, weights_<coding>: bytes})."""
    codings = weight_codings(tensors)
    kept = min(codings, key=lambda c: len(codings[c]))
    scales = b"".join(t.scales.tobytes() for t in tensors)
    return scales + codings[kept], {"coder": kept, **{f"weights_{name}": len(coding) + len(scales)
                                                     for name, coding in codings.items()}}


def network_bytes(model, bits):
    """What a fine network adds to a .vxz file at ``bits``: its architecture record, scales
    and coded levels (the search's packed_reward objective prices a trial's network with it;
    the coarse stage is stored as its grid, whatever its network).

    Example:
        >>> network_bytes(build_occupancy_model("16:relu", triplane=None), 8)
    """
    weights, _ = _weights_section(quantize_model(model, bits))
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
    if version >= 3:
        (length,) = reader.unpack(_LENGTH)
        coarse = coarse_grid_from_bytes(reader.take(length), coarse_resolution)
        nets = [_read_net(reader, "fine")]
    else:
        nets = [_read_net(reader, name) for name in ("coarse", "fine")]
        coarse = nets[0]
    (length,) = reader.unpack(_LENGTH)
    weights = reader.take(length)
    variables = [w for net in nets for w in net.weights]
    shapes = [tuple(w.shape) for w in variables]
    channels = [s[-1] if len(s) > 1 else 1 for s in shapes]
    scale_bytes = 2 * sum(channels)
    scales = np.split(np.frombuffer(weights[:scale_bytes], np.float16), np.cumsum(channels)[:-1])
    tensor_bits = ([bits] * len(variables) if version == 1
                   else [b for net in nets for b in weight_bits(net, bits)])
    levels = _decode_levels(weights[scale_bytes:], shapes, tensor_bits)
    for variable, level, channel_scales, level_bits in zip(variables, levels, scales, tensor_bits):
        power = 2 if version == 1 and level.ndim == 4 else 1  # version 1's square-law planes
        variable.assign(QuantizedTensor(level, channel_scales, level_bits, power).dequantize())
    metrics = {"bits": bits}
    reconstructor = HierarchicalReconstructor(coarse, nets[-1], resolution, center, scale,
                                              coarse_resolution, "packed", metrics)
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
