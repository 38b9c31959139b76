//! The guest half of the result protocol: `/init` scripts (busybox `sh`) that mount what a
//! guest needs, run a caller's body and report on the console.
//!
//! The body reports with `result KEY VALUE` (printed as `VBD-GUEST RESULT KEY=VALUE`) and
//! gives up with `fail MESSAGE` (`VBD-GUEST FAIL MESSAGE`). It runs under `set -e`, so any
//! failing command fails the run. When the body ends, the script prints
//! `VBD-GUEST DONE results=N`, syncs and powers off with `poweroff -f`; whatever way it
//! stops, it powers off, never leaving init to exit (a kernel panic). The host half is
//! [`super::report`]. Helpers for the body: `wait_for_block DEVICE` (up to 10 s), and
//! `wait_for_host WORD`, which prints `VBD-GUEST WAIT WORD` and blocks (up to 5 minutes)
//! until the host sends that word on the control port, `/dev/ttyS1` (see
//! [`super::GuestConfig::control`] and [`super::Guest::release`]).

use super::artefacts::VIRTIO_MODULES;

/// The first word of every protocol line.
pub const PREFIX: &str = "VBD-GUEST";

/// Where [`super::RootFilesystem`] puts its manifest: `sha256sum` lines, paths relative to `/`,
/// so `cd / && sha256sum -c etc/manifest.sha256` checks it.
pub const MANIFEST: &str = "etc/manifest.sha256";

/// Mounts, the protocol's functions, and (in an initramfs) the virtio modules.
fn prelude(load_modules: bool) -> String {
    let mut script = format!(
        r#"#!/bin/busybox sh
# /init of a vbd-machine guest (tests/machine/src/guest/script.rs): it reports on the console
# in {PREFIX} lines and always ends with poweroff -f.
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
[ -e /proc/self ] || /bin/busybox mount -t proc proc /proc
# Applet links; on a root filesystem booted before, they exist already.
/bin/busybox --install -s 2>/dev/null || true
grep -q ' /sys sysfs ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q ' /dev devtmpfs ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
vbd_results=0
vbd_done=0
result() {{ vbd_results=$((vbd_results + 1)); echo "{PREFIX} RESULT $1=$2"; }}
vbd_poweroff() {{ sync; poweroff -f; while :; do sleep 1; done; }}
fail() {{ trap - EXIT; echo "{PREFIX} FAIL $*"; vbd_poweroff; }}
vbd_exit() {{
    vbd_status=$?
    trap - EXIT
    if [ "$vbd_done" = 1 ]; then
        echo "{PREFIX} DONE results=$vbd_results"
    else
        echo "{PREFIX} FAIL the script stopped at a failing command (status $vbd_status)"
    fi
    vbd_poweroff
}}
trap vbd_exit EXIT
wait_for_block() {{
    vbd_tries=0
    while [ ! -b "$1" ]; do
        vbd_tries=$((vbd_tries + 1))
        [ "$vbd_tries" -le 100 ] || fail "no block device $1 after 10 s"
        sleep 0.1
    done
}}
wait_for_host() {{
    if [ -z "$vbd_control" ]; then
        [ -c /dev/ttyS1 ] || fail "no control port /dev/ttyS1 for wait_for_host"
        stty -F /dev/ttyS1 -echo
        # Opened once and kept open: the UART drops what arrives while no one has it open.
        exec 3< /dev/ttyS1
        vbd_control=open
    fi
    echo "{PREFIX} WAIT $1"
    while read -r -t 300 vbd_word <&3; do
        [ "$vbd_word" != "$1" ] || return 0
    done
    fail "the host did not send $1 within 5 minutes"
}}
set -e
"#
    );
    if load_modules {
        script.push_str(&format!(
            "for module in {}; do\n    insmod /lib/modules/$module.ko || fail \"insmod $module\"\ndone\n",
            VIRTIO_MODULES.join(" ")
        ));
    }
    script
}

/// `/init` of an initramfs guest: the virtio modules are loaded before `body` runs.
pub fn initramfs_init(body: &str) -> String {
    format!("{}{body}\nvbd_done=1\n", prelude(true))
}

/// `/init` of a root filesystem that [`root_loader_init`] hands over to: `/proc`, `/sys` and
/// `/dev` arrive mounted, the modules loaded.
pub fn root_init(body: &str) -> String {
    format!("{}{body}\nvbd_done=1\n", prelude(false))
}

/// `/init` of [`super::Initramfs::root_loader`]: load the modules, mount `root=` (ext4,
/// read-write) and `switch_root` to `init=` (default `/init`), moving the mounts along.
pub fn root_loader_init() -> String {
    format!(
        r#"{}root=
init=/init
for word in $(cat /proc/cmdline); do
    case "$word" in
        root=*) root=${{word#root=}} ;;
        init=*) init=${{word#init=}} ;;
    esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"
wait_for_block "$root"
mkdir -p /newroot
mount -t ext4 "$root" /newroot || fail "cannot mount $root as ext4"
[ -x "/newroot$init" ] || fail "$root has no executable $init"
for mount in proc sys dev; do
    mkdir -p /newroot/$mount
    mount --move /$mount /newroot/$mount
done
exec switch_root /newroot "$init"
"#,
        prelude(true)
    )
}
