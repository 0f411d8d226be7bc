"""The Prometheus exposition and the /status document, built from a Metrics and a
StatusBoard filled the way the agent fills them, plus the board sensors read from a
fake sysfs and a fake ``vcgencmd``."""

from __future__ import annotations

import math
import os
import stat
import threading
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import WINDOW, Metrics
from agent.observe.exposition import AgentCollector, build_registry
from agent.observe.host import (
    Throttling,
    parse_throttled,
    process_usage,
    read_temperatures,
    throttle_flags,
)
from agent.observe.server import status_document
from agent.status import LinkState, StatusBoard


def families(registry: object) -> dict[str, object]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict[str, object], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    fam = fams[name]
    return {
        (s.name, *sorted(s.labels.items())): s.value  # type: ignore[attr-defined]
        for s in fam.samples  # type: ignore[attr-defined]
    }


@pytest.fixture
def filled() -> tuple[Metrics, StatusBoard]:
    m = Metrics()
    m.inc("frames_sent_total", 250, link="videosdk")
    m.inc("frames_dropped_total", 3, link="videosdk", reason="link_down")
    m.inc("frames_dropped_total", 1, link="videosdk", reason="backpressure")
    m.inc("capture_frames_dropped_total", reason="queue_full")  # no link label
    m.inc("malformed_total", 2, link="orgo", reason="unaligned")
    m.inc("reconnects_total", link="orgo")
    m.inc("some_new_counter_total")  # a family no HELP text knows yet
    m.set("jitter_depth_ms", 60.0, source="orgo")
    m.set("jitter_target_ms", 40.0, source="orgo")
    for i in range(100):
        m.observe("uplink_latency_seconds", (i + 1) / 10000, link="videosdk")
    board = StatusBoard()
    board.set_link("videosdk", LinkState.UP, "room r")
    board.set_link("orgo", LinkState.RETRY, "cannot connect", retry_in=4.0)
    board.set_device("mic", LinkState.UP, "pacedmic")
    board.set_mic_level(-32.4)
    return m, board


def test_every_family_has_help_a_type_and_the_prefix(filled: tuple[Metrics, StatusBoard]) -> None:
    m, board = filled
    text = generate_latest(build_registry(m, board)).decode()
    fams = list(text_string_to_metric_families(text))
    ours = [f for f in fams if not f.name.startswith("process_")]
    assert ours and all(f.name.startswith("field_agent_") for f in ours)
    for f in fams:
        assert f.documentation, f.name
        assert f.type in ("counter", "gauge", "summary", "info"), (f.name, f.type)
    assert "# TYPE field_agent_frames_sent_total counter" in text
    assert "# HELP field_agent_some_new_counter_total field-agent counter" in text


def test_counters_keep_every_label_set(filled: tuple[Metrics, StatusBoard]) -> None:
    m, board = filled
    fams = families(build_registry(m, board))
    assert fams["field_agent_frames_dropped"].type == "counter"  # type: ignore[attr-defined]
    dropped = samples(fams, "field_agent_frames_dropped")
    assert (
        dropped[("field_agent_frames_dropped_total", ("link", "videosdk"), ("reason", "link_down"))]
        == 3
    )
    assert (
        dropped[
            ("field_agent_frames_dropped_total", ("link", "videosdk"), ("reason", "backpressure"))
        ]
        == 1
    )
    malformed = samples(fams, "field_agent_malformed")
    assert (
        malformed[("field_agent_malformed_total", ("link", "orgo"), ("reason", "unaligned"))] == 2
    )


def test_millisecond_gauges_are_exported_in_seconds(filled: tuple[Metrics, StatusBoard]) -> None:
    m, board = filled
    fams = families(build_registry(m, board))
    assert "field_agent_jitter_depth_ms" not in fams
    depth = samples(fams, "field_agent_jitter_depth_seconds")
    assert depth[("field_agent_jitter_depth_seconds", ("source", "orgo"))] == pytest.approx(0.06)


def test_latency_windows_are_summaries_with_median_and_p99(
    filled: tuple[Metrics, StatusBoard],
) -> None:
    m, board = filled
    fams = families(build_registry(m, board))
    fam = fams["field_agent_uplink_latency_seconds"]
    assert fam.type == "summary"  # type: ignore[attr-defined]
    s = samples(fams, "field_agent_uplink_latency_seconds")
    name = "field_agent_uplink_latency_seconds"
    assert s[(name, ("link", "videosdk"), ("quantile", "0.5"))] == pytest.approx(0.005, abs=2e-4)
    assert s[(name, ("link", "videosdk"), ("quantile", "0.99"))] == pytest.approx(0.0099, abs=2e-4)
    assert s[(name + "_count", ("link", "videosdk"))] == 100
    assert s[(name + "_sum", ("link", "videosdk"))] == pytest.approx(sum(range(1, 101)) / 10000)


def test_link_and_device_states(filled: tuple[Metrics, StatusBoard]) -> None:
    m, board = filled
    fams = families(build_registry(m, board))
    up = samples(fams, "field_agent_link_up")
    assert up[("field_agent_link_up", ("link", "videosdk"))] == 1
    assert up[("field_agent_link_up", ("link", "orgo"))] == 0
    state = samples(fams, "field_agent_link_state")
    assert state[("field_agent_link_state", ("link", "orgo"), ("state", "retry"))] == 1
    assert sum(v for k, v in state.items() if ("link", "orgo") in k) == 1  # one-hot
    assert samples(fams, "field_agent_device_up") == {
        ("field_agent_device_up", ("device", "mic")): 1
    }
    assert samples(fams, "field_agent_mic_level_dbfs")[("field_agent_mic_level_dbfs",)] == (
        pytest.approx(-32.4)
    )


def test_process_cpu_and_rss_are_exported(filled: tuple[Metrics, StatusBoard]) -> None:
    m, board = filled
    fams = families(build_registry(m, board))
    rss = samples(fams, "process_resident_memory_bytes")[("process_resident_memory_bytes",)]
    assert 5e6 < rss < 2e9
    assert "process_cpu_seconds" in fams
    usage = process_usage()
    assert usage["rss_bytes"] == pytest.approx(rss, rel=0.2)
    assert usage["cpu_seconds"] > 0


def test_registry_is_private(filled: tuple[Metrics, StatusBoard]) -> None:
    from prometheus_client import REGISTRY

    m, board = filled
    build_registry(m, board)
    text = generate_latest(REGISTRY).decode()
    assert "field_agent_" not in text


def test_status_document_adds_link_counters_and_latencies(
    filled: tuple[Metrics, StatusBoard],
) -> None:
    m, board = filled
    doc = status_document(m, board)
    assert doc["summary"] == board.summary()
    v = doc["links"]["videosdk"]
    assert (v["state"], v["frames_sent"], v["frames_dropped"]) == ("up", 250, 4)
    assert v["uplink_latency_ms"]["p50"] == pytest.approx(5.0, abs=0.1)
    o = doc["links"]["orgo"]
    assert (o["state"], o["malformed"], o["reconnects"]) == ("retry", 2, 1)
    assert 0 < o["retry_in_s"] <= 4
    assert doc["sources"]["orgo"]["depth_ms"] == 60
    assert doc["audio"]["capture_drops"] == 1
    assert doc["process"]["rss_bytes"] > 0


def test_metrics_windows_are_bounded_copies() -> None:
    m = Metrics()
    for i in range(WINDOW + 10):
        m.observe("x_seconds", float(i), link="a")
    ((labels, w),) = m.windows()["x_seconds"]
    assert labels == {"link": "a"}
    assert (w.count, len(w.values), w.values[0]) == (WINDOW + 10, WINDOW, 10.0)
    w.values.clear()
    assert len(m.windows()["x_seconds"][0][1].values) == WINDOW  # a copy
    assert m.snapshot() == {}  # observations are not counters or gauges


def test_metrics_observe_is_thread_safe() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.observe("t_seconds", 0.001, link="a")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w = m.windows()["t_seconds"][0][1]
    assert w.count == 8000 and w.sum == pytest.approx(8.0)


# -- board sensors -----------------------------------------------------------------------
def fake_zone(root: Path, n: int, kind: str, temp: str) -> None:
    zone = root / "sys/class/thermal" / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(temp)


def test_temperatures_from_a_fake_sysfs(tmp_path: Path) -> None:
    fake_zone(tmp_path, 0, "cpu-thermal", "48312\n")
    fake_zone(tmp_path, 1, "gpu-thermal", "")  # a sensor that is off reads empty
    fake_zone(tmp_path, 2, "x86_pkg_temp", "-5000\n")
    assert read_temperatures(tmp_path) == [
        ("thermal_zone0", "cpu-thermal", pytest.approx(48.312)),
        ("thermal_zone2", "x86_pkg_temp", -5.0),
    ]
    fams = families(build_registry(Metrics(), StatusBoard(), root=tmp_path))
    temps = samples(fams, "field_agent_thermal_zone_celsius")
    key = ("field_agent_thermal_zone_celsius", ("type", "cpu-thermal"), ("zone", "thermal_zone0"))
    assert temps[key] == pytest.approx(48.312)
    doc = status_document(Metrics(), StatusBoard(), root=tmp_path)
    assert doc["thermal_c"] == {"cpu-thermal": 48.3, "x86_pkg_temp": -5.0}


def test_no_thermal_zones_no_family_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert read_temperatures(tmp_path) == []
    text = generate_latest(build_registry(Metrics(), StatusBoard(), root=tmp_path)).decode()
    assert "thermal" not in text and "throttled" not in text
    assert "thermal_c" not in status_document(Metrics(), StatusBoard(), root=tmp_path)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("throttled=0x0\n", 0),
        ("throttled=0x50005\n", 0x50005),
        ("throttled=0x80008", 0x80008),
        ('error=1 error_msg="Command not registered"', None),
        ("throttled=banana", None),
        ("", None),
    ],
)
def test_parse_throttled(text: str, value: int | None) -> None:
    assert parse_throttled(text) == value


def test_throttle_flags_name_the_documented_bits() -> None:
    on = {(f, w) for f, w, v in throttle_flags(0x50005) if v}
    assert on == {
        ("under_voltage", "now"),
        ("throttled", "now"),
        ("under_voltage", "since_boot"),
        ("throttled", "since_boot"),
    }
    assert not any(v for *_, v in throttle_flags(0))


def fake_vcgencmd(tmp_path: Path, output: str) -> str:
    script = tmp_path / "bin" / "vcgencmd"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\n[ \"$1\" = get_throttled ] && echo '{output}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


async def test_throttling_flags_from_a_fake_vcgencmd(tmp_path: Path) -> None:
    throttling = Throttling(fake_vcgencmd(tmp_path, "throttled=0x50005"))
    await throttling.refresh()
    assert throttling.value == 0x50005
    fams = families(build_registry(Metrics(), StatusBoard(), root=tmp_path, throttling=throttling))
    flags = samples(fams, "field_agent_throttled")
    assert flags[("field_agent_throttled", ("flag", "under_voltage"), ("when", "now"))] == 1
    assert flags[("field_agent_throttled", ("flag", "soft_temp_limit"), ("when", "now"))] == 0
    doc = status_document(Metrics(), StatusBoard(), root=tmp_path, throttling=throttling)
    assert doc["throttled"]["raw"] == "0x50005"
    assert doc["throttled"]["under_voltage_now"] is True


async def test_vcgencmd_absent_exports_nothing(tmp_path: Path) -> None:
    throttling = Throttling(str(tmp_path / "no-such-vcgencmd"))
    assert throttling.path is None
    await throttling.refresh()
    collector = AgentCollector(Metrics(), StatusBoard(), root=tmp_path, throttling=throttling)
    assert not [f for f in collector.collect() if "throttled" in f.name]


async def test_vcgencmd_garbage_is_one_warning_and_no_flags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    throttling = Throttling(fake_vcgencmd(tmp_path, 'error=1 error_msg="no firmware"'))
    await throttling.refresh()
    throttling._at = -1e9  # force a second run
    await throttling.refresh()
    assert throttling.value is None
    warnings = [r for r in caplog.records if "get_throttled" in r.getMessage()]
    assert len(warnings) == 1


def test_this_machine_has_no_vcgencmd_and_scrapes_cleanly() -> None:
    # the dev box: no Raspberry Pi firmware; whatever thermal zones exist are optional
    if os.path.exists("/usr/bin/vcgencmd"):
        pytest.skip("running on a Raspberry Pi")
    throttling = Throttling()
    assert throttling.path is None
    text = generate_latest(build_registry(Metrics(), StatusBoard(), throttling=throttling))
    assert b"field_agent_throttled" not in text
    assert not math.isnan(process_usage()["rss_bytes"])


def test_prometheus_client_loads_only_at_the_first_scrape() -> None:
    import subprocess
    import sys

    code = (
        "import sys, agent.app, agent.observe.server, agent.__main__\n"
        "assert 'prometheus_client' not in sys.modules, 'imported before any scrape'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
