#!/bin/sh
# The Raspberry Pi setup of an unpacked arm64 base rootfs (called by image/build).
#   image/raspi/customize.sh ROOTFS
# Does what Debian's own raspi images do, on a filesystem-image build (no loop mounts):
# boot from the partitions labelled RASPIFIRM (FAT, /boot/firmware) and RASPIROOT
# (ext4, /); serial console on the Pi 3/4's ttyS1; DHCP on Ethernet and Wi-Fi with
# systemd-networkd; no ssh host keys or machine-id baked into the image (made at first
# boot, so every card is its own device: image/firstboot/field-agent-ssh-hostkeys.service).
set -eu
root=$1
here=$(dirname "$(readlink -f "$0")")

# raspi-firmware writes cmdline.txt/config.txt and copies kernel, initrd and device
# trees to /boot/firmware from its kernel hook: point it at the labels, then run it.
# CMA=0: no cma= on the command line (the kernel's default; a forced 64M can keep a Pi 4
# from booting, and the hook cannot tell which Pi it is building for).
sed -i 's/^#\?ROOTPART=.*/ROOTPART=LABEL=RASPIROOT/; s/^#\?CONSOLES=.*/CONSOLES="ttyS1,115200 tty0"/;
        s/^#\?CMA=.*/CMA=0/' "$root/etc/default/raspi-firmware"
for setting in ROOTPART=LABEL=RASPIROOT CMA=0 'CONSOLES="ttyS1'; do
  grep -q "^$setting" "$root/etc/default/raspi-firmware" ||
    { echo "raspi: $setting not set in /etc/default/raspi-firmware" >&2; exit 1; }
done
kver=$(ls "$root/lib/modules" | sort -V | tail -1)
# the hook acts only when run as a package's "configure"
"$here/../chroot-run" "$root" env DEB_MAINT_PARAMS=configure \
  /etc/kernel/postinst.d/z50-raspi-firmware "$kver" /boot/vmlinuz-"$kver"
grep -q 'root=LABEL=RASPIROOT' "$root/boot/firmware/cmdline.txt" ||
  { echo "raspi: cmdline.txt: $(cat "$root/boot/firmware/cmdline.txt")" >&2; exit 1; }

install -m 0644 "$here/fstab" "$root/etc/fstab"
install -m 0644 "$here/10-field-agent-wired.network" "$here/20-field-agent-wireless.network" \
  "$root/etc/systemd/network/"
install -m 0600 "$here/wpa_supplicant-wlan0.conf" "$root/etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
systemctl --root="$root" enable systemd-networkd.service systemd-resolved.service \
  systemd-timesyncd.service wpa_supplicant@wlan0.service
rm -f "$root"/etc/ssh/ssh_host_*
printf 'uninitialized\n' > "$root/etc/machine-id"
echo "raspi: boot files for $kver in /boot/firmware: $(ls "$root/boot/firmware" | wc -l) files"
