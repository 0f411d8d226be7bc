#!/bin/sh
# Install field-agent as a systemd service on Debian 12 / Raspberry Pi OS (bookworm).
#
#   sudo image/provision.sh                      on a device, from a clone (uses apt and PyPI)
#   image/provision.sh --wheels DIR --no-apt     inside an image build's chroot (offline)
#
# What it does (each step is idempotent; an existing /etc/field-agent/agent.toml is kept):
#   - apt: python3-venv and alsa-utils; when something must be compiled (pyalsaaudio and
#     systemd-python have no binary wheels), the build dependencies, removed afterwards
#   - the venv /opt/field-agent with field-agent[gpio] (the unit's ExecStart)
#   - the system group gpio (Raspberry Pi OS has it; Debian does not) and a udev rule
#     that gives it the /dev/gpiochip* devices; the system user field-agent (audio, gpio)
#   - /etc/field-agent/agent.toml (the documented config), /etc/field-agent/credentials
#     (root, 0700: systemd hands its files to the service with LoadCredential=)
#   - /etc/systemd/system/field-agent.service, enabled
#
# Options:
#   --src DIR      the repository (default: this script's parent directory)
#   --wheels DIR   install from this directory only (pip --no-index); sdists in it are
#                  built, with the build dependencies installed for that and removed
#   --no-apt       do not run apt-get (the packages must be there already)
#   --start        start (or restart) the service at the end
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
wheels=""
use_apt=1
start=0
while [ $# -gt 0 ]; do
  case $1 in
    --src) src=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --no-apt) use_apt=0; shift ;;
    --start) start=1; shift ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//;/^set -eu/d'; exit 0 ;;
    *) echo "provision: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "provision: run as root (sudo)" >&2; exit 1; }
[ -f "$src/systemd/field-agent.service" ] || { echo "provision: $src is not the repository" >&2; exit 1; }

VENV=/opt/field-agent
ETC=/etc/field-agent
RUNTIME_PKGS="python3 python3-venv alsa-utils"
BUILD_PKGS="gcc python3-dev libasound2-dev libsystemd-dev pkg-config"
export DEBIAN_FRONTEND=noninteractive

say() { echo "provision: $*"; }

# Something to compile? From PyPI: always (pyalsaaudio, systemd-python are sdists only).
# From a wheelhouse: when it holds sdists (an arm64 build fed with PyPI's files).
needs_build=1
if [ -n "$wheels" ] && ! ls "$wheels" | grep -q '\.tar\.gz$'; then
  needs_build=0
fi
installed_build_pkgs=""
if [ $use_apt -eq 1 ]; then
  say "apt: $RUNTIME_PKGS"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends $RUNTIME_PKGS >/dev/null
fi
if [ $needs_build -eq 1 ]; then
  for p in $BUILD_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
      installed_build_pkgs="$installed_build_pkgs $p"
  done
  if [ -n "$installed_build_pkgs" ]; then
    say "apt: build dependencies$installed_build_pkgs (removed again at the end)"
    [ $use_apt -eq 1 ] || apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends $installed_build_pkgs >/dev/null
  fi
fi

say "venv $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ -n "$wheels" ]; then
  "$VENV/bin/pip" install -q --no-cache-dir --no-index --find-links "$wheels" 'field-agent[gpio]'
else
  "$VENV/bin/pip" install -q --no-cache-dir "$src[gpio]"
fi
"$VENV/bin/field-agent" --version
# on PATH for the owner (a login shell's PATH and sudo's secure_path have /usr/local/bin)
ln -sfn "$VENV/bin/field-agent" /usr/local/bin/field-agent
# every native module loads on this machine (wheels of the right platform, libraries there)
"$VENV/bin/python" -c 'import numpy, soxr, alsaaudio, lgpio, gpiod, systemd.journal, agent.app'

if [ -n "$installed_build_pkgs" ]; then
  say "apt: removing the build dependencies"
  apt-get purge -y -q --autoremove $installed_build_pkgs >/dev/null
fi

say "groups and user"
getent group gpio >/dev/null || groupadd --system gpio
getent group audio >/dev/null || groupadd --system audio
if ! id field-agent >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/field-agent --no-create-home \
    --shell /usr/sbin/nologin --groups audio,gpio --comment "field-agent service" field-agent
fi
# Raspberry Pi OS gives /dev/spidev* to its group spi (the pixel LEDs)
if getent group spi >/dev/null; then usermod -a -G spi field-agent; fi
install -D -m 0644 "$src/image/files/60-field-agent-gpio.rules" \
  /etc/udev/rules.d/60-field-agent-gpio.rules

say "config and credentials in $ETC"
install -d -m 0755 "$ETC"
if [ -e "$ETC/agent.toml" ]; then
  say "keeping the existing $ETC/agent.toml"
else
  install -m 0644 "$src/config/agent.toml" "$ETC/agent.toml"
fi
install -d -m 0700 -o root -g root "$ETC/credentials"

say "systemd unit"
install -m 0644 "$src/systemd/field-agent.service" /etc/systemd/system/field-agent.service
if [ -d /run/systemd/system ] && ! systemd-detect-virt --chroot --quiet; then
  systemctl daemon-reload
  udevadm control --reload 2>/dev/null && udevadm trigger --subsystem-match=gpio 2>/dev/null || true
  systemctl enable field-agent.service
  [ $start -eq 0 ] || systemctl restart field-agent.service
else
  systemctl enable field-agent.service  # in a chroot: only creates the symlink
fi
# the next steps, in the words of whoever ran this: sudo for a sudo user, none for root
if [ -n "${SUDO_USER:-}" ]; then sudo="sudo " edit="sudoedit"; else sudo="" edit="editor"; fi
say "done: $("$VENV/bin/field-agent" --version) in $VENV, on PATH as /usr/local/bin/field-agent"
cat <<EOF
Next steps:
  1. the sound card's stable names:   field-agent devices
  2. the config (device.id, videosdk.room_id, audio devices, GPIO pins):
       $edit $ETC/agent.toml
  3. each secret in its own file (mode 0600) in $ETC/credentials/, e.g.
       ${sudo}sh -c 'umask 077; cat > $ETC/credentials/videosdk-token'   (paste, then Ctrl-D)
  4. check both (as root: the credentials are root-only):
       ${sudo}field-agent check-config
  5. start it, then look:
       ${sudo}systemctl restart field-agent && field-agent status
       journalctl -u field-agent -f
EOF
