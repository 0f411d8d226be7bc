#!/bin/sh
# Put the VM-tier test overlay into a provisioned amd64 rootfs (called by image/build --vm).
#   image/vm/install.sh ROOTFS
# Adds: snd-aloop at boot, the gpio-sim chip, the sandbox servers, the test config and
# credentials (random values, so the checks can look for them in the journal) in the
# first-boot directory (image/firstboot/), the
# field-agent drop-in, the checks unit; masks the serial getty (its hang-ups would
# swallow the results on ttyS0) and the apt timers.
set -eu
root=$1
here=$(dirname "$(readlink -f "$0")")
lib=$root/usr/local/lib/field-agent-vm
units=$root/etc/systemd/system

install -D -m 0644 "$here/checks.py" "$lib/checks.py"
install -m 0644 "$here/cpuinfo" "$lib/cpuinfo"
# the CPU benchmark in the guest (image/vm-run --bench: checks.py runs it after the checks)
install -D -m 0644 "$here/../../bench/guest_cpu.py" "$lib/bench/guest_cpu.py"
install -m 0644 "$here/../../bench/agent_bench.py" "$lib/bench/agent_bench.py"
# snd-aloop is NOT loaded at boot: check 10 plugs the "sound card" in (modprobe) while
# the agent runs, as a USB card would be; the audio checks after it use it.
rm -f "$root/etc/modules-load.d/field-agent-vm.conf"
# The network trap of a field device (check 11): systemd-networkd manages en*/wlan*
# (the Pi image's .network files), systemd-networkd-wait-online waits its stock 2 min
# for a link that never comes (-nic none), and a unit wants network-online.target.
mkdir -p "$root/etc/systemd/network"
install -m 0644 "$here/../raspi/10-field-agent-wired.network" \
  "$here/../raspi/20-field-agent-wireless.network" "$root/etc/systemd/network/"
# The config, the credentials, a Wi-Fi file and an ssh key go where an owner puts them:
# the first-boot directory (the Pi's FAT partition; /boot/field-agent here), so the
# agent only comes up if field-agent-firstboot.service moved them into place (check 8).
# The image keeps the shipped example config in /etc/field-agent until then.
. "$root/etc/default/field-agent-firstboot"
boot=$root$FIELD_AGENT_FIRSTBOOT_DIR
secret() { od -An -N12 -tx1 /dev/urandom | tr -d ' \n'; }
mkdir -p "$boot/field-agent-credentials"
install -m 0644 "$here/agent.toml" "$boot/agent.toml"
printf 'vm-videosdk-token-%s\r\n' "$(secret)" > "$boot/field-agent-credentials/videosdk-token.txt"
printf 'sk_orgo_vm_%s\n' "$(secret)" > "$boot/field-agent-credentials/orgo-api-key"
printf 'ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev\nnetwork={\n  ssid="vm-net"\n  psk="vm-psk-%s"\n}\n' \
  "$(secret)" > "$boot/wpa_supplicant.conf"
key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI$(secret) vm-check@field-agent"
printf '%s\n' "$key" > "$boot/authorized_keys"
printf '%s\n' "$key" > "$lib/firstboot-ssh-key"  # what check 8 looks for
for u in field-agent-vm-gpio.service field-agent-sandbox.service field-agent-vm-checks.service \
    field-agent-vm-netwait.service; do
  install -m 0644 "$here/$u" "$units/$u"
done
install -D -m 0644 "$here/field-agent-vm.conf" "$units/field-agent.service.d/vm.conf"
systemctl --root="$root" enable field-agent-vm-gpio.service field-agent-sandbox.service \
  field-agent-vm-checks.service field-agent-vm-netwait.service systemd-networkd.service \
  systemd-networkd-wait-online.service
systemctl --root="$root" mask serial-getty@ttyS0.service getty@tty1.service \
  apt-daily.timer apt-daily-upgrade.timer
echo "vm overlay installed"
