//! Passes the linker script to the binary and refuses a build whose code would be
//! position-independent, which the fixed-address PVH image cannot run.

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_directory =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = manifest_directory.join("linker.ld");
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");

    // Rustflags come from `.cargo/config.toml` only when cargo runs in this directory, and
    // a RUSTFLAGS variable replaces them: say so here rather than boot a broken image.
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !rustflags
        .split('\x1f')
        .any(|flag| flag.ends_with("relocation-model=static"))
    {
        panic!(
            "the test hypervisor needs `-C relocation-model=static`: run cargo from \
             tests/hypervisor (its .cargo/config.toml sets it) or add it to RUSTFLAGS"
        );
    }
}
