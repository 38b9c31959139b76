//! The backend's host in a shared pool: registered under an etcd lease when the backend
//! starts, renewed by a thread of its own every third of the lease, each acknowledged
//! renewal moving the fence's deadline ([`crate::fence`]). A renewal that finds the lease
//! gone fences the backend for good.
//!
//! A backend that takes over another's VBDs continues its registration: the VBDs were
//! granted under it, so they are served only if it never lapsed (see
//! [`pool_cluster::hosts`]).

use std::time::Duration;

use pool_cluster::hosts::Registration;

use crate::fence::{self, FENCE};

/// What `--pool`, `--host` and `--lease-ttl` asked for.
pub struct LeaseSettings {
    pub endpoints: Vec<String>,
    pub url: String,
    pub host: String,
    pub ttl: Duration,
}

/// I/O stops this long before the lease may expire: room for an I/O that passed the check
/// to finish, and for the clocks of this host and etcd's leader to disagree.
const MARGIN: Duration = Duration::from_secs(1);

/// Register the host (continuing the registration made at revision `continues`, if given)
/// and start renewing its lease; returns the revision the registration was made at. I/O is
/// fenced from now until the lease is granted.
pub fn start(
    settings: &LeaseSettings,
    start_id: u64,
    continues: Option<i64>,
) -> Result<i64, String> {
    FENCE.arm();
    let ttl_seconds = i64::try_from(settings.ttl.as_secs()).unwrap_or(i64::MAX);
    let sent = fence::now();
    let mut registration = Registration::register(
        &settings.endpoints,
        &settings.host,
        start_id,
        ttl_seconds,
        continues,
    )
    .map_err(|error| format!("cannot register host {}: {error}", settings.host))?;
    let revision = registration.revision();
    FENCE.renewed(sent, settings.ttl, MARGIN);
    eprintln!(
        "vbd-backend: host {} registered with {} at revision {revision} (lease of {} s)",
        settings.host,
        settings.url,
        settings.ttl.as_secs()
    );
    let host = settings.host.clone();
    let period = settings.ttl / 3;
    std::thread::Builder::new()
        .name("lease".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                std::thread::sleep(period);
                let sent = fence::now();
                match registration.keep_alive() {
                    Ok(ttl) if ttl > 0 => {
                        FENCE.renewed(sent, Duration::from_secs(ttl as u64), MARGIN);
                        if failing {
                            eprintln!("vbd-backend: lease of host {host} renewed again");
                            failing = false;
                        }
                    }
                    Ok(_) => {
                        FENCE.expired();
                        eprintln!(
                            "vbd-backend: the lease of host {host} expired: fenced, every I/O fails until the backend is restarted"
                        );
                        return;
                    }
                    Err(error) => {
                        if !failing {
                            eprintln!(
                                "vbd-backend: cannot renew the lease of host {host}: {error}; I/O stops when it may expire"
                            );
                        }
                        failing = true;
                    }
                }
            }
        })
        .map_err(|error| format!("cannot start the lease thread: {error}"))?;
    Ok(revision)
}
