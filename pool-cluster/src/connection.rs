//! One connection to an etcd cluster: a small current-thread tokio runtime of its own (the
//! rest of the host tools stay synchronous), linearizable reads tried again through an
//! election, and transactions tried again only when they certainly did not reach it.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, Txn};

use crate::{Error, Result};

/// One request waits this long for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests that find no quorum are tried again until this long has passed, which rides
/// out a leader election (one to two seconds with etcd's defaults) and still fails a
/// command well within 15 s.
const UNAVAILABLE_AFTER: Duration = Duration::from_secs(5);

/// A connection to a cluster, by its members' client endpoints.
pub struct Cluster {
    endpoints: Vec<String>,
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Cluster {
    /// Connect to the members at `endpoints` (`host:port`).
    pub fn connect(endpoints: &[String]) -> Result<Cluster> {
        let url = format!("etcd://{}", endpoints.join(","));
        let unavailable = |reason: String| Error::Unavailable {
            pool: url.clone(),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| unavailable(format!("cannot start its client: {error}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let urls: Vec<String> = endpoints
            .iter()
            .map(|endpoint| format!("http://{endpoint}"))
            .collect();
        let client = runtime
            .block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&urls, Some(options))).await
            })
            .map_err(|_| {
                unavailable(format!(
                    "no member answered within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|error| unavailable(describe(&error)))?;
        Ok(Cluster {
            endpoints: endpoints.to_vec(),
            runtime,
            client,
        })
    }

    /// `etcd://HOST:PORT,...`, naming the pool in messages.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    /// The error for a cluster that cannot serve: exit status 3.
    pub fn unavailable(&self, reason: String) -> Error {
        Error::Unavailable {
            pool: self.url(),
            reason,
        }
    }

    /// A client to make requests with, through [`Cluster::request`].
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// One request, given at most [`REQUEST_TIMEOUT`].
    pub fn request<T>(
        &self,
        request: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> std::result::Result<T, Failure> {
        self.runtime
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, request).await })
            .map_err(|_| Failure::NoAnswer)?
            .map_err(Failure::Client)
    }

    /// A linearizable read, tried again while members are down or the cluster has no
    /// quorum (an election) until [`UNAVAILABLE_AFTER`].
    pub fn get(&self, key: &str, options: Option<GetOptions>) -> Result<etcd_client::GetResponse> {
        let deadline = Instant::now() + UNAVAILABLE_AFTER;
        loop {
            let mut client = self.client.clone();
            match self.request(client.get(key, options.clone())) {
                Ok(response) => return Ok(response),
                Err(failure) if Instant::now() >= deadline => {
                    return Err(self.unavailable(format!(
                        "no quorum: no member gave a linearizable read for {} s (last: {failure})",
                        UNAVAILABLE_AFTER.as_secs()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The transaction `txn`, tried again only while it certainly did not reach the
    /// cluster (a member down, no leader), until [`UNAVAILABLE_AFTER`]: one that may have
    /// been applied is never sent twice, but said to be [`Outcome::Unknown`].
    pub fn commit(&self, txn: Txn) -> Result<Outcome> {
        let deadline = Instant::now() + UNAVAILABLE_AFTER;
        loop {
            let mut client = self.client.clone();
            match self.request(client.txn(txn.clone())) {
                Ok(response) => return Ok(Outcome::Answered(response)),
                Err(failure) if failure.not_delivered() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(failure) if failure.not_delivered() => {
                    return Err(self.unavailable(format!(
                        "no quorum: no member took the change for {} s (last: {failure}); nothing was changed",
                        UNAVAILABLE_AFTER.as_secs()
                    )))
                }
                Err(failure) => return Ok(Outcome::Unknown(failure.to_string())),
            }
        }
    }
}

/// What became of a transaction.
pub enum Outcome {
    /// The cluster answered: it was applied, or its comparison failed.
    Answered(etcd_client::TxnResponse),
    /// The answer was lost (why, in a line): it may or may not have been applied.
    Unknown(String),
}

/// Why a request failed.
pub enum Failure {
    /// No answer within [`REQUEST_TIMEOUT`]: it may have been applied.
    NoAnswer,
    Client(etcd_client::Error),
}

impl Failure {
    /// The request certainly was not applied: no connection was made, or the member
    /// refused it for want of a leader before proposing it.
    fn not_delivered(&self) -> bool {
        match self {
            Failure::NoAnswer => false,
            Failure::Client(etcd_client::Error::TransportError(_)) => true,
            Failure::Client(etcd_client::Error::GRpcStatus(status)) => {
                let message = status.message();
                status.code() == tonic::Code::Unavailable
                    && (message.contains("connect") || message == "etcdserver: no leader")
            }
            Failure::Client(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoAnswer => write!(
                formatter,
                "no answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
            Failure::Client(error) => formatter.write_str(&describe(error)),
        }
    }
}

/// One line for an etcd client error: gRPC's own message where there is one.
pub fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        other => other.to_string(),
    }
    .replace('\n', " ")
}
