"""What ``field-agent check-config`` reports: the config's problems, then the credentials.

A config that does not load prints one line per problem (``PATH: section.key:
reason``) and is refused. A config that loads prints a warning for each value
still the shipped example, which VideoSDK credential set is on disk (a mix of
sets is refused), and one line per credential the enabled links need: read and
checked as the agent reads it, or why it cannot be checked from here (not found,
or a root-only directory: run with sudo). Missing credentials are warnings: the
agent starts and shows the link needing attention.
"""

from __future__ import annotations

from pathlib import Path

from agent import config
from agent.errors import ConfigError, CredentialError
from agent.secrets import Credentials, denied


def check(path: Path, credentials_dir: Path | None, log_level: str) -> bool:
    """Print the report for the config at ``path``; False when it is refused (exit 78)."""
    try:
        cfg = config.load(path)
    except ConfigError as e:
        for line in e.problems:
            print(line)
        return False
    for example in config.example_values(cfg):
        print(f"{path}: warning: {example} is the example value: edit it")
    from agent import service

    service.setup_logging(log_level, journal=False)  # credential warnings on stderr
    creds = Credentials(credentials_dir)
    if cfg.videosdk.enabled:
        line, ok = videosdk_credentials(cfg, creds)
        if line:
            print(f"{path}: {line}")
        if not ok:
            return False
    for line in check_credentials(creds, needed_credentials(cfg)):
        print(f"{path}: {line}")
    print(f"{path}: OK")
    return True


def videosdk_credentials(cfg: config.Config, creds: Credentials) -> tuple[str, bool]:
    """Which VideoSDK credential set is on disk ("" when none is: the per-file check
    says what is missing), and False for a refused mix (exit 78)."""
    from agent.links.videosdk_auth import CredentialConflict, credential_mode, present_credentials

    present = present_credentials(creds)
    if not present:
        return "", True
    try:
        mode = credential_mode(present, cfg.videosdk.session_url)
    except CredentialConflict as e:
        return f"videosdk.session_url: {e}", False
    except CredentialError as e:
        return f"warning: {e}", True
    return f"videosdk credentials: {mode.value}", True


def check_credentials(creds: Credentials, needed: list[str]) -> list[str]:
    """One line per credential the enabled links need: read and checked as the agent
    reads it, or why it cannot be checked from here. Never raises.

    ``needed`` as :func:`needed_credentials` gives it: ``a|b+c`` = a, or b and c."""
    lines: list[str] = []
    for spec in needed:
        options = [option.split("+") for option in spec.split("|")]
        shown = " or ".join(" and ".join(option) for option in options)
        # the first option whose first file is there (a token beats a key pair)
        chosen = next((option for option in options if creds.has(option[0])), None)
        if chosen is None:
            if creds.denied:
                where = ", ".join(f"{d} is {denied(d)}" for d in sorted(creds.denied))
                lines.append(
                    f"credentials: cannot check {shown}: {where}: "
                    "run with sudo to check credentials"
                )
            else:
                dirs = " or ".join(str(d) for d in creds.dirs)
                firsts = " or ".join(option[0] for option in options)
                pairs = "".join(
                    f" ({option[0]} with {' and '.join(option[1:])})"
                    for option in options
                    if len(option) > 1
                )
                lines.append(f"warning: credential {firsts} not found in {dirs}{pairs}")
            continue
        for name in chosen:
            try:
                creds.get(name)
            except CredentialError as e:
                lines.append(f"warning: {e}")
            else:
                lines.append(f"credentials: {name}: ok ({creds.path_of(name)})")
    return lines


def needed_credentials(cfg: config.Config) -> list[str]:
    """Credentials the enabled links need; ``a|b+c`` means a, or b and c."""
    out = []
    if cfg.videosdk.enabled and cfg.videosdk.session_url:
        out.append("device-token")  # a session broker's device
    elif cfg.videosdk.enabled:
        out.append("videosdk-token|videosdk-api-key+videosdk-secret")
    if cfg.orgo.enabled:
        out.append("orgo-api-key")
    if cfg.pbx.enabled:
        out.append("pbx-secret")
    return out
