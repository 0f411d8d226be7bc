"""The ``field-agent`` command line (also ``python -m agent``).

Exit codes (README.md, "Operating the service"): 0 success; 1 a check failed or what
was asked about is not there (selftest FAIL, status: agent not reachable, demo: no
sound card for --real-audio, a device or file error while running); 2 usage: a bad
option or an input file named on the command line that cannot be used (``demo --mic``);
77 (EX_NOPERM) permission denied (a root-only file read as another user); 78
(EX_CONFIG) bad configuration; 130 interrupted (Ctrl-C). A user error is one line on
stderr, never a traceback. ``check-config`` exits 0 for a valid config even when a credential is
missing or cannot be checked (those are warnings: the agent starts and shows the link
needing attention); a mix of VideoSDK credential sets is an error (78).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from agent import __version__, checkconfig, config
from agent.errors import AgentError, ConfigError
from agent.secrets import DEFAULT_DIR

EX_CONFIG = 78
EX_NOPERM = 77
EX_USAGE = 2
EX_INTERRUPTED = 130
DEMO_SPEAKER_FILE = "field-agent-demo-speaker.wav"

logger = logging.getLogger("agent.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="field-agent",
        description=(
            "Voice field-device agent: mic and speaker, push-to-talk, "
            "VideoSDK/Orgo/FastRTC/PBX links."
        ),
    )
    p.add_argument("--version", action="version", version=f"field-agent {__version__}")
    p.add_argument(
        "--log-level",
        default=os.environ.get("FIELD_AGENT_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log threshold (default INFO, or $FIELD_AGENT_LOG_LEVEL)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"config file (default ${config.CONFIG_ENV} or {config.DEFAULT_PATH})",
        )
        sp.add_argument(
            "--credentials",
            type=Path,
            default=None,
            help=f"credentials dir when $CREDENTIALS_DIRECTORY is unset (default {DEFAULT_DIR})",
        )

    with_config(sub.add_parser("run", help="run the agent (what systemd starts)"))
    with_config(sub.add_parser("check-config", help="validate the config; one line per problem"))
    sub.add_parser("devices", help="list ALSA capture/playback devices with stable names")
    selftest = sub.add_parser(
        "selftest", help="tone, mic meter, echo check (hands-free), LED walk, PTT press"
    )
    with_config(selftest)
    selftest.add_argument("--seconds", type=float, default=5.0, help="tone and meter time (5)")
    selftest.add_argument(
        "--ptt-timeout", type=float, default=10.0, help="seconds to wait for a PTT press (10)"
    )
    demo = sub.add_parser("demo", help="the whole agent on simulated hardware and local fakes")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds to run (default: 10 scripted; on a terminal, until q)",
    )
    demo.add_argument("--mic", type=Path, default=None, help="a 16-bit WAV file to use as the mic")
    demo.add_argument(
        "--speaker-out",
        type=Path,
        default=None,
        help="WAV file the speaker records to (default: field-agent-demo-speaker.wav in the "
        "current folder, or none when it is not writable)",
    )
    demo.add_argument(
        "--real-audio",
        action="store_true",
        help="use the ALSA default mic and speaker instead of simulated ones",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's work folder (its config, credentials and mic WAV) in $TMPDIR",
    )
    demo.add_argument(
        "--scripted",
        action="store_true",
        help="run the scripted demo even on a terminal (PTT at 2-5 s, room killed at 6 s)",
    )
    status = sub.add_parser("status", help="show the running agent's status")
    with_config(status)
    status.add_argument(
        "--url",
        default=None,
        help="the agent's /status URL or base (default: from metrics.listen in the config)",
    )
    return p


def _load(args: argparse.Namespace) -> config.Config:
    return config.load(args.config or config.default_path())


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.config or config.default_path()
    return 0 if checkconfig.check(path, args.credentials, args.log_level) else EX_CONFIG


def cmd_run(args: argparse.Namespace) -> int:
    # SIGHUP's default action ends the process: until the agent's own handler is in place
    # (after the imports, the config and the event loop), remember it and reload later.
    early_hup = threading.Event()
    signal.signal(signal.SIGHUP, lambda _sig, _frame: early_hup.set())

    from agent import service
    from agent.app import run_service

    service.setup_logging(args.log_level)
    try:
        cfg = _load(args)
    except ConfigError as e:
        for line in e.problems:
            logger.error("bad config: %s", line)
        return EX_CONFIG
    return run_service(
        cfg,
        credentials_dir=args.credentials,
        config_path=args.config or config.default_path(),
        reload_pending=early_hup,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Scripted without a terminal (CI); live (keyboard and view) on one."""
    import asyncio

    from agent import service
    from agent.demo.bench import format_summary, run_demo
    from agent.demo.devices import check_real_audio
    from agent.errors import AudioError

    if args.real_audio and (args.mic or args.speaker_out):
        print("field-agent demo: --real-audio uses the ALSA mic and speaker; "
              "drop --mic/--speaker-out", file=sys.stderr)  # fmt: skip
        return EX_USAGE
    if args.duration is not None and args.duration <= 0:
        print("field-agent demo: --duration must be more than 0 seconds", file=sys.stderr)
        return EX_USAGE
    problem = _demo_files_problem(args.mic, args.speaker_out)
    if problem:
        print(f"field-agent demo: {problem}", file=sys.stderr)
        return EX_USAGE
    service.setup_logging(args.log_level, journal=False)
    if args.log_level != "DEBUG":  # the fake servers' open/close lines: the demo's narrate
        for name in ("agent.sandbox.videosdk.wire", "agent.sandbox.orgo.ws"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.real_audio:
        try:
            check_real_audio(config.AudioConfig())
        except AudioError as e:
            print(f"field-agent demo: {e}", file=sys.stderr)
            return 1
    live = not args.scripted and sys.stdin.isatty() and sys.stdout.isatty()
    speaker_out = args.speaker_out
    if speaker_out is None and not args.real_audio and os.access(Path.cwd(), os.W_OK):
        speaker_out = Path.cwd() / DEMO_SPEAKER_FILE  # named in the summary, outlives the demo
    demo = run_demo(
        duration_s=args.duration, mic=args.mic, speaker_out=speaker_out,
        live=live, real_audio=args.real_audio, keep=args.keep,
    )  # fmt: skip
    try:
        summary = asyncio.run(demo)
    except KeyboardInterrupt:  # scripted, or starting up (live, Ctrl-C quits with a summary)
        return EX_INTERRUPTED
    print(format_summary(summary))
    return 0 if summary["exit_code"] == 0 else 1


def _demo_files_problem(mic: Path | None, speaker_out: Path | None) -> str | None:
    """Why ``--mic`` / ``--speaker-out`` cannot be used, before anything starts (or None)."""
    from agent.errors import AudioError
    from agent.hw.sim import WavSource

    if mic is not None:
        if mic.is_dir():
            return f"--mic {mic}: is a directory, give a 16-bit WAV file"
        try:
            WavSource(mic, 8000, loop=False)  # reads and converts the file, as the demo's mic
        except AudioError as e:
            return f"--mic {mic}: {_reason(e)}"
    if speaker_out is not None:
        parent = speaker_out.resolve().parent
        if speaker_out.is_dir():
            return f"--speaker-out {speaker_out}: is a directory, give a file name (speaker.wav)"
        if not parent.is_dir():
            return f"--speaker-out {speaker_out}: no directory {parent}"
        writable = speaker_out if speaker_out.exists() else parent
        if not os.access(writable, os.W_OK):
            return f"--speaker-out {speaker_out}: {writable} is not writable"
    return None


def _reason(e: BaseException) -> str:
    """``No such file or directory`` rather than ``[Errno 2] No such file ...: 'x.wav'``."""
    cause = e.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    if cause is not None:  # wave.Error, EOFError: the bytes are not a PCM WAV file
        detail = str(cause).strip()
        return "not a WAV file" + (f" ({detail})" if detail else "")
    return str(e).split(": ", 1)[-1]  # e.g. "8-bit WAV, want 16-bit PCM"


def cmd_devices(args: argparse.Namespace) -> int:
    from agent import service
    from agent.hw.devices import list_devices

    service.setup_logging(args.log_level, journal=False)  # alsa-lib's lines: DEBUG
    print(list_devices())
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """Speaker tone + mic meter, then LED walk and a PTT press if GPIO is configured."""
    import asyncio

    from agent import service
    from agent.hw.devices import selftest_audio

    service.setup_logging(args.log_level, journal=False)  # alsa-lib's, gpiozero's: DEBUG
    try:
        cfg = _load(args)
    except ConfigError as e:
        for line in e.problems:
            print(line)
        return EX_CONFIG
    a = cfg.audio
    print(
        f"speaker {a.playback_device} @ {a.playback_rate} Hz: 1 kHz tone; mic {a.capture_device}:"
    )
    ok, report = selftest_audio(
        a.capture_device, a.playback_device, capture_rate=a.capture_rate,
        playback_rate=a.playback_rate, seconds=args.seconds, out=print,
    )  # fmt: skip
    print(report)
    if ok:
        ok = _selftest_echo(cfg, args.seconds) and ok
    if cfg.gpio.pins():
        gpio_ok, gpio_report = asyncio.run(_selftest_gpio(cfg, args.ptt_timeout))
        print(gpio_report)
        ok = ok and gpio_ok
    if cfg.pixels.enabled:
        from agent.hw.pixels import selftest as selftest_pixels

        pixels_ok, pixels_report = asyncio.run(selftest_pixels(cfg.pixels))
        print(pixels_report)
        ok = ok and pixels_ok
    print("selftest:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def _selftest_echo(cfg: config.Config, seconds: float) -> bool:
    """With hands-free asked for (``echo_cancel`` "on"/"auto", the library installed):
    play a probe and print how much of it the mic hears with and without cancellation."""
    a = cfg.audio
    if a.echo_cancel == "off":
        print('echo check: skipped (audio.echo_cancel = "off")')
        return True
    from agent.audio.handsfree import INSTALL_HINT, library_available

    if not library_available():
        print(f"echo check: skipped (the hands-free library is not installed: {INSTALL_HINT})")
        return True
    from agent.audio.echotest import echo_report

    print(f"echo check: probe on {a.playback_device}, cancelled in {a.capture_device}:")
    ok, lines = echo_report(
        a.capture_device, a.playback_device, capture_rate=a.capture_rate,
        playback_rate=a.playback_rate, seconds=max(seconds, 6.0),
    )  # fmt: skip
    print(lines)
    return ok


async def _selftest_gpio(cfg: config.Config, ptt_timeout_s: float) -> tuple[bool, str]:
    import asyncio
    import warnings

    from gpiozero.exc import PinFactoryFallback

    from agent.errors import GpioUnavailable
    from agent.hw.gpio import ButtonEvent, GpioPanel
    from agent.status import Led

    pressed = asyncio.Event()

    def on_button(key: str, event: ButtonEvent, _t: float) -> None:
        if key == "ptt_button" and event is ButtonEvent.PRESSED:
            pressed.set()

    # gpiozero warns once per pin factory it could not load (lgpio, rpigpio, pigpio,
    # native: four warnings with source lines off a Pi): one line here, the rest DEBUG
    with warnings.catch_warnings(record=True) as fallbacks:
        warnings.simplefilter("always", PinFactoryFallback)
        try:
            panel = GpioPanel(cfg.gpio, loop=asyncio.get_running_loop(), on_button=on_button)
        except GpioUnavailable as e:
            panel = None
            failure = str(e)
    tried = []
    for w in fallbacks:
        if issubclass(w.category, PinFactoryFallback):
            logger.debug("gpiozero: %s", w.message)
            tried.append(str(w.message).removeprefix("Falling back from ").split(":")[0])
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if panel is None:
        why = f" (gpiozero tried {', '.join(tried)}; --log-level DEBUG says why)" if tried else ""
        return False, f"gpio: {failure}{why}"
    if tried:
        logger.info("gpio: gpiozero fell back from %s to the next pin factory", ", ".join(tried))
    try:
        for led in sorted(panel.leds):
            print(f"LED {led} (GPIO {getattr(cfg.gpio, led)}) on")
            panel.set_led(led, Led.ON)
            await asyncio.sleep(0.5)
            panel.set_led(led, Led.OFF)
        if cfg.gpio.ptt_button is None:
            return True, "gpio: LEDs walked; no PTT button configured"
        print(f"press the PTT button (GPIO {cfg.gpio.ptt_button}) within {ptt_timeout_s:.0f} s ...")
        try:
            async with asyncio.timeout(ptt_timeout_s):
                await pressed.wait()
        except TimeoutError:
            return False, "gpio: no PTT press seen (check the wiring and gpio.ptt_button)"
        return True, "gpio: LEDs walked; PTT press seen"
    finally:
        panel.close()


def cmd_status(args: argparse.Namespace) -> int:
    """Print the running agent's /status as a table; exit 1 when it does not answer."""
    from agent.observe import statuscmd

    if args.url:
        url = statuscmd.normalise_url(args.url)
    else:
        path = args.config or config.default_path()
        try:
            listen = config.load(path).metrics.listen
        except ConfigError:  # the running agent may still be fine: ask where it said
            listen_or_none = statuscmd.listen_from_file(path)
            if listen_or_none is None:  # no file (or unreadable): where an agent listens by default
                listen = config.MetricsConfig().listen
                print(
                    f"field-agent status: cannot read {path} "
                    f"({_file_problem(path)}); asking the default {listen}",
                    file=sys.stderr,
                )
            else:
                listen = listen_or_none
                print(
                    f"field-agent status: {path} has problems (see field-agent check-config); "
                    f"asking {listen or 'nobody'}",
                    file=sys.stderr,
                )
        if not listen:
            print(
                f"field-agent status: metrics.listen is off in {path}; "
                "nothing to ask (set it, or pass --url)",
                file=sys.stderr,
            )
            return 1
        url = statuscmd.status_url(listen)
    try:
        doc = statuscmd.fetch(url)
    except statuscmd.Unreachable as e:
        print(f"field-agent status: agent not reachable: {e}", file=sys.stderr)
        return 1
    print(statuscmd.format_status(doc))
    return 0


def _file_problem(path: Path) -> str:
    try:
        path.read_bytes()
    except OSError as e:
        return (e.strerror or str(e)).lower()
    return "not valid TOML"


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "devices": cmd_devices,
    "selftest": cmd_selftest,
    "demo": cmd_demo,
    "status": cmd_status,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":  # the service: its own error handling, tracebacks to the journal
        return COMMANDS["run"](args)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EX_INTERRUPTED
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EX_CONFIG
    except PermissionError as e:  # e.g. a root-only file, run as another user
        where = f": {e.filename}" if e.filename else f": {e}"
        print(
            f"field-agent {args.command}: permission denied{where} "
            "(run it as root, e.g. with sudo, or as a user who may read it)",
            file=sys.stderr,
        )
        return EX_NOPERM
    except (AgentError, OSError) as e:  # a device or file problem: one line, not a traceback
        print(f"field-agent {args.command}: {e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:  # from a TaskGroup: the same, when that is all it holds
        user_errors, rest = group.split((AgentError, OSError))
        if rest is not None or user_errors is None:
            raise
        print(f"field-agent {args.command}: {_first_leaf(user_errors)}", file=sys.stderr)
        return 1


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":
    sys.exit(main())
