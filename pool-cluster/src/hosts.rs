//! The hosts of a pool on etcd. A backend registers its host when it starts: under
//! `/vdisk/hosts/NAME` its start id, for good, and under `/vdisk/alive/NAME` the same
//! attached to a lease the backend keeps alive. A host whose alive key is gone (its lease
//! expired: the backend died, was paused or was cut off for longer than the lease) is
//! fenced: its backend fails every I/O from before that moment on, so other hosts may map
//! what its attachments mapped.
//!
//! A registration is known by the etcd revision it was made at, the alive key's
//! modification revision while it lasts (renewals do not move it). A backend that takes
//! over another's VBDs continues its registration only if that revision is still the alive
//! key's: a registration that lapsed in between, however briefly, is refused, since other
//! hosts may have been granted those VBDs' disks meanwhile.

use etcd_client::{
    Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use crate::connection::{Cluster, Failure, Outcome};
use crate::{Error, HostState, Result};

const REGISTERED: &str = "/vdisk/hosts/";
const ALIVE: &str = "/vdisk/alive/";

/// What a registration key holds.
#[derive(Serialize, Deserialize)]
struct Registered {
    start: u64,
}

fn registered(cluster: &Cluster, prefix: &str) -> Result<Vec<(String, u64)>> {
    let response = cluster.get(prefix, Some(GetOptions::new().with_prefix()))?;
    response
        .kvs()
        .iter()
        .map(|entry| {
            let bad = |reason: String| cluster.unavailable(format!("{prefix}: {reason}"));
            let key = entry.key_str().map_err(|error| bad(error.to_string()))?;
            let value: Registered = serde_json::from_slice(entry.value())
                .map_err(|error| bad(format!("{key}: {error}")))?;
            Ok((key[prefix.len()..].to_string(), value.start))
        })
        .collect()
}

/// Every host that ever registered, in name order, with whether its lease is alive.
pub fn hosts(cluster: &Cluster) -> Result<Vec<HostState>> {
    let alive = registered(cluster, ALIVE)?;
    Ok(registered(cluster, REGISTERED)?
        .into_iter()
        .map(|(host, start)| HostState {
            alive: alive.contains(&(host.clone(), start)),
            host,
            start,
        })
        .collect())
}

/// A host's registration, kept alive by [`Registration::keep_alive`].
pub struct Registration {
    cluster: Cluster,
    lease: i64,
    revision: i64,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Registration {
    /// Register `host` as started with `start_id`, under a lease of `ttl_seconds`; with
    /// `continues`, only if the registration made at that revision is still the host's (a
    /// takeover), refused otherwise.
    pub fn register(
        endpoints: &[String],
        host: &str,
        start_id: u64,
        ttl_seconds: i64,
        continues: Option<i64>,
    ) -> Result<Registration> {
        let cluster = Cluster::connect(endpoints)?;
        let mut client = cluster.client();
        let lease = cluster
            .request(client.lease_grant(ttl_seconds, None))
            .map_err(|failure| cluster.unavailable(failure.to_string()))?
            .id();
        let value = serde_json::to_string(&Registered { start: start_id })
            .map_err(|error| cluster.unavailable(error.to_string()))?;
        let alive = format!("{ALIVE}{host}");
        let unchanged: Vec<Compare> = continues
            .map(|revision| Compare::mod_revision(alive.as_str(), CompareOp::Equal, revision))
            .into_iter()
            .collect();
        let register = Txn::new().when(unchanged).and_then([
            TxnOp::put(format!("{REGISTERED}{host}"), value.as_str(), None),
            TxnOp::put(
                alive.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        ]);
        let revision = loop {
            let answered = match cluster.commit(register.clone())? {
                Outcome::Answered(response) if response.succeeded() => {
                    break response.header().map_or(0, |header| header.revision())
                }
                Outcome::Answered(_) => true,
                Outcome::Unknown(_) => false,
            };
            // A put whose answer was lost shows as the alive key under this lease; when the
            // key is not under it, the put was not made and is tried again (a failed
            // comparison is the only answer that is not a success).
            let now = cluster.get(&alive, None)?;
            if let Some(entry) = now.kvs().first().filter(|entry| entry.lease() == lease) {
                break entry.mod_revision();
            }
            if answered {
                return Err(Error::Refused(format!(
                    "host {host}: the registration made at revision {} has lapsed (its lease expired, or another backend registered the host since)",
                    continues.unwrap_or_default()
                )));
            }
        };
        Ok(Registration {
            cluster,
            lease,
            revision,
            keeper: None,
        })
    }

    /// The etcd revision the registration was made at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Renew the lease; returns its time to live in seconds from now, 0 once it has expired
    /// (the host is fenced for good: only a new registration serves again).
    pub fn keep_alive(&mut self) -> Result<i64> {
        if self.keeper.is_none() {
            let mut client = self.cluster.client();
            let keeper = match self.cluster.request(client.lease_keep_alive(self.lease)) {
                Ok(keeper) => keeper,
                // The client's word for a first answer of no time to live: etcd has no
                // such lease any more, it expired.
                Err(Failure::Client(etcd_client::Error::LeaseKeepAliveError(message)))
                    if message == "lease not found" =>
                {
                    return Ok(0)
                }
                Err(failure) => return Err(self.cluster.unavailable(failure.to_string())),
            };
            self.keeper = Some(keeper);
        }
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return Ok(0);
        };
        let answer = self.cluster.request(async {
            keeper.keep_alive().await?;
            stream.message().await
        });
        match answer {
            Ok(Some(response)) => Ok(response.ttl()),
            Ok(None) => {
                self.keeper = None;
                Err(self.cluster.unavailable("the lease stream ended".into()))
            }
            Err(failure) => {
                self.keeper = None;
                Err(self.cluster.unavailable(failure.to_string()))
            }
        }
    }
}
