//! `vdisk hosts`: the hosts of a shared pool, their backends' leases and their attachments.

use std::collections::BTreeMap;

use clap::Args;
use host_tools::database::{OpenMode, UNNAMED_HOST};
use host_tools::error::{Error, Result};
use serde::Serialize;

use super::output::{emit, emit_json, table};
use super::Context;

/// List the hosts of a pool on etcd: each one's backend start, whether its lease is alive,
/// and how many attachments it records.
///
/// A backend started with --pool registers its host under a lease it keeps alive. A host
/// whose lease expired is fenced: its backend fails every I/O, and other hosts may attach
/// what its attachments mapped, which are then `fenced`. A host that records attachments
/// but never registered a backend shows start `-` and lease `none`. A pool of one host (an
/// SQLite file) has no hosts to list.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk --pool etcd://10.0.0.1:2379,10.0.0.2:2379 hosts --json")]
pub struct Hosts {}

/// One host, as `--json` prints it.
#[derive(Serialize)]
struct HostJson {
    host: String,
    /// The start id of its backend, as the backend's log prints it.
    start: Option<String>,
    /// `alive`, `expired`, or `none` for a host no backend registered.
    lease: &'static str,
    attachments: usize,
}

impl Hosts {
    pub fn run(self, context: &Context) -> Result<()> {
        let database = context.database(OpenMode::ReadOnly)?;
        let Some(registered) = database.hosts()? else {
            return Err(Error::Refused(format!(
                "pool {}: a pool of one host has no hosts to list (vdisk hosts is for a pool on etcd)",
                database.url()
            )));
        };
        let mut attachments: BTreeMap<String, usize> = BTreeMap::new();
        for record in database.attachments()? {
            if record.host != UNNAMED_HOST {
                *attachments.entry(record.host).or_default() += 1;
            }
        }
        let mut hosts: Vec<HostJson> = registered
            .iter()
            .map(|host| HostJson {
                host: host.host.clone(),
                start: Some(format!("{:#018x}", host.start)),
                lease: if host.alive { "alive" } else { "expired" },
                attachments: attachments.remove(&host.host).unwrap_or(0),
            })
            .collect();
        hosts.extend(attachments.into_iter().map(|(host, count)| HostJson {
            host,
            start: None,
            lease: "none",
            attachments: count,
        }));
        hosts.sort_by(|one, other| one.host.cmp(&other.host));
        if context.json {
            return emit_json(&hosts);
        }
        let rows = hosts
            .iter()
            .map(|host| {
                vec![
                    host.host.clone(),
                    host.start.clone().unwrap_or_else(|| "-".into()),
                    host.lease.into(),
                    host.attachments.to_string(),
                ]
            })
            .collect();
        emit(&table(
            &["HOST", "START", "LEASE", "ATTACHMENTS"],
            &[3],
            rows,
        ))
    }
}
