"""``field-agent-broker``: enroll, revoke, list, serve.

Exit codes: 0 success; 1 the command failed (e.g. revoking an unknown device);
2 usage; 78 bad configuration (unreadable enrolment file, credentials missing or mixed).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from field_agent_broker import __version__
from field_agent_broker.enrolment import ANY_ROOM, EnrolmentError, enroll, load, revoke

EX_CONFIG = 78
ENV = "FIELD_AGENT_BROKER_"
DEFAULT_ENROLMENT = "/etc/field-agent-broker/devices.json"
DEFAULT_CREDENTIALS = "/etc/field-agent-broker/credentials"
TOKEN, API_KEY, SECRET = "videosdk-token", "videosdk-api-key", "videosdk-secret"
CREDENTIAL_ID = "field-agent-broker"

logger = logging.getLogger("field_agent_broker.cli")


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV + name, default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="field-agent-broker",
        description="Session broker for field-agent fleets: devices present their own "
        "token; the broker holds the VideoSDK account and creates their ingest sessions.",
    )
    p.add_argument("--version", action="version", version=f"field-agent-broker {__version__}")
    p.add_argument(
        "--enrolment",
        type=Path,
        default=Path(_env("ENROLMENT", DEFAULT_ENROLMENT)),
        help=f"enrolment file (${ENV}ENROLMENT, default {DEFAULT_ENROLMENT})",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("enroll", help="enrol a device: print its new token once")
    e.add_argument("device_id", metavar="DEVICE_ID", help="the agent's device.id")
    e.add_argument(
        "--rooms",
        nargs="+",
        default=[ANY_ROOM],
        metavar="ROOM",
        help="rooms the device may join (default: any room, '*')",
    )
    r = sub.add_parser("revoke", help="disable a device (its sessions are refused with 403)")
    r.add_argument("device_id", metavar="DEVICE_ID")
    sub.add_parser("list", help="list enrolled devices (never their tokens)")

    s = sub.add_parser("serve", help="run the HTTP server")
    s.add_argument(
        "--listen",
        default=_env("LISTEN", "127.0.0.1:8080"),
        help=f"HOST:PORT (${ENV}LISTEN, default 127.0.0.1:8080; 0.0.0.0:8080 in a container)",
    )
    s.add_argument(
        "--api-base",
        default=_env("API_BASE", "https://api.videosdk.live"),
        help=f"VideoSDK REST base URL (${ENV}API_BASE)",
    )
    s.add_argument(
        "--credentials",
        type=Path,
        default=None,
        help="directory with videosdk-token, or videosdk-api-key + videosdk-secret "
        f"(default $CREDENTIALS_DIRECTORY, else {DEFAULT_CREDENTIALS}); or set "
        "$VIDEOSDK_TOKEN, or $VIDEOSDK_API_KEY + $VIDEOSDK_SECRET",
    )
    s.add_argument(
        "--upstream-timeout",
        type=float,
        default=float(_env("UPSTREAM_TIMEOUT", "5")),
        help="seconds VideoSDK may take (default 5)",
    )
    s.add_argument("--rate-burst", type=int, default=int(_env("RATE_BURST", "5")), help="default 5")
    s.add_argument(
        "--rate-per-minute",
        type=float,
        default=float(_env("RATE_PER_MINUTE", "12")),
        help="sustained session requests per device per minute, per replica (default 12)",
    )
    s.add_argument("--max-body", type=int, default=8192, help="bytes (default 8192)")
    s.add_argument("--ca-file", default=_env("CA_FILE", ""), help="extra CAs for api_base")
    s.add_argument(
        "--tls-cert",
        default=_env("TLS_CERT", ""),
        help="PEM certificate chain: serve https:// itself (else TLS ends at a proxy in front)",
    )
    s.add_argument("--tls-key", default=_env("TLS_KEY", ""), help="PEM key of --tls-cert")
    s.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow an http:// api_base that is not loopback",
    )
    s.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "enroll":
            token = enroll(args.enrolment, args.device_id, tuple(args.rooms))
            print(token)
            print(
                f"enrolled {args.device_id} (rooms: {' '.join(args.rooms)}) in {args.enrolment}. "
                "The token above is shown once: put it in the device's credential file "
                "device-token (mode 0600).",
                file=sys.stderr,
            )
            return 0
        if args.command == "revoke":
            revoke(args.enrolment, args.device_id)
            print(f"revoked {args.device_id} in {args.enrolment}", file=sys.stderr)
            return 0
        if args.command == "list":
            for d in sorted(load(args.enrolment).values(), key=lambda d: d.id):
                state = "enabled" if d.enabled else "revoked"
                print(f"{d.id}\t{state}\t{' '.join(d.rooms)}\t{d.enrolled_at}")
            return 0
    except EnrolmentError as e:
        print(f"field-agent-broker: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"field-agent-broker: {args.enrolment}: {e.strerror or e}", file=sys.stderr)
        return 1
    return serve(args)


def read_account(directory: Path | None, env: Mapping[str, str]) -> dict[str, str]:
    """Account credential values from files (or the environment); ValueError if mixed."""
    dirs = [Path(env["CREDENTIALS_DIRECTORY"])] if env.get("CREDENTIALS_DIRECTORY") else []
    dirs.append(directory or Path(DEFAULT_CREDENTIALS))
    found: dict[str, str] = {}
    for name in (TOKEN, API_KEY, SECRET):
        # systemd LoadCredential=field-agent-broker:DIR names them "field-agent-broker_<file>"
        candidates = [c for d in dirs for c in (d / name, d / f"{CREDENTIAL_ID}_{name}")]
        for path in candidates:
            if path.is_file():
                value = path.read_text(encoding="utf-8").strip()
                if not value:
                    raise ValueError(f"credential file {path} is empty")
                found[name] = value
                break
        else:
            var = name.upper().replace("-", "_")
            if env.get(var):
                found[name] = env[var]
    if TOKEN in found and (API_KEY in found or SECRET in found):
        raise ValueError(
            f"credentials: found {TOKEN} and {API_KEY}/{SECRET}: keep exactly one kind"
        )
    if TOKEN not in found and not (API_KEY in found and SECRET in found):
        raise ValueError(
            f"credentials: need {TOKEN}, or {API_KEY} and {SECRET} "
            f"(files in {' or '.join(map(str, dirs))}, or environment variables)"
        )
    return found


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from field_agent_broker import logs
    from field_agent_broker.app import Account, Settings, create_app

    logs.setup(args.log_level)

    def bad(reason: str) -> int:
        print(f"field-agent-broker: {reason}", file=sys.stderr)
        return EX_CONFIG

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return bad(f"--listen must be HOST:PORT, not {args.listen!r}")
    parts = urlsplit(args.api_base)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return bad(f"--api-base must be an https:// URL, not {args.api_base!r}")
    if parts.scheme == "http" and not args.allow_insecure and not _loopback(parts.hostname):
        return bad(
            "--api-base: http:// to a non-loopback host would send the account token "
            "in clear; use https:// (or --allow-insecure)"
        )
    try:
        creds = read_account(args.credentials, os.environ)
    except (ValueError, OSError) as e:
        return bad(str(e))
    try:
        account = Account(
            token=creds.get(TOKEN), api_key=creds.get(API_KEY), secret=creds.get(SECRET)
        )
        settings = Settings(
            enrolment=args.enrolment,
            api_base=args.api_base,
            upstream_timeout_s=args.upstream_timeout,
            max_body_bytes=args.max_body,
            rate_burst=args.rate_burst,
            rate_per_s=args.rate_per_minute / 60.0,
            ca_file=args.ca_file,
        )
        app = create_app(settings, account)
    except EnrolmentError as e:
        return bad(str(e))
    if bool(args.tls_cert) != bool(args.tls_key):
        return bad("--tls-cert and --tls-key go together")
    tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key} if args.tls_cert else {}
    config = uvicorn.Config(
        app,
        **tls,
        host=host.strip("[]"),
        port=int(port),
        log_config=None,  # ours: JSON lines
        access_log=False,  # the app logs each session request (without credentials)
        server_header=False,
        timeout_keep_alive=5,
        limit_concurrency=1000,  # beyond: 503, not an unbounded queue
        h11_max_incomplete_event_size=16 * 1024,  # request line + headers
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
