"""Pure core pieces: the status board (STATUS line, LED), the PTT gate, the backoff."""

from __future__ import annotations

import numpy as np

from agent.audio.fanout import Fanout
from agent.backoff import BackoffPolicy, Reconnector, backoff
from agent.metrics import Metrics
from agent.pcm import UPLINK_SAMPLES, Frame
from agent.ptt import PttGate
from agent.status import Led, LinkState, StatusBoard


def board(now: list[float]) -> StatusBoard:
    return StatusBoard(clock=lambda: now[0])


def test_status_line_matches_design_example() -> None:
    now = [100.0]
    b = board(now)
    b.set_link("videosdk", LinkState.UP, "room abcd-efgh-ijkl")
    b.set_link("orgo", LinkState.RETRY, retry_in=4.0)
    b.set_mic_level(-32.4)
    assert b.summary() == (
        "videosdk: up (room abcd-efgh-ijkl) · orgo: retry in 4s · ptt: idle · mic -32 dBFS"
    )
    now[0] = 102.5
    assert "orgo: retry in 2s" in b.summary()


def test_led_follows_links() -> None:
    b = board([0.0])
    b.set_link("videosdk", LinkState.CONNECTING)
    assert b.led is Led.BLINK_1HZ
    b.set_link("videosdk", LinkState.UP, "room r")
    assert b.led is Led.ON
    b.set_link("orgo", LinkState.RETRY, "computer offline", retry_in=3)
    assert b.led is Led.BLINK_1HZ
    b.set_link("orgo", LinkState.ATTENTION, "API key refused for computer c1")
    assert b.led is Led.BLINK_4HZ
    assert "orgo: needs attention: API key refused for computer c1" in b.summary()
    b.set_link("orgo", LinkState.UP)
    b.set_device("mic", LinkState.ATTENTION, "capture device missing: hw:CARD=USB")
    assert b.led is Led.BLINK_4HZ


def test_listeners_fire_on_significant_changes_only() -> None:
    b = board([0.0])
    seen: list[str] = []
    b.add_listener(lambda s: seen.append(s.summary()))
    b.set_link("videosdk", LinkState.UP, "room r")
    b.set_link("videosdk", LinkState.UP, "room r")  # same: no call
    b.set_mic_level(-20.0)  # sampled, not significant
    b.set_volume(0.5, muted=True)
    assert len(seen) == 2
    doc = b.to_json()
    assert doc["links"]["videosdk"] == {"state": "up", "detail": "room r"}
    assert doc["volume"] == 0.5 and doc["muted"] is True and doc["mic_dbfs"] == -20.0
    assert doc["ptt"] == {"mode": "hold", "state": "idle"} and doc["led"] == "on"


def frame(seq: int, value: int = 1000) -> Frame:
    return Frame(np.full(UPLINK_SAMPLES, value, np.int16), seq, float(seq) * 0.02)


def test_ptt_hold_gates_at_frame_boundaries() -> None:
    changes: list[bool] = []
    g = PttGate("hold", on_change=changes.append)
    out = [g.gate(frame(0))]
    g.press()
    out += [g.gate(frame(1)), g.gate(frame(2))]
    g.release()
    out.append(g.gate(frame(3)))
    assert [o.voiced for o in out if o] == [False, True, True, False]
    assert not out[0].pcm.any() and out[1].pcm[0] == 1000  # silence is real zeros
    assert changes == [True, False]


def test_ptt_toggle_open_vox_and_idle_none() -> None:
    g = PttGate("toggle", idle="none")
    assert g.gate(frame(0)) is None  # idle = none: nothing sent
    g.press()
    g.release()
    assert g.gate(frame(1)) is not None
    g.press()
    assert g.gate(frame(2)) is None
    assert PttGate("open").gate(frame(0)).voiced
    v = PttGate("vox")
    assert not v.gate(frame(0), speech=False).voiced
    assert v.gate(frame(1), speech=True).voiced


def test_backoff_grows_caps_and_resets_after_a_healthy_connection() -> None:
    policy = BackoffPolicy(initial_s=0.2, factor=2, cap_s=30, jitter=0.3)
    delays = [d for d, _ in zip(backoff(policy, rng=lambda: 0.0), range(10), strict=False)]
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6] and max(delays) == 30
    jittered = next(backoff(policy, rng=lambda: 1.0))
    assert 0.13 < jittered < 0.5  # first retry < 0.5 s even with jitter
    now = [0.0]
    r = Reconnector(policy, clock=lambda: now[0], rng=lambda: 0.0)
    assert [r.next_delay() for _ in range(3)] == [0.2, 0.4, 0.8]
    r.connected()
    now[0] = 2.0  # dropped 2 s after connecting: flapping, keep backing off
    assert r.next_delay() == 1.6
    r.connected()
    now[0] = 8.0  # carried traffic for 6 s (> healthy_after_s), then dropped
    assert r.next_delay() == 0.2
    assert r.next_delay(slow=True) >= policy.slow_s * 0.7  # auth refusal: minutes, not seconds
    assert r.next_delay(at_least_s=10.0) >= 10.0


def test_fanout_drops_oldest_for_a_slow_link_and_counts() -> None:
    m = Metrics()
    f = Fanout(m, maxsize=3)
    fast, slow = f.subscribe("videosdk"), f.subscribe("fastrtc")
    for i in range(5):
        f.publish(frame(i))
        fast.get_nowait()
    assert [slow.get_nowait().seq for _ in range(3)] == [2, 3, 4]
    assert m.get("frames_dropped_total", link="fastrtc", reason="queue_full") == 2
    assert m.get("frames_dropped_total", link="videosdk", reason="queue_full") == 0
