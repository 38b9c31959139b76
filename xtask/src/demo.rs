//! `cargo xtask demo`: the HOWTO walkthrough (added with the `vdisk` hypervisor commands).

pub fn run() -> Result<(), String> {
    Err("the demo needs the vdisk hypervisor commands, which are not built yet".to_owned())
}
