#!/bin/sh
# Builds the Vagrant box (vagrant-libvirt, qcow2) that Pangaea's Vagrant nodes boot, from
# Debian packages only: no box download. Run as root by pangaea-ctl (provider/vagrant/boxes.rs)
# as: sh build-box.sh WORKDIR OUT.box SUITE MIRROR PACKAGES VAGRANT_PUBKEY
# Everything is made in WORKDIR, which the caller removes; the loop device and the mount are
# released however this script ends.
set -eu
work=$1 out=$2 suite=$3 mirror=$4 packages=$5 pubkey=$6
root=$work/rootfs mnt=$work/mnt raw=$work/disk.raw loop=
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  [ -n "$loop" ] && losetup -d "$loop"
  return 0
}
trap cleanup EXIT INT TERM
step() { echo "==> $*"; }

step "debootstrap $suite (about two minutes)"
debootstrap --include="$packages" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }

step "vagrant user, ssh key, boot configuration"
chroot "$root" sh -c 'useradd -m -s /bin/bash -U vagrant && echo vagrant:vagrant | chpasswd'
# Timers that would compete with the node's work on a small VM.
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer \
  e2scrub_all.timer e2scrub_reap.service fstrim.timer >/dev/null 2>&1 || true
install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$pubkey" "$root/home/vagrant/.ssh/authorized_keys"
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"
echo 'LABEL=root / ext4 errors=remount-ro 0 1' >"$root/etc/fstab"
# The node's address comes from cloud-init's network-config (the seed ISO), not DHCP.
printf 'source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n' >"$root/etc/network/interfaces"
echo LANG=C.UTF-8 >"$root/etc/default/locale"
echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/vagrant.conf"
# No host keys in the box: cloud-init makes each node's own at first boot.
rm -f "$root"/etc/ssh/ssh_host_*
# Each node gets its own machine ID at first boot (and D-Bus uses systemd's).
: >"$root/etc/machine-id"
ln -sf /etc/machine-id "$root/var/lib/dbus/machine-id"
mkdir -p "$root/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStopSec=10s\n' >"$root/etc/systemd/system.conf.d/10-pangaea-stop-timeout.conf"
cp "$work/cloud.cfg" "$root/etc/cloud/cloud.cfg.d/99-pangaea.cfg"
kernel=$(cd "$root/boot" && ls vmlinuz-* | head -1)
mkdir -p "$root/boot/extlinux"
# no_timer_check: without it, one of three VMs booting at once under software emulation
# panicked ("IO-APIC + timer doesn't work!").
printf 'DEFAULT linux\nTIMEOUT 1\nPROMPT 0\nLABEL linux\n  KERNEL /boot/%s\n  INITRD /boot/%s\n  APPEND root=LABEL=root ro console=tty0 console=ttyS0,115200 net.ifnames=0 biosdevname=0 no_timer_check panic=10\n' \
  "$kernel" "$(echo "$kernel" | sed 's/vmlinuz/initrd.img/')" >"$root/boot/extlinux/extlinux.conf"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*

step "disk: 4 GiB, one partition, ext4, extlinux"
truncate -s 4G "$raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
# The partition through a loop device at its offset (this kernel scans no partitions).
loop=$(losetup -f --show -o 1048576 --sizelimit $(( (4 * 1024 * 1024 * 2 - 2048) * 512 )) "$raw")
mkfs.ext4 -q -L root -O ^64bit,^metadata_csum,^orphan_file "$loop"
mkdir -p "$mnt"
mount "$loop" "$mnt"
(cd "$root" && tar -cpf - --numeric-owner --xattrs --xattrs-include='*' --acls .) |
  (cd "$mnt" && tar -xpf - --numeric-owner --xattrs --xattrs-include='*' --acls)
extlinux --install "$mnt/boot/extlinux" 2>/dev/null
umount "$mnt"
losetup -d "$loop"
loop=
dd if=/usr/lib/EXTLINUX/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none

step "box: qcow2 image, metadata"
mkdir -p "$work/box"
qemu-img convert -O qcow2 "$raw" "$work/box/box.img"
rm -f "$raw"
echo '{"provider":"libvirt","format":"qcow2","virtual_size":4}' >"$work/box/metadata.json"
printf 'Vagrant.configure("2") do |c|\n  c.vm.provider :libvirt do |lv|\n  end\nend\n' >"$work/box/Vagrantfile"
(cd "$work/box" && tar -czf "$out" metadata.json Vagrantfile box.img)
