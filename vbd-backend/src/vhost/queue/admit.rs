//! Admission: a popped chain is parsed into a request and checked that it may run at all,
//! or completed at once with the status that says why not.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::QueueTarget;
use crate::vhost::device::QUEUE_SIZE;
use crate::vhost::request::{Request, RequestError};

/// A popped chain, once parsed and checked.
pub(super) enum Admitted {
    /// Complete at once with this used length.
    Done(u32),
    /// A request that may run.
    Run(Request),
}

/// Parse a chain and check the request may run.
pub(super) fn admit<M: GuestMemoryBackend>(
    queue: &QueueTarget<'_>,
    chain: impl IntoIterator<Item = Descriptor>,
    memory: &M,
) -> Admitted {
    let request = match Request::parse(chain, memory, usize::from(QUEUE_SIZE)) {
        Ok(request) => request,
        Err(rejected) => {
            return match rejected.status {
                Some(status) => refuse(memory, status, rejected.error),
                // Nowhere to say what went wrong: complete it empty.
                None => Admitted::Done(0),
            };
        }
    };
    if let Err(error) = check(queue) {
        return refuse(memory, request.status, error);
    }
    Admitted::Run(request)
}

/// Write `error`'s status; the chain is complete with only that byte.
pub(super) fn refuse<M: GuestMemoryBackend>(
    memory: &M,
    status: GuestAddress,
    error: RequestError,
) -> Admitted {
    let _ = memory.write_obj(error.status(), status);
    Admitted::Done(1)
}

/// Whether a request may run at all: not once stopping, not on a resumed ring.
pub(super) fn check(queue: &QueueTarget<'_>) -> Result<(), RequestError> {
    if queue.target.shared.stopping() {
        return Err(RequestError::Stopping);
    }
    if queue.resumed.any() {
        return Err(RequestError::Resumed);
    }
    Ok(())
}
