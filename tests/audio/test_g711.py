"""G.711 mu-law: bit-exact against the ITU-T reference arithmetic and Python's audioop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from agent.audio.g711 import ulaw_decode, ulaw_encode
from agent.errors import ProtocolError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib until 3.13: the independent second reference

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def g191_compress(x: int) -> int:
    """ITU-T G.191 STL ``ulaw_compress``, transcribed one sample at a time."""
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i, segno = absno >> 6, 1
    while i:
        segno += 1
        i >>= 1
    high = 8 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    return code | 0x80 if x >= 0 else code


def g191_expand(code: int) -> int:
    """ITU-T G.191 STL ``ulaw_expand``, one code."""
    sign = -1 if code < 0x80 else 1
    mantissa = ~code & 0xFF
    exponent = (mantissa >> 4) & 0x07
    segment = exponent + 1
    mantissa &= 0x0F
    step = 4 << segment
    return sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)


def test_all_256_codes_decode_like_the_itu_reference_and_audioop() -> None:
    decoded = ulaw_decode(ALL_CODES)
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [g191_expand(c) for c in range(256)]
    assert decoded.tolist() == np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), "<i2").tolist()
    # the classic anchors: both zeros, both extremes
    assert decoded[0xFF] == 0 and decoded[0x7F] == 0
    assert decoded[0x80] == 32124 and decoded[0x00] == -32124


def test_every_16_bit_sample_encodes_like_the_itu_reference() -> None:
    encoded = ulaw_encode(ALL_SAMPLES)
    assert len(encoded) == 65536
    assert list(encoded) == [g191_compress(int(x)) for x in ALL_SAMPLES]


def test_audioop_differs_only_on_negative_decision_boundaries_by_one_step() -> None:
    ours = np.frombuffer(ulaw_encode(ALL_SAMPLES), np.uint8).astype(int)
    theirs = np.frombuffer(audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2), np.uint8).astype(int)
    differ = ours != theirs
    assert not differ[ALL_SAMPLES >= 0].any()  # identical for every non-negative sample
    # Sun's g711.c rounds negative magnitudes up: 4 samples below each of 127 boundaries
    assert differ.sum() == 508
    # one quantisation step apart: decoded values are neighbours on the mu-law scale
    decoded = ulaw_decode(bytes(range(256))).astype(int)
    levels = np.sort(np.unique(decoded))
    a, b = decoded[ours[differ]], decoded[theirs[differ]]
    idx_a, idx_b = np.searchsorted(levels, a), np.searchsorted(levels, b)
    assert np.all(np.abs(idx_a - idx_b) == 1)


def test_round_trip_error_is_within_half_a_quantisation_step() -> None:
    codes = np.frombuffer(ulaw_encode(ALL_SAMPLES), np.uint8).astype(int)
    decoded = ulaw_decode(ulaw_encode(ALL_SAMPLES)).astype(int)
    error = np.abs(decoded - ALL_SAMPLES.astype(int))
    exponent = ((~codes) >> 4) & 0x07
    # half the step (8 << exponent) of the chosen segment, +4 for negative rounding
    bound = (4 << exponent) + 4
    inside = np.abs(ALL_SAMPLES.astype(int)) <= 32124  # beyond, G.711 clips
    assert np.all(error[inside] <= bound[inside])
    assert decoded[ALL_SAMPLES == 32767][0] == 32124  # saturates instead of wrapping
    assert decoded[ALL_SAMPLES == -32768][0] == -32124


def test_digital_silence_is_0xff_and_decodes_to_zero() -> None:
    assert ulaw_encode(np.zeros(160, np.int16)) == b"\xff" * 160
    assert not ulaw_decode(b"\xff" * 160).any()


def test_any_shape_encodes_in_c_order_and_decode_gives_a_writable_copy() -> None:
    stereo = np.array([[1000, -1000], [2000, -2000]], np.int16)
    assert ulaw_encode(stereo) == ulaw_encode(stereo.reshape(-1))
    out = ulaw_decode(bytearray(b"\x80\x00"))
    out[0] = 1  # a copy, not a view of the caller's buffer
    assert out[1] == -32124


@pytest.mark.parametrize(
    "bad", [np.zeros(4, np.float32), np.zeros(4, np.int32), b"\x00\x01", [0, 1, 2]]
)
def test_encoding_anything_but_int16_is_refused(bad: object) -> None:
    with pytest.raises(ProtocolError, match="int16"):
        ulaw_encode(bad)  # type: ignore[arg-type]
