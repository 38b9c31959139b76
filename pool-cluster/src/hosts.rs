//! The hosts of a pool on etcd. A backend registers its host when it starts: under
//! `/vdisk/hosts/NAME` its start id, for good, and under `/vdisk/alive/NAME` the same
//! attached to a lease the backend keeps alive. A host whose alive key is gone (its lease
//! expired: the backend died, was paused or was cut off for longer than the lease) is
//! fenced: its backend fails every I/O from before that moment on, so other hosts may map
//! what its attachments mapped.

use etcd_client::{GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::connection::{Cluster, Outcome};
use crate::{HostState, Result};

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
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Registration {
    /// Register `host` as started with `start_id`, under a lease of `ttl_seconds`.
    pub fn register(
        endpoints: &[String],
        host: &str,
        start_id: u64,
        ttl_seconds: i64,
    ) -> Result<Registration> {
        let cluster = Cluster::connect(endpoints)?;
        let mut client = cluster.client();
        let lease = cluster
            .request(client.lease_grant(ttl_seconds, None))
            .map_err(|failure| cluster.unavailable(failure.to_string()))?
            .id();
        let value = serde_json::to_string(&Registered { start: start_id })
            .map_err(|error| cluster.unavailable(error.to_string()))?;
        let register = Txn::new().and_then([
            TxnOp::put(format!("{REGISTERED}{host}"), value.as_str(), None),
            TxnOp::put(
                format!("{ALIVE}{host}"),
                value.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        ]);
        // Putting the same values twice is harmless: an answer lost is simply asked again.
        while let Outcome::Unknown(_) = cluster.commit(register.clone())? {}
        Ok(Registration {
            cluster,
            lease,
            keeper: None,
        })
    }

    /// Renew the lease; returns its time to live in seconds from now, 0 once it has expired
    /// (the host is fenced for good: only a new registration serves again).
    pub fn keep_alive(&mut self) -> Result<i64> {
        if self.keeper.is_none() {
            let mut client = self.cluster.client();
            let keeper = self
                .cluster
                .request(client.lease_keep_alive(self.lease))
                .map_err(|failure| self.cluster.unavailable(failure.to_string()))?;
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
