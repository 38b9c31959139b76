//! Real etcd clusters for the tests: `etcd` processes on loopback ports, their data in a
//! temporary directory, every member killed when the cluster is dropped, also when a test
//! fails. A member can be killed and started again, to take the quorum away and back.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";

/// A running cluster; dropping it kills every member.
pub struct Cluster {
    directory: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

/// A loopback port no one listens on now (the kernel's choice, released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Start `size` members and wait until each answers.
    pub fn start(size: usize) -> Cluster {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: install the etcd-server package (apt-get install etcd-server etcd-client)"
        );
        let members: Vec<Member> = (0..size)
            .map(|index| Member {
                name: format!("e{index}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            directory: tempfile::tempdir().unwrap(),
            members,
            initial_cluster,
        };
        for index in 0..size {
            cluster.start_member(index);
        }
        for index in 0..size {
            cluster.wait_for(index);
        }
        cluster
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

    fn data_directory(&self, index: usize) -> PathBuf {
        self.directory.path().join(&self.members[index].name)
    }

    /// Start member `index` (again: its data directory is kept, so it rejoins).
    pub fn start_member(&mut self, index: usize) {
        let data = self.data_directory(index);
        let log =
            std::fs::File::create(self.directory.path().join(format!("e{index}.log"))).unwrap();
        let member = &self.members[index];
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
            .unwrap();
        self.members[index].process = Some(child);
    }

    /// Wait until member `index` takes connections.
    pub fn wait_for(&mut self, index: usize) {
        let port = self.members[index].client_port;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = || {
                std::fs::read_to_string(self.directory.path().join(format!("e{index}.log")))
                    .unwrap_or_default()
            };
            if let Some(status) = self.members[index]
                .process
                .as_mut()
                .and_then(|process| process.try_wait().unwrap())
            {
                panic!("etcd member {index} exited ({status}): {}", log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {index} did not listen on port {port} within 20 s: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
