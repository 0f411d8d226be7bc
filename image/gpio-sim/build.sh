#!/bin/sh
# mmdebstrap customize hook (VM tier only): build gpio-sim out of tree for the rootfs's
# kernel and install it as /lib/modules/$KVER/extra/gpio-sim.ko.
#   image/gpio-sim/build.sh ROOTFS
# Uses linux-source-6.1 (three files) and linux-headers-$KVER inside the chroot, then
# removes them again. One change to irq_sim.c: irq_to_desc() is not exported to
# modules, so handle_simple_irq(irq_to_desc(n)) becomes generic_handle_irq(n).
set -eu
root=$1
here=$(dirname "$(readlink -f "$0")")
kver=$(ls "$root/lib/modules" | sort -V | tail -1)
[ -n "$kver" ] || { echo "gpio-sim: no kernel in $root/lib/modules" >&2; exit 1; }
build_pkgs="linux-headers-$kver linux-source-6.1 make xz-utils"
chroot "$root" apt-get install -y -q --no-install-recommends $build_pkgs >/dev/null
work=$root/tmp/gpio-sim
rm -rf "$work" && mkdir -p "$work"
tarball=$(ls "$root"/usr/src/linux-source-6.1.tar.xz)
src=linux-source-6.1
tar -C "$work" -xJf "$tarball" \
  "$src/drivers/gpio/gpio-sim.c" "$src/drivers/gpio/gpiolib.h" "$src/kernel/irq/irq_sim.c"
cp "$work/$src/drivers/gpio/gpio-sim.c" "$work/gpio_sim_main.c"
cp "$work/$src/drivers/gpio/gpiolib.h" "$work/gpiolib.h"
sed 's/handle_simple_irq(irq_to_desc(\([^)]*\)))/generic_handle_irq(\1)/' \
  "$work/$src/kernel/irq/irq_sim.c" > "$work/irq_sim.c"
grep -q 'generic_handle_irq(' "$work/irq_sim.c" || { echo "gpio-sim: irq_sim.c patch did not apply" >&2; exit 1; }
cp "$here/Kbuild" "$work/Kbuild"
chroot "$root" make -s -C "/usr/src/linux-headers-$kver" M=/tmp/gpio-sim modules
install -D -m 0644 "$work/gpio-sim.ko" "$root/lib/modules/$kver/extra/gpio-sim.ko"
chroot "$root" depmod "$kver"
rm -rf "$work"
chroot "$root" apt-get purge -y -q --autoremove $build_pkgs >/dev/null
echo "gpio-sim: built for $kver"
