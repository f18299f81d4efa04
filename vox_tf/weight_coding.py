"""The weights section of a packed file: each quantized tensor's channel scales and levels.

Layout (little-endian), tensors in model.weights order::

    scales   version 6: per tensor of C > 1 channels the median scale exponent k (i16;
             vox_tf.quantization.scale_exponents), per tensor of one channel its float16
             scale, then each channel's k minus its tensor's median, ANS-coded under one
             quantized Laplace model (float16 scale, u32 length, stream) (:func:`scale_bytes`);
             versions 4-5: per tensor of C > 1 channels the largest k (i16), then one byte
             per channel: how many 2^(1/16) steps its scale lies below that; versions 1-3:
             float16 per channel
    levels   one coder byte per tensor (ANS or LZMA), the float16 Laplace scale of each ANS
             tensor, the length (u32) of the ANS stream, the ANS stream of those tensors, then
             one LZMA2 stream of the others (:func:`encode_levels`)

Each tensor's levels are coded either with constriction's ANS coder under a quantized Laplace
model or with raw LZMA2, whichever is smaller for it; :func:`weight_codings` also measures
all-ANS and all-LZMA. ANS is near the entropy for MLP kernels; LZMA finds the spatial
repetition of tri-plane features that a per-symbol model cannot see.
"""

import struct

import constriction
import numpy as np

from vox_tf import lossless
from vox_tf.quantization import (SCALE_EXPONENT_SPAN, QuantizedTensor, max_level,
                                 scale_exponents, scales_from_exponents)

ANS, LZMA = 0, 1
CODER_NAMES = {ANS: "ans", LZMA: "lzma"}
_EXPONENT = struct.Struct("<h")
FLOAT16_SCALES_BEFORE = 4
"""Files of versions below this hold float16 channel scales."""
CODED_SCALES_SINCE = 6
"""Files of this version on hold the channel scales entropy-coded (:func:`scale_bytes`)."""


def channel_count(shape):
    """C of a tensor of ``shape``: its last axis, 1 for a 1-D tensor (one scale)."""
    return shape[-1] if len(shape) > 1 else 1


def _laplace_scale(levels):
    """The maximum-likelihood Laplace scale of integer ``levels`` (a tensor's, or the scale
    exponents' deviations), as float16 (>= 0.1)."""
    return np.float16(max(np.abs(levels).mean(), 0.1))


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


def _ans_decode(data, laplace_scales, top):
    """Inverse of :func:`_ans_encode`: int32 [N] for N = len(laplace_scales)."""
    if not len(laplace_scales):
        return np.zeros(0, np.int32)
    words = np.frombuffer(data, np.uint32).copy()
    return constriction.stream.stack.AnsCoder(words).decode(
        constriction.stream.model.QuantizedLaplace(-top, top), np.zeros(len(laplace_scales)),
        laplace_scales)


def _level_ranges(tensor_bits, coders):
    """(Q of the ANS stream, NumPy dtype of the LZMA stream) for tensors of these bits: each
    stream spans the largest |level| of the tensors it holds."""
    ans_top = max([max_level(b) for b, c in zip(tensor_bits, coders) if c == ANS], default=1)
    lzma_top = max([max_level(b) for b, c in zip(tensor_bits, coders) if c == LZMA], default=0)
    return ans_top, np.int8 if lzma_top <= np.iinfo(np.int8).max else np.int16


def encode_levels(tensors, coders):
    """The levels of ``tensors`` coded tensor by tensor with ``coders`` (ANS or LZMA each):
    the module's ``levels`` layout (LZMA of int8 levels, int16 when one of them has more than
    8 bits)."""
    ans_top, lzma_dtype = _level_ranges([t.bits for t in tensors], coders)
    by_ans = [t for t, c in zip(tensors, coders) if c == ANS]
    laplace = np.array([_laplace_scale(t.levels) for t in by_ans], np.float16)
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

    Example:
        >>> sizes = {k: len(v) for k, v in weight_codings(quantize_model(fine, 8)).items()}
    """
    def alone(tensor, coder):
        return len(encode_levels([tensor], [coder]))

    mixed = [min((ANS, LZMA), key=lambda c: alone(t, c)) for t in tensors]
    return {name: encode_levels(tensors, coders) for name, coders in
            (("ans", [ANS] * len(tensors)), ("lzma", [LZMA] * len(tensors)), ("mixed", mixed))}


def decode_levels(data, shapes, tensor_bits):
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
    ans_levels = _ans_decode(data[at:at + ans_length],
                             np.repeat(laplace.astype(np.float64), ans_sizes), top)
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


def scale_bytes(tensors):
    """The version-6 scales of ``tensors`` (QuantizedTensors of vox_tf.quantization.quantize):
    per tensor of C > 1 channels its median exponent (i16), per tensor of one channel its
    float16 scale; then every channel's exponent minus its tensor's median, ANS-coded under
    one quantized Laplace model (float16 scale, u32 stream length, stream).

    Example:
        >>> # median (2), float16 scale (2), Laplace scale (2), length (4), one ANS word (4)
        >>> len(scale_bytes([quantize(np.ones((4, 3)), 8), quantize(np.ones(3), 8)]))
        14
    """
    heads, deviations = b"", []
    for tensor in tensors:
        if len(tensor.scales) == 1:
            heads += tensor.scales.astype(np.float16).tobytes()
            continue
        exponents = scale_exponents(tensor.scales)
        if not np.array_equal(scales_from_exponents(exponents), tensor.scales):
            raise ValueError("channel scales that are not powers of 2^(1/16)")
        if exponents.max() - exponents.min() > SCALE_EXPONENT_SPAN:
            raise ValueError(f"channel scales more than {SCALE_EXPONENT_SPAN} steps apart")
        median = _median(exponents)
        heads += _EXPONENT.pack(median)
        deviations.append(exponents - median)
    deviations = np.concatenate(deviations or [np.zeros(0, np.int32)]).astype(np.int32)
    laplace = _laplace_scale(deviations) if len(deviations) else np.float16(1.0)
    stream = _ans_encode(deviations, np.full(len(deviations), laplace, np.float64),
                         SCALE_EXPONENT_SPAN)
    return heads + laplace.tobytes() + struct.pack("<I", len(stream)) + stream


def _median(exponents):
    """The middle exponent (the upper one of an even count): the centre that makes a Laplace
    model's deviations smallest."""
    return int(np.sort(exponents)[len(exponents) // 2])


def _decode_scales(data, shapes, version):
    """(the scales of each tensor, bytes they took) of a weights section."""
    channels = [channel_count(s) for s in shapes]
    if version < FLOAT16_SCALES_BEFORE:
        size = 2 * sum(channels)
        flat = np.frombuffer(data[:size], np.float16)
        if len(flat) != sum(channels):
            raise ValueError("the weights section ends inside its scales")
        return np.split(flat, np.cumsum(channels)[:-1]), size
    if version >= CODED_SCALES_SINCE:
        return _decode_coded_scales(data, channels)
    scales, at = [], 0
    for count in channels:
        if count == 1:
            scales.append(_float16_scale(data, at))
            at += 2
            continue
        (largest,) = _EXPONENT.unpack_from(data, at)
        below = np.frombuffer(data[at + _EXPONENT.size:at + _EXPONENT.size + count], np.uint8)
        if len(below) != count:
            raise ValueError("the weights section ends inside its scales")
        scales.append(scales_from_exponents(largest - below.astype(np.int32)))
        at += _EXPONENT.size + count
    return scales, at


def _float16_scale(data, at):
    scale = np.frombuffer(data[at:at + 2], np.float16)
    if len(scale) != 1:
        raise ValueError("the weights section ends inside its scales")
    return scale.astype(np.float32)


def _decode_coded_scales(data, channels):
    """Inverse of :func:`scale_bytes`: (the scales of each tensor, bytes they took)."""
    heads, at = [], 0
    for count in channels:
        if count == 1:
            heads.append(_float16_scale(data, at))
            at += 2
        else:
            heads.append(_EXPONENT.unpack_from(data, at)[0])
            at += _EXPONENT.size
    laplace = _float16_scale(data, at)[0]
    (length,) = struct.unpack_from("<I", data, at + 2)
    at += 6
    wide = [count for count in channels if count > 1]
    deviations = _ans_decode(data[at:at + length], np.full(sum(wide), laplace, np.float64),
                             SCALE_EXPONENT_SPAN)
    deviations = iter(np.split(deviations, np.cumsum(wide)[:-1]) if wide else [])
    scales = [head if count == 1 else scales_from_exponents(head + next(deviations))
              for head, count in zip(heads, channels)]
    return scales, at + length


def weights_section(tensors):
    """QuantizedTensors -> (their scales and the smallest coding of their levels, sizes:
    {coder kept, weights_<coding>: bytes of the section with each coding}).

    A tensor's levels may have any shape with its channels last (the packer drops the tri-plane
    nodes no voxel reads, leaving [nodes, C]).
    """
    codings = weight_codings(tensors)
    kept = min(codings, key=lambda c: len(codings[c]))
    scales = scale_bytes(tensors)
    return scales + codings[kept], {"coder": kept, **{f"weights_{name}": len(coding) + len(scales)
                                                     for name, coding in codings.items()}}


def read_weights_section(data, shapes, tensor_bits, version):
    """Inverse of :func:`weights_section` (and of versions 1-3's): QuantizedTensors of
    ``shapes``, each at its bits (power 1; the caller sets version 1's square-law planes)."""
    scales, at = _decode_scales(data, shapes, version)
    levels = decode_levels(data[at:], shapes, tensor_bits)
    return [QuantizedTensor(level, scale, bits)
            for level, scale, bits in zip(levels, scales, tensor_bits)]
