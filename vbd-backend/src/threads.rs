//! A listening socket served by one thread per connection, with a bound on connections at
//! once (a VBD's vhost-user socket allows one: a second is refused by closing it), and a
//! way to stop: no new connections, then each connection finishes the request it is
//! serving, sees the end of its input, and is waited for.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

struct Live {
    /// A clone of the connection's stream, to end its input from outside.
    stream: UnixStream,
    handle: JoinHandle<()>,
}

struct State {
    accepting: bool,
    live: Vec<Live>,
    acceptor: Option<JoinHandle<()>>,
}

/// The connections of one listening socket.
#[derive(Clone)]
pub struct Connections {
    name: Arc<str>,
    state: Arc<Mutex<State>>,
    listener: Arc<UnixListener>,
}

impl Connections {
    /// Serve `listener`: each accepted connection runs `handler` on a thread of its own,
    /// while fewer than `limit` do; beyond that a connection is closed at once.
    pub fn serve<F>(
        name: String,
        listener: UnixListener,
        limit: usize,
        handler: F,
    ) -> io::Result<Connections>
    where
        F: Fn(UnixStream) + Send + Sync + 'static,
    {
        let connections = Connections {
            name: name.into(),
            state: Arc::new(Mutex::new(State {
                accepting: true,
                live: Vec::new(),
                acceptor: None,
            })),
            listener: Arc::new(listener),
        };
        let accepting = connections.clone();
        let handler = Arc::new(handler);
        let acceptor = thread::Builder::new()
            .name(format!("accept {}", connections.name))
            .spawn(move || accepting.accept_loop(limit, handler))?;
        connections.lock().acceptor = Some(acceptor);
        Ok(connections)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked holding the lock left the lists consistent: every change
        // to them is a single push, retain or take.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn accept_loop<F>(&self, limit: usize, handler: Arc<F>)
    where
        F: Fn(UnixStream) + Send + Sync + 'static,
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
                    thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            state.live.retain(|live| !live.handle.is_finished());
            if state.live.len() >= limit {
                eprintln!(
                    "vbd-backend: {}: refused a connection ({limit} already served)",
                    self.name
                );
                continue;
            }
            let (Ok(watch), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else {
                continue;
            };
            let handler = handler.clone();
            match thread::Builder::new()
                .name(format!("serve {}", self.name))
                .spawn(move || {
                    handler(stream);
                    // `watch` keeps the descriptor open: end the connection for the peer now.
                    let _ = closer.shutdown(Shutdown::Both);
                }) {
                Ok(handle) => state.live.push(Live {
                    stream: watch,
                    handle,
                }),
                Err(error) => {
                    eprintln!("vbd-backend: {}: cannot start a thread: {error}", self.name)
                }
            }
        }
    }

    /// Accept no more connections; those being served go on.
    pub fn stop_accepting(&self) {
        let acceptor = {
            let mut state = self.lock();
            state.accepting = false;
            state.acceptor.take()
        };
        // Shutting a listening socket down wakes its blocked accept() on Linux.
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
        if let Some(acceptor) = acceptor {
            let _ = acceptor.join();
        }
    }

    /// Stop accepting, end the input of every connection (each finishes the request it is
    /// serving and replies), and wait for them all.
    pub fn stop(&self) {
        self.stop_accepting();
        let live = std::mem::take(&mut self.lock().live);
        for connection in &live {
            let _ = connection.stream.shutdown(Shutdown::Read);
        }
        for connection in live {
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
    use std::time::Duration;

    #[test]
    fn a_connection_past_the_limit_is_closed_and_stop_waits_for_the_served_one() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let connections = Connections::serve("test".into(), listener, 1, |mut stream| {
            let mut byte = [0u8; 1];
            // Echo bytes until the input ends.
            while stream.read(&mut byte).unwrap_or(0) == 1 {
                stream.write_all(&byte).unwrap();
            }
            stream.write_all(b"bye").unwrap();
        })
        .unwrap();
        let mut first = UnixStream::connect(&path).unwrap();
        first.write_all(b"a").unwrap();
        let mut echo = [0u8; 1];
        first.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"a");

        let mut second = UnixStream::connect(&path).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
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
}
