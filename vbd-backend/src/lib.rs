//! The parsers of what guests and clients send vbd-backend, as a library so that property
//! tests and the fuzz targets (`fuzz/` at the repository root) drive the very code the
//! backend runs: virtio-blk requests from descriptor chains, NBD options and NBD requests.
//! The backend itself is the binary (`main.rs`); these modules depend on nothing of it.
#![forbid(unsafe_code)]

/// The vhost-user-blk side's parser.
pub mod vhost {
    pub mod request;
}

/// The NBD side's parsers and the protocol's numbers.
pub mod nbd {
    pub mod options;
    pub mod request;
    pub mod wire;
}
