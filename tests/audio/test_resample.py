"""Streaming resampler: exact tones, steady output per chunk, saturation, bad floats."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agent.audio.resample import StreamResampler
from agent.pcm import downmix, to_int16
from tests.audio.signals import level_at, sine_snr, tone


def stream(resampler: StreamResampler, x: np.ndarray, chunk: int) -> list[np.ndarray]:
    return [resampler.process(x[i : i + chunk]) for i in range(0, x.size, chunk)]


def test_equal_rates_pass_samples_through_untouched() -> None:
    x = tone(8000, 1000, 0.1)
    r = StreamResampler(8000, 8000)
    assert r.engine == "identity"
    assert np.array_equal(r.process(x), x)


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [(48000, 8000), (8000, 48000), (24000, 48000), (16000, 48000), (48000, 16000),
     (16000, 8000), (44100, 48000), (48000, 44100)],
)  # fmt: skip
def test_a_1khz_tone_comes_out_clean_at_the_new_rate(in_rate: int, out_rate: int) -> None:
    x = tone(in_rate, 1000, 2.0, dbfs=-10.0)
    out = np.concatenate(stream(StreamResampler(in_rate, out_rate), x, in_rate // 50))
    steady = out[out_rate // 10 :]  # skip the filter's start-up
    snr, amplitude = sine_snr(steady, out_rate, 1000)
    assert snr >= 60.0
    assert abs(20 * np.log10(amplitude / (32768 * np.sqrt(2) * 10 ** (-10 / 20)))) < 0.05
    assert abs(out.size - x.size * out_rate / in_rate) <= out_rate * 0.035  # <= ~30 ms held


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(48000, 8000), (8000, 48000), (24000, 48000), (44100, 48000)]
)
def test_every_20ms_chunk_gives_20ms_of_output_no_bursts(in_rate: int, out_rate: int) -> None:
    x = tone(in_rate, 440, 1.0)
    sizes = [o.size for o in stream(StreamResampler(in_rate, out_rate), x, in_rate // 50)]
    assert set(sizes[2:]) == {out_rate // 50}  # after at most two chunks of start-up


def test_chunk_boundaries_do_not_change_the_output() -> None:
    x = tone(48000, 1000, 0.5, dbfs=-6.0)
    whole = StreamResampler(48000, 8000).process(x)
    r = StreamResampler(48000, 8000)
    cuts = [0, 7, 960, 961, 3000, 5555, 12000, x.size]
    pieces = np.concatenate([r.process(x[a:b]) for a, b in itertools.pairwise(cuts)])
    assert pieces.size == whole.size
    assert np.abs(pieces.astype(int) - whole.astype(int)).max() <= 1  # float rounding only


def test_content_above_the_new_nyquist_is_removed_not_aliased() -> None:
    x = tone(48000, 5000, 1.0, dbfs=-6.0)  # would alias to 3 kHz at 8 kHz
    out = StreamResampler(48000, 8000).process(x)[800:]
    assert level_at(out, 8000, 3000) < -75.0


def test_full_scale_input_saturates_instead_of_wrapping() -> None:
    square = np.tile(np.r_[np.full(24, 32767), np.full(24, -32768)].astype(np.int16), 200)
    out = StreamResampler(48000, 16000).process(square)[400:]
    # the filter overshoots a square wave (Gibbs); the overshoot must clip, not flip sign
    assert out.max() == 32767 and out.min() == -32768
    signs = np.sign(out.astype(int))
    assert np.count_nonzero(np.diff(signs) != 0) <= 2 * out.size // 16 + 2  # one flip per half


def test_nan_and_infinite_floats_become_silence_and_limits() -> None:
    floats = np.array([np.nan, np.inf, -np.inf, 1e9, -1e9, 0.4, -2.6], np.float32)
    assert to_int16(floats).tolist() == [0, 32767, -32768, 32767, -32768, 0, -3]
    r = StreamResampler(8000, 48000)
    out = r.process(np.full(160, np.nan, np.float32))  # floats are converted, NaN -> 0
    assert out.dtype == np.int16 and not out.any()


def test_flush_returns_the_tail_held_in_the_filter() -> None:
    x = tone(8000, 1000, 0.2)
    r = StreamResampler(8000, 48000)
    body = np.concatenate(stream(r, x, 160))
    tail = r.flush()
    assert tail.size > 0
    assert body.size + tail.size >= x.size * 6  # nothing is lost at the end
    assert StreamResampler(8000, 8000).flush().size == 0


def test_stereo_streams_keep_their_channels_apart() -> None:
    left, right = tone(24000, 500, 0.5, dbfs=-10), tone(24000, 1500, 0.5, dbfs=-20)
    inter = np.stack([left, right], axis=1).reshape(-1)
    out = StreamResampler(24000, 48000, channels=2).process(inter).reshape(-1, 2)[4800:]
    assert level_at(out[:, 0], 48000, 500) == pytest.approx(-10, abs=0.2)
    assert level_at(out[:, 0], 48000, 1500) < -70
    assert level_at(out[:, 1], 48000, 1500) == pytest.approx(-20, abs=0.2)
    assert level_at(out[:, 1], 48000, 500) < -70


def test_downmix_averages_channels() -> None:
    stereo = np.array([100, 300, -32768, -32768, 32767, 32767, 1, 2], np.int16)
    assert downmix(stereo, 2).tolist() == [200, -32768, 32767, 1]
    assert downmix(stereo, 1) is stereo


def test_nonsense_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 8000)
    with pytest.raises(ValueError):
        StreamResampler(8000, 48000, channels=0)


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "channels"),
    [(48000, 16000, 2), (32000, 16000, 2), (16000, 16000, 2), (8000, 16000, 2),
     (44100, 16000, 2), (8000, 16000, 1), (16000, 8000, 1), (48000, 16000, 1)],
)  # fmt: skip
def test_mono_and_gain_give_what_a_downmix_a_resample_and_a_scale_would(
    in_rate: int, out_rate: int, channels: int
) -> None:
    """The hands-free path's shortcut (the speaker's stereo to +-1.0 mono at 16 kHz in
    one filter) hears the same audio as the long way round, over odd chunk sizes."""
    left = tone(in_rate, 700, 1.0, dbfs=-12.0)
    right = tone(in_rate, 1300, 1.0, dbfs=-18.0)
    x = np.stack((left, right), axis=1)[:, :channels].reshape(-1)
    gain = 1.0 / 32768.0
    fused = StreamResampler(in_rate, out_rate, channels, gain=gain, mono=True)
    plain = StreamResampler(in_rate, out_rate, 1)
    assert fused.out_channels == 1
    got, want = [], []
    sizes = itertools.cycle([in_rate // 50, 7, in_rate // 50 + 13, 1, in_rate // 100])
    i = 0
    while i < x.size // channels:
        n = next(sizes)
        chunk = x[i * channels : (i + n) * channels]
        got.append(fused.process_floats(chunk))
        mono = chunk.reshape(-1, channels).astype(np.float32).mean(axis=1)
        want.append(plain.process_floats(mono) * np.float32(gain))
        i += n
    a, b = np.concatenate(got), np.concatenate(want)
    assert a.dtype == np.float32 and a.size == b.size
    assert np.max(np.abs(a - b)) < 1e-5  # float32 rounding, nothing more
    assert 0.05 < np.max(np.abs(a)) <= 1.0  # +-1.0 scale: the canceller's float input


def test_gain_applies_to_int16_output_and_flush() -> None:
    x = tone(8000, 500, 0.2, dbfs=-20.0)
    r = StreamResampler(8000, 16000, gain=0.5)
    out = np.concatenate([*stream(r, x, 160), r.flush()])
    ref = StreamResampler(8000, 16000)
    full = np.concatenate([*stream(ref, x, 160), ref.flush()])
    assert out.dtype == np.int16 and out.size == full.size
    assert np.max(np.abs(out.astype(np.int32) - np.round(full * 0.5).astype(np.int32))) <= 1
