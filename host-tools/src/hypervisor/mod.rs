//! The client side of the hypervisor's block channel: framing over a port, and the typed
//! hypercalls and block requests `vdisk` issues through it.
//!
//! A port is a byte stream (a QEMU serial port exposed as a unix socket). Which domain the
//! caller is comes from the port, never from anything the client says.

mod channel;
mod client;

pub use channel::{Channel, Endpoint};
pub use client::{Hypervisor, Limits, VbdDetails, VbdSummary};

/// A failure talking to the hypervisor.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("hypervisor endpoint `{0}`: expected unix:PATH")]
    BadEndpoint(String),
    #[error("hypervisor at {endpoint}: {source}")]
    Io {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("hypervisor at {endpoint}: no reply within {} s", waited.as_secs_f64())]
    NoReply {
        endpoint: String,
        waited: std::time::Duration,
    },
    #[error("hypervisor at {endpoint}: {message}")]
    Protocol { endpoint: String, message: String },
    #[error("hypervisor refused {operation}: {error}")]
    Refused {
        operation: String,
        error: shared_abi::Error,
        /// The caller's memory image as the refusal left it, for a hypercall: `E2BIG`
        /// writes the count needed into it.
        image: Option<Vec<u8>>,
    },
}

impl From<HypervisorError> for crate::Error {
    fn from(error: HypervisorError) -> crate::Error {
        match error {
            HypervisorError::BadEndpoint(_) => crate::Error::Usage(error.to_string()),
            HypervisorError::Refused {
                error: shared_abi::Error::NotFound,
                ..
            } => crate::Error::NotFound(error.to_string()),
            _ => crate::Error::Refused(error.to_string()),
        }
    }
}
