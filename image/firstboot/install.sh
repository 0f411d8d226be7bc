#!/bin/sh
# Install the first-boot units into a provisioned rootfs (called by image/build).
#   image/firstboot/install.sh ROOTFS DIR
# DIR: where the owner's files are read from at boot (/boot/firmware on the Pi).
set -eu
root=$1
dir=$2
here=$(dirname "$(readlink -f "$0")")
units=$root/etc/systemd/system
install -D -m 0755 "$here/field-agent-firstboot" "$root/usr/local/sbin/field-agent-firstboot"
install -m 0755 "$here/field-agent-growroot" "$root/usr/local/sbin/field-agent-growroot"
printf '# read by field-agent-firstboot.service\nFIELD_AGENT_FIRSTBOOT_DIR=%s\n' "$dir" \
  >"$root/etc/default/field-agent-firstboot"
mkdir -p "$root$dir"
install -m 0644 "$here/field-agent-firstboot.service" "$here/field-agent-growroot.service" "$units/"
systemctl --root="$root" enable field-agent-firstboot.service field-agent-growroot.service
if [ -f "$root/lib/systemd/system/ssh.service" ]; then
  install -m 0644 "$here/field-agent-ssh-hostkeys.service" "$units/"
  systemctl --root="$root" enable field-agent-ssh-hostkeys.service
fi
echo "firstboot: units installed; owner files read from $dir"
