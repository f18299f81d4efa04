"""The residual of a lossless packed model: the voxels its networks get wrong.

Two codings, and the packer keeps the smaller (:func:`encode_residual`):

- ``LIST``: the wrong voxels' flat numbers (i R^2 + j R + k), sorted, as gaps in LEB128
  varints, compressed with lzma. Reading it needs no network: any voxel's answer is the
  network's XOR membership in the list.
- ``PROBABILITIES``: inside the coarse mask, every voxel's true occupancy entropy-coded with
  the fine network's own probability as a Bernoulli model (constriction's ANS coder), so a
  confident right answer costs almost nothing and a wrong one costs log2(1/p); the occupied
  voxels outside the mask (the networks' only errors there) follow as a LIST. Decoding it
  needs the fine network's probabilities over the whole mask, once. The probabilities are
  first calibrated with one temperature T, p -> sigmoid(logit(p) / T), the one of
  TEMPERATURES that codes the grid in the fewest bits (stored as float16): a quantized net
  is confidently wrong more often than its training would make it.

Probabilities are rounded to PROBABILITY_BITS before coding: encoder and decoder must feed
the coder the same numbers, and a float difference in the last bits between two machines
only matters if it crosses a rounding boundary. The file also holds a digest of the grid
(vox_tf.packed_model), so such a mismatch is reported, never silently decoded.
"""

import lzma

import constriction
import numpy as np

LIST, PROBABILITIES = 0, 1
METHOD_NAMES = {LIST: "list", PROBABILITIES: "probabilities"}
_BERNOULLI = constriction.stream.model.Bernoulli(perfect=False)
PROBABILITY_BITS = 12
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
"""Raw LZMA2 streams: the .xz container would add ~60 bytes to every section."""


def compress(data):
    """bytes -> raw LZMA2 stream (preset 9 extreme), no container."""
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)


def decompress(data):
    """Inverse of :func:`compress`."""
    return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)


def encode_list(flat_ids):
    """Sorted flat voxel numbers -> bytes (gaps as LEB128 varints, lzma).

    Example:
        >>> decode_list(encode_list(np.array([3, 70, 71])))
        array([ 3, 70, 71])
    """
    gaps = np.diff(np.asarray(flat_ids, np.int64), prepend=0)
    return compress(_varints(gaps))


def decode_list(data):
    """bytes of :func:`encode_list` -> int64 [N] sorted flat voxel numbers."""
    raw = np.frombuffer(decompress(data), np.uint8).astype(np.int64)
    ends = np.flatnonzero(raw < 0x80)
    values = np.zeros(len(ends), np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1])
    for shift in range(int((ends - starts).max(initial=0)) + 1):
        at = starts + shift
        valid = at <= ends
        values[valid] |= (raw[at[valid]] & 0x7F) << (7 * shift)
    return np.cumsum(values)


def _varints(values):
    out = bytearray()
    for value in values.tolist():
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def rounded_probabilities(probabilities):
    """float [M] -> float64 [M] on the 2^-PROBABILITY_BITS lattice, never exactly 0 or 1."""
    steps = 1 << PROBABILITY_BITS
    return np.clip(np.rint(np.asarray(probabilities, np.float64) * steps), 1, steps - 1) / steps


TEMPERATURES = np.geomspace(0.5, 4.0, 19)
"""Calibration temperatures tried, ~12 % apart. mgn10_125611510010088_ShirtNoCoat 256^3
(seed3 search model), residual bytes without -> with calibration: 4-bit file 2,617 -> 1,707,
5-bit 493 -> 471; the lossless file 7,826 bytes (5-bit) -> 7,516 (4-bit), lzma 9,920."""


def calibrated(probabilities, temperature):
    """float [M] -> float64 [M]: sigmoid(logit(p) / temperature), p clipped into (0, 1).

    Example:
        >>> calibrated(np.array([0.5, 0.9]), 2.0).round(3)
        array([0.5 , 0.75])
    """
    p = np.clip(np.asarray(probabilities, np.float64), 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p)) / float(temperature)))


def _ideal_bits(bits, probabilities):
    p = rounded_probabilities(probabilities)
    return -np.where(bits, np.log2(p), np.log2(1.0 - p)).sum()


def encode_probabilities(truth, mask, probabilities):
    """The PROBABILITIES coding: outside list, float16 temperature, ANS stream of the mask.

    Args: as :func:`encode_residual`.
    Returns:
        bytes for :func:`decode_residual` with PROBABILITIES.
    """
    truth, mask = np.asarray(truth, bool).reshape(-1), np.asarray(mask, bool).reshape(-1)
    inside = truth[np.flatnonzero(mask)]
    temperature = min((np.float16(t) for t in TEMPERATURES),
                      key=lambda t: _ideal_bits(inside, calibrated(probabilities, t)))
    return (_with_length(encode_list(np.flatnonzero(truth & ~mask))) + temperature.tobytes()
            + bernoulli_encode(inside, calibrated(probabilities, temperature)))


def encode_residual(truth, mask, probabilities):
    """Codes what the networks get wrong, both ways; returns (method, bytes) of the smaller.

    Args:
        truth: bool [R, R, R], the input grid.
        mask: bool [R, R, R], the coarse mask; the prediction is empty outside it.
        probabilities: float32 [M], the fine network at the mask's voxels in
            np.flatnonzero(mask) order; the prediction is probabilities > 0.5.
    Returns:
        (method, bytes, {method name: bytes of each coding}).

    Example:
        >>> method, data, sizes = encode_residual(truth, rec.mask(), probs)
    """
    truth, mask = np.asarray(truth, bool).reshape(-1), np.asarray(mask, bool).reshape(-1)
    inside = np.flatnonzero(mask)
    prediction = np.zeros_like(truth)
    prediction[inside] = np.asarray(probabilities) > 0.5
    codings = {LIST: encode_list(np.flatnonzero(prediction != truth)),
               PROBABILITIES: encode_probabilities(truth, mask, probabilities)}
    method = min(codings, key=lambda m: len(codings[m]))
    return method, codings[method], {METHOD_NAMES[m]: len(c) for m, c in codings.items()}


def decode_residual(method, data, mask, probabilities=None, calibrated_coding=True):
    """The wrong voxels' sorted flat numbers from a residual of :func:`encode_residual`.

    Args:
        method: LIST or PROBABILITIES.
        data: its bytes.
        mask: bool [R, R, R] (PROBABILITIES only).
        probabilities: float32 [M] as given to the encoder (PROBABILITIES only).
        calibrated_coding: False for the PROBABILITIES coding of packed format versions 1
            and 2, which held no temperature (the probabilities coded as they are).
    Returns:
        int64 [W] sorted flat voxel numbers where the truth differs from the prediction.
    """
    if method == LIST:
        return decode_list(data)
    if method != PROBABILITIES:
        raise ValueError(f"unknown residual coding {method}")
    length = int.from_bytes(data[:4], "little")
    outside = decode_list(data[4:4 + length])
    inside = np.flatnonzero(np.asarray(mask, bool).reshape(-1))
    at = 4 + length
    coded = probabilities
    if calibrated_coding:
        coded = calibrated(probabilities, np.frombuffer(data[at:at + 2], np.float16)[0])
        at += 2
    truth = BernoulliDecoder(data[at:]).decode(coded)
    wrong_inside = inside[truth != (np.asarray(probabilities) > 0.5)]
    return np.union1d(wrong_inside, outside)


def _with_length(data):
    return len(data).to_bytes(4, "little") + data


def bernoulli_encode(bits, probabilities):
    """bool [N] -> bytes: constriction's ANS stream of ``bits``, bit i under a Bernoulli model
    of P(1) = probabilities[i] (:func:`rounded_probabilities` first).

    Example:
        >>> BernoulliDecoder(bernoulli_encode([True, False], [0.9, 0.2])).decode([0.9, 0.2])
        array([ True, False])
    """
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.asarray(bits, np.int32), _BERNOULLI,
                         rounded_probabilities(probabilities))
    return coder.get_compressed().tobytes()


class BernoulliDecoder:
    """Reads a :func:`bernoulli_encode` stream front to back, any number of bits per call, so
    a decoder may compute the next bits' probabilities from the bits before them."""

    def __init__(self, data):
        self._coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, np.uint32).copy())

    def decode(self, probabilities):
        """bool [N]: the next N bits, with the probabilities the encoder gave them."""
        return self._coder.decode(_BERNOULLI, rounded_probabilities(probabilities)).astype(bool)
