//! Real etcd clusters for the tests and the benchmarks: `etcd` processes on loopback
//! ports, their data and logs in a directory of the caller's, every member killed when the
//! cluster is dropped, also when a test fails. A member can be killed and started again, to
//! take the quorum away and back.

use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";

/// How long a member may take to listen.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running cluster; dropping it kills every member.
pub struct Cluster {
    directory: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

/// `count` loopback ports no one listens on now, all different: each is held until all
/// are chosen, then released for a member to take.
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|error| format!("no free loopback port: {error}"))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<std::io::Result<_>>()
        .map_err(|error| format!("no free loopback port: {error}"))
}

/// Starts tried before giving up: between choosing a port and a member binding it, another
/// process (another test's cluster) may take it.
const ATTEMPTS: usize = 3;

impl Cluster {
    /// Start `size` members with their data and logs in `directory` (made if missing, and
    /// left there) and wait until each takes connections.
    pub fn start(directory: &Path, size: usize) -> Result<Cluster, String> {
        if !Path::new(ETCD).exists() {
            return Err(format!(
                "{ETCD} is missing: install the etcd-server package (apt-get install etcd-server etcd-client)"
            ));
        }
        let mut failure = String::new();
        for attempt in 0..ATTEMPTS {
            match Cluster::start_once(&directory.join(format!("attempt{attempt}")), size) {
                Ok(cluster) => return Ok(cluster),
                Err(error) => failure = error,
            }
        }
        Err(failure)
    }

    fn start_once(directory: &Path, size: usize) -> Result<Cluster, String> {
        let ports = free_ports(2 * size)?;
        let members: Vec<Member> = (0..size)
            .map(|index| Member {
                name: format!("e{index}"),
                client_port: ports[2 * index],
                peer_port: ports[2 * index + 1],
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        fs::create_dir_all(directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
        // Dropped on an error: the members started so far are killed.
        let mut cluster = Cluster {
            directory: directory.to_path_buf(),
            members,
            initial_cluster,
        };
        for index in 0..size {
            cluster.start_member(index)?;
        }
        for index in 0..size {
            cluster.wait_for(index)?;
        }
        Ok(cluster)
    }

    /// The pool URL of the whole cluster.
    pub fn url(&self) -> String {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .map(|member| format!("127.0.0.1:{}", member.client_port))
            .collect();
        format!("etcd://{}", endpoints.join(","))
    }

    fn log(&self, index: usize) -> PathBuf {
        self.directory.join(format!("e{index}.log"))
    }

    /// Start member `index` (again: its data directory is kept, so it rejoins).
    pub fn start_member(&mut self, index: usize) -> Result<(), String> {
        let member = &self.members[index];
        let data = self.directory.join(&member.name);
        let log = File::create(self.log(index))
            .map_err(|error| format!("{}: {error}", self.log(index).display()))?;
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new(ETCD)
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new", "--log-level", "error"])
            // Elections in a few hundred milliseconds: loopback is fast, tests are short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|error| format!("{ETCD}: {error}"))?;
        self.members[index].process = Some(child);
        Ok(())
    }

    /// Wait until member `index` takes connections; fail, with its log, if it exits or
    /// takes longer than 20 s.
    pub fn wait_for(&mut self, index: usize) -> Result<(), String> {
        let port = self.members[index].client_port;
        let deadline = Instant::now() + START_LIMIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = fs::read_to_string(self.log(index)).unwrap_or_default();
            let exited = match self.members[index].process.as_mut() {
                Some(process) => process.try_wait().map_err(|error| error.to_string())?,
                None => return Err(format!("etcd member {index} is not running")),
            };
            if let Some(status) = exited {
                return Err(format!("etcd member {index} exited ({status}): {log}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd member {index} did not listen on port {port} within {} s: {log}",
                    START_LIMIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kill member `index` (SIGKILL) and reap it.
    pub fn kill_member(&mut self, index: usize) {
        if let Some(mut process) = self.members[index].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill_member(index);
        }
    }
}
