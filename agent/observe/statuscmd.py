"""``field-agent status``: ask the running agent's ``/status`` and print a compact table.

Kept light (stdlib only): it runs on a Pi from a shell, often while the agent is busy.
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_S = 3.0


class Unreachable(Exception):
    """The agent did not answer (not running, metrics.listen off or elsewhere)."""


def status_url(listen: str) -> str:
    """The URL of ``/status`` for a ``metrics.listen`` value (wildcards -> loopback)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/status"


def listen_from_file(path: str | os.PathLike[str]) -> str | None:
    """``metrics.listen`` from a TOML file that fails validation elsewhere (its default
    when absent); None when the file cannot be read or the key is not a string."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    from agent.config import MetricsConfig

    section = raw.get("metrics", {})
    listen = section.get("listen", MetricsConfig().listen) if isinstance(section, dict) else None
    return listen if isinstance(listen, str) else None


def normalise_url(url: str) -> str:
    """``--url``: a base (``http://pi:9464``) or the full ``/status`` URL."""
    if "://" not in url:
        url = "http://" + url
    return url if url.rstrip("/").endswith("/status") else url.rstrip("/") + "/status"


def fetch(url: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """GET the status document; :class:`Unreachable` with a one-line reason otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body = reply.read()
    except urllib.error.HTTPError as e:
        raise Unreachable(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"{url}: {reason}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise Unreachable(
            f"{url}: the answer is not JSON (another service on that port?)"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("links"), dict):
        raise Unreachable(f"{url}: the answer is not a field-agent status document")
    return doc


def _uptime(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s"


def _n(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def format_status(doc: dict[str, Any]) -> str:
    """The human table: a headline, links, audio sources, devices, process, last error."""
    ptt = doc.get("ptt", {})
    head = [
        f"field-agent {doc.get('version', '?')}",
        f"up {_uptime(float(doc.get('uptime_s', 0)))}",
        f"led {doc.get('led', '?')}",
        f"ptt {ptt.get('state', '?')} ({ptt.get('mode', '?')})",
        "muted" if doc.get("muted") else f"volume {float(doc.get('volume', 0)):.2f}",
    ]
    if doc.get("mic_dbfs") is not None:
        head.append(f"mic {float(doc['mic_dbfs']):.0f} dBFS")
    lines = [" · ".join(head)]
    room = doc.get("channel")
    if isinstance(room, dict) and room.get("id"):
        name = f"{room['name']} ({room['id']})" if room.get("name") else str(room["id"])
        lines.append(f"channel {room.get('number', '?')}/{room.get('count', '?')}: {name}")
    emergency = doc.get("emergency")
    if isinstance(emergency, dict):
        mic = "mic open" if emergency.get("mic_open") else "mic per PTT"
        lines.append(
            f"EMERGENCY since {emergency.get('since', '?')} "
            f"({_n(emergency.get('active_s'))} s, by {emergency.get('by', '?')}, {mic})"
        )
    hf = doc.get("handsfree")
    if isinstance(hf, dict):
        erle, gain = hf.get("erle_db"), hf.get("gain_db")
        parts = [
            "hands-free:",
            "echo -" if erle is None else f"echo {float(erle):.0f} dB down (ERLE)",
            f"gain {float(gain):+.0f} dB" if gain is not None else "gain off",
            f"CPU {float(hf.get('cpu_percent') or 0.0):.1f} % of the audio's time",
        ]
        lines.append(" ".join(parts[:2]) + " · " + " · ".join(parts[2:]))
    lines.append("")

    links = doc.get("links", {})
    if links:
        rows = [
            [
                "LINK",
                "STATE",
                "SENT",
                "RECV",
                "DROPPED",
                "RECONN",
                "MALFORMED",
                "UPLINK p99",
                "DETAIL",
            ]
        ]
        for name, link in links.items():
            latency = link.get("uplink_latency_ms")
            detail = link.get("detail", "")
            if "retry_in_s" in link:
                detail = (
                    f"{detail}, retry in {link['retry_in_s']:.0f}s"
                    if detail
                    else (f"retry in {link['retry_in_s']:.0f}s")
                )
            rows.append([
                name, str(link.get("state", "?")), _n(link.get("frames_sent")),
                _n(link.get("frames_received")), _n(link.get("frames_dropped")),
                _n(link.get("reconnects")), _n(link.get("malformed")),
                f"{latency['p99']:.1f} ms" if latency else "-", detail,
            ])  # fmt: skip
        lines += _table(rows, right={2, 3, 4, 5, 6, 7})
    else:
        lines.append("no links enabled")

    sources = doc.get("sources", {})
    if sources:
        rows = [[
            "SOURCE", "BUFFER", "TARGET", "PLAYED", "UNDERRUNS", "RESETS", "STALLS", "PLAYOUT p99"
        ]]  # fmt: skip
        for name, src in sources.items():
            latency = src.get("playout_latency_ms")
            rows.append([
                name, f"{src.get('depth_ms', 0):.0f} ms", f"{src.get('target_ms', 0):.0f} ms",
                _n(src.get("frames_played")), _n(src.get("underruns")), _n(src.get("resets")),
                _n(src.get("stalls")), f"{latency['p99']:.1f} ms" if latency else "-",
            ])  # fmt: skip
        lines += ["", *_table(rows, right={1, 2, 3, 4, 5, 6, 7})]

    devices = doc.get("devices", {})
    if devices:
        rows = [["DEVICE", "STATE", "DETAIL"]]
        rows += [[n, str(d.get("state", "?")), d.get("detail", "")] for n, d in devices.items()]
        lines += ["", *_table(rows, right=set())]

    audio, proc = doc.get("audio", {}), doc.get("process", {})
    facts = []
    if audio:
        xruns = sum(audio.get("xruns", {}).values())
        facts.append(
            f"captured {_n(audio.get('frames_captured'))} frames, "
            f"{_n(audio.get('capture_drops'))} dropped, {xruns:.0f} xruns"
        )
    if proc:
        facts.append(
            f"rss {proc.get('rss_bytes', 0) / 1e6:.1f} MB, cpu {proc.get('cpu_seconds', 0):.1f} s"
        )
    for kind, celsius in doc.get("thermal_c", {}).items():
        facts.append(f"{kind} {celsius:.1f} °C")
    throttled = doc.get("throttled")
    if throttled:
        flags = [k for k in throttled if k != "raw"]
        facts.append(
            f"throttled {throttled.get('raw')}" + (f" ({', '.join(flags)})" if flags else "")
        )
    if facts:
        lines += ["", " · ".join(facts)]
    lines.append(f"last error: {doc.get('last_error') or '-'}")
    return "\n".join(lines)
