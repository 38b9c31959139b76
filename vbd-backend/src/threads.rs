//! A listening socket served by one thread per connection, with a bound on connections
//! served at once (a VBD's vhost-user socket serves one). A connection past the bound waits,
//! for a while, for a served one to end: a VMM that reconnects at once finds its old
//! connection still tearing down. And a way to stop: no new connections, then each
//! connection finishes the request it is serving, sees the end of its input, and is waited
//! for.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::sockets::Peers;

/// Connections that may wait for a slot at once, beyond those served; more are closed at
/// once, so a flood of connections cannot become a flood of threads.
const MAX_WAITING: usize = 8;

/// How long a stop lets connections send their last replies before it ends their output.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How a socket admits its connections.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Connections served at once.
    pub limit: usize,
    /// How long a connection past `limit` waits for a served one to end before it is
    /// closed.
    pub wait_for_slot: Duration,
    /// Which peers are served; others are closed at once, with a log line.
    pub peers: Peers,
    /// A connection that neither sends nor takes a byte for this long is closed, so idle
    /// clients free their slots by themselves; `None` for none.
    pub idle_timeout: Option<Duration>,
}

struct Live {
    /// Which connection of the socket this is, so its thread can take it out of the list.
    number: u64,
    /// A clone of the connection's stream, to end its input from outside.
    stream: UnixStream,
    handle: JoinHandle<()>,
}

struct State {
    accepting: bool,
    /// Every connection with a thread: served, or waiting for a slot.
    live: Vec<Live>,
    /// The number of the next connection.
    next: u64,
    /// Connections whose handler runs: at most `Policy::limit`.
    served: usize,
    acceptor: Option<JoinHandle<()>>,
}

/// The connections of one listening socket.
#[derive(Clone)]
pub struct Connections {
    name: Arc<str>,
    state: Arc<Mutex<State>>,
    /// Told when a slot frees or the socket stops accepting.
    changed: Arc<Condvar>,
    listener: Arc<UnixListener>,
}

/// A served connection's slot, given back when its handler ends, even by a panic.
struct Slot<'a> {
    connections: &'a Connections,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.connections.lock().served -= 1;
        self.connections.changed.notify_all();
    }
}

impl Connections {
    /// Serve `listener`: each accepted connection runs `handler` on a thread of its own,
    /// as `policy` admits it; a handler's error is logged with the socket's name.
    pub fn serve<F>(
        name: String,
        listener: UnixListener,
        policy: Policy,
        handler: F,
    ) -> io::Result<Connections>
    where
        F: Fn(UnixStream) -> io::Result<()> + Send + Sync + 'static,
    {
        let connections = Connections {
            name: name.into(),
            state: Arc::new(Mutex::new(State {
                accepting: true,
                live: Vec::new(),
                next: 0,
                served: 0,
                acceptor: None,
            })),
            changed: Arc::new(Condvar::new()),
            listener: Arc::new(listener),
        };
        let accepting = connections.clone();
        let handler = Arc::new(handler);
        let acceptor = thread::Builder::new()
            .name(format!("accept {}", connections.name))
            .spawn(move || accepting.accept_loop(policy, handler))?;
        connections.lock().acceptor = Some(acceptor);
        Ok(connections)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked holding the lock left the state consistent: every change
        // to it is a single push, retain, take or count.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn accept_loop<F>(&self, policy: Policy, handler: Arc<F>)
    where
        F: Fn(UnixStream) -> io::Result<()> + Send + Sync + 'static,
    {
        loop {
            let accepted = self.listener.accept();
            let mut state = self.lock();
            if !state.accepting {
                return;
            }
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    drop(state);
                    eprintln!("vbd-backend: {}: accept failed: {error}", self.name);
                    // Out of descriptors, say: give the process a moment rather than spin.
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if let Some(refusal) = policy.peers.refusal(&stream) {
                eprintln!("vbd-backend: {}: {refusal}", self.name);
                continue;
            }
            state.live.retain(|live| !live.handle.is_finished());
            if state.live.len() >= policy.limit + MAX_WAITING {
                eprintln!(
                    "vbd-backend: {}: refused a connection ({} served, {MAX_WAITING} waiting)",
                    self.name, policy.limit
                );
                continue;
            }
            if let Some(idle) = policy.idle_timeout {
                if let Err(error) = stream
                    .set_read_timeout(Some(idle))
                    .and_then(|()| stream.set_write_timeout(Some(idle)))
                {
                    eprintln!(
                        "vbd-backend: {}: cannot set an idle timeout: {error}",
                        self.name
                    );
                    continue;
                }
            }
            let (Ok(watch), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else {
                continue;
            };
            let handler = handler.clone();
            let connections = self.clone();
            let number = state.next;
            state.next += 1;
            match thread::Builder::new()
                .name(format!("serve {}", self.name))
                .spawn(move || {
                    if let Some(_slot) = connections.claim_slot(policy) {
                        if let Err(error) = handler(stream) {
                            connections.log_end(policy, &error);
                        }
                    }
                    // `watch` keeps the descriptor open: end the connection for the peer now,
                    // and close it (the acceptor pushed this entry before we get the lock).
                    let _ = closer.shutdown(Shutdown::Both);
                    connections.lock().live.retain(|live| live.number != number);
                }) {
                Ok(handle) => state.live.push(Live {
                    number,
                    stream: watch,
                    handle,
                }),
                Err(error) => {
                    eprintln!("vbd-backend: {}: cannot start a thread: {error}", self.name)
                }
            }
        }
    }

    /// Say why a connection ended early.
    fn log_end(&self, policy: Policy, error: &io::Error) {
        // A read or write timeout is how an idle connection ends (SO_RCVTIMEO, SO_SNDTIMEO).
        let timed_out = matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        match policy.idle_timeout {
            Some(idle) if timed_out => eprintln!(
                "vbd-backend: {}: closed a connection idle for {} s",
                self.name,
                idle.as_secs()
            ),
            _ => eprintln!("vbd-backend: {}: connection ended: {error}", self.name),
        }
    }

    /// A slot to serve a connection in, once fewer than `policy.limit` are served; `None`
    /// (and a log line) when none frees within `policy.wait_for_slot` or the socket stops.
    fn claim_slot(&self, policy: Policy) -> Option<Slot<'_>> {
        let deadline = Instant::now() + policy.wait_for_slot;
        let mut state = self.lock();
        while state.accepting && state.served >= policy.limit {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                eprintln!(
                    "vbd-backend: {}: refused a connection ({} already served, none ended within {:?})",
                    self.name, policy.limit, policy.wait_for_slot
                );
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        if !state.accepting {
            return None;
        }
        state.served += 1;
        Some(Slot { connections: self })
    }

    /// Accept no more connections; those being served go on, those waiting are closed.
    pub fn stop_accepting(&self) {
        let acceptor = {
            let mut state = self.lock();
            state.accepting = false;
            state.acceptor.take()
        };
        self.changed.notify_all();
        // Shutting a listening socket down wakes its blocked accept() on Linux.
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
        if let Some(acceptor) = acceptor {
            let _ = acceptor.join();
        }
    }

    /// Stop accepting, end the input of every connection (each finishes the request it is
    /// serving and replies), and wait for them all. A connection still there after
    /// `STOP_GRACE` is blocked writing to a peer that does not read: its output is ended
    /// too, so no peer can hold a stop.
    pub fn stop(&self) {
        self.stop_accepting();
        let live = std::mem::take(&mut self.lock().live);
        for connection in &live {
            let _ = connection.stream.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && live.iter().any(|live| !live.handle.is_finished()) {
            thread::sleep(Duration::from_millis(10));
        }
        for connection in live {
            if !connection.handle.is_finished() {
                let _ = connection.stream.shutdown(Shutdown::Both);
            }
            let _ = connection.handle.join();
        }
    }

    /// Whether any connection is still being served.
    pub fn is_serving(&self) -> bool {
        let mut state = self.lock();
        state.live.retain(|live| !live.handle.is_finished());
        !state.live.is_empty()
    }
}

/// A VBD's socket: its connections. They reach the VBD through a pinned reference, so
/// once the VBD is gone their requests fail by themselves.
pub struct VbdSocket {
    connections: Connections,
}

impl VbdSocket {
    pub fn new(connections: Connections) -> VbdSocket {
        VbdSocket { connections }
    }

    /// The VBD is gone: accept nothing more.
    pub fn retire(&self) {
        self.connections.stop_accepting();
    }

    pub fn stop(&self) {
        self.connections.stop();
    }

    pub fn is_serving(&self) -> bool {
        self.connections.is_serving()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One connection at a time, and a second waits at most this long for it.
    const ONE_AT_A_TIME: Policy = Policy {
        limit: 1,
        wait_for_slot: Duration::from_secs(2),
        peers: Peers::Owner,
        idle_timeout: None,
    };

    /// Echo bytes until the input ends, then say goodbye.
    fn echo(mut stream: UnixStream) -> io::Result<()> {
        let mut byte = [0u8; 1];
        while stream.read(&mut byte)? == 1 {
            stream.write_all(&byte)?;
        }
        stream.write_all(b"bye")
    }

    /// Echo one byte, as a client of `echo`.
    fn echoes(stream: &mut UnixStream, byte: u8) -> bool {
        let mut echo = [0u8; 1];
        stream.write_all(&[byte]).is_ok() && stream.read_exact(&mut echo).is_ok() && echo == [byte]
    }

    fn connect(path: &std::path::Path) -> UnixStream {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    }

    #[test]
    fn a_connection_past_the_limit_is_closed_when_no_slot_frees_and_stop_waits_for_the_served_one()
    {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let connections = Connections::serve("test".into(), listener, ONE_AT_A_TIME, echo).unwrap();
        let mut first = connect(&path);
        assert!(echoes(&mut first, b'a'));

        let mut second = connect(&path);
        let mut rest = Vec::new();
        assert_eq!(
            second.read_to_end(&mut rest).unwrap(),
            0,
            "the second connection is closed"
        );

        assert!(connections.is_serving());
        connections.stop();
        let mut rest = Vec::new();
        first.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
        assert!(!connections.is_serving());
    }

    #[test]
    fn a_reconnection_waits_for_the_old_connection_to_end_and_is_served() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let connections = Connections::serve("test".into(), listener, ONE_AT_A_TIME, |stream| {
            let result = echo(stream);
            // A VMM connection's teardown: the daemon joins its queue threads.
            thread::sleep(Duration::from_millis(500));
            result
        })
        .unwrap();
        let mut first = connect(&path);
        assert!(echoes(&mut first, b'a'));
        drop(first);
        let mut second = connect(&path);
        assert!(
            echoes(&mut second, b'b'),
            "the reconnection is served once the first connection has ended"
        );
        drop(second);
        connections.stop();
    }
}
