//! Running external commands: every command is printed before it runs, failures name it;
//! long-running servers ([`Daemon`]) are stopped with the process that started them.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Render a command the way a shell user would type it, quoting what a shell would not take
/// literally (`?` in an NBD URL, spaces, the empty string), after a `cd DIR &&` when it runs
/// in a directory of its own.
pub fn display(command: &Command) -> String {
    let mut text = command
        .get_current_dir()
        .map_or_else(String::new, |directory| {
            format!("cd {} && ", shell_word(&directory.to_string_lossy()))
        });
    for (name, value) in command.get_envs() {
        if let Some(value) = value {
            text.push_str(&format!(
                "{}={} ",
                name.to_string_lossy(),
                shell_word(&value.to_string_lossy())
            ));
        }
    }
    text.push_str(&shell_word(&command.get_program().to_string_lossy()));
    for argument in command.get_args() {
        text.push(' ');
        text.push_str(&shell_word(&argument.to_string_lossy()));
    }
    text
}

/// `word` as one shell word: as it is when every character is plain, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Print and run a command with inherited output; an error names the command on failure.
pub fn run(command: &mut Command) -> Result<(), String> {
    eprintln!("$ {}", display(command));
    let status = command
        .status()
        .map_err(|error| format!("{}: {error}", display(command)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {status}", display(command)))
    }
}

/// Print and run a command, capturing its output; an error carries its stderr.
pub fn output(command: &mut Command) -> Result<Output, String> {
    eprintln!("$ {}", display(command));
    let output = command
        .output()
        .map_err(|error| format!("{}: {error}", display(command)))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "`{}` failed: {}: {}",
            display(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Print `$ SHOWN` (the command as a transcript shows it), run the command, and print its
/// standard output; a failure is an error carrying its standard error. Returns the output.
pub fn transcribe(shown: &str, command: &mut Command) -> Result<String, String> {
    println!("$ {shown}");
    let output = command
        .output()
        .map_err(|error| format!("{shown}: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{shown}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The last `lines` lines of `text`, for error messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Print and start a long-running command with no standard input and both outputs in a new
/// file `log`; `hint` follows the error when it cannot start (say, which package ships it).
pub fn spawn_logged(command: &mut Command, log: &Path, hint: &str) -> Result<Child, String> {
    let file = File::create(log).map_err(|error| format!("{}: {error}", log.display()))?;
    eprintln!("$ {}", display(command));
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|error| error.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|error| format!("cannot start {}: {error} ({hint})", display(command)))
}

/// Stop a process: SIGTERM (to `timeout` or `setpriv`, which pass it on, where a SIGKILL
/// would orphan what they run), then SIGKILL if it is still there after five seconds.
pub(crate) fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A long-running server (qemu-storage-daemon, vbd-backend) with its output in a log file.
/// It is started under `setpriv --pdeathsig TERM`, which execs it, so it dies with whoever
/// started it and its pid is the server's own. Dropping it stops the server.
pub struct Daemon {
    child: Option<Child>,
    /// The program's name, for messages.
    name: String,
    log: PathBuf,
}

impl Daemon {
    /// Print and start `program arguments...` with both outputs in a new file `log`; `hint`
    /// follows the error when it cannot start.
    pub fn spawn(
        program: &Path,
        arguments: &[String],
        log: &Path,
        hint: &str,
    ) -> Result<Daemon, String> {
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "TERM", "--"])
            .arg(program)
            .args(arguments);
        let child = spawn_logged(&mut command, log, hint)?;
        Ok(Daemon {
            child: Some(child),
            name: program.file_name().map_or_else(
                || program.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
            log: log.to_path_buf(),
        })
    }

    /// Spawn a server (as [`Daemon::spawn`]) that makes `sockets`, after removing any left
    /// there by an earlier one, and wait up to 10 s until it has made them all.
    pub fn spawn_serving(
        program: &Path,
        arguments: &[String],
        log: &Path,
        hint: &str,
        sockets: &[&Path],
    ) -> Result<Daemon, String> {
        for socket in sockets {
            let _ = std::fs::remove_file(socket);
        }
        let mut daemon = Daemon::spawn(program, arguments, log, hint)?;
        let what = if sockets.len() == 1 {
            "making its socket"
        } else {
            "making its sockets"
        };
        daemon.wait_until(what, Duration::from_secs(10), || {
            sockets.iter().all(|socket| socket.exists())
        })?;
        Ok(daemon)
    }

    /// Wait until `ready` holds, for at most `limit`; an error if the server exits first.
    pub fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        ready: impl Fn() -> bool,
    ) -> Result<(), String> {
        let started = Instant::now();
        while !ready() {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| format!("{} is not running", self.name))?;
            if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
                return Err(format!(
                    "{} exited ({status}) before {what}: {}",
                    self.name,
                    self.log().trim()
                ));
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "{} did not get to {what} in {limit:?}: {}",
                    self.name,
                    self.log().trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Wait for the server to exit by itself, for at most `limit`; returns its status and
    /// all it printed. Still running after `limit` is an error, and it is terminated.
    pub fn wait_exit(mut self, limit: Duration) -> Result<(ExitStatus, String), String> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
                return Ok((status, self.log()));
            }
            if started.elapsed() > limit {
                terminate(child);
                return Err(format!(
                    "{} still running {limit:?} later: {}",
                    self.name,
                    self.log().trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop the server with SIGTERM and require a clean exit (status 0) within `limit`;
    /// returns all it printed.
    pub fn stop(mut self, limit: Duration) -> Result<String, String> {
        let child = self
            .child
            .take()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        let status = signal_and_wait(child, "TERM", limit)
            .map_err(|error| format!("{}: {error}", self.name))?;
        let log = self.log();
        if status.success() {
            Ok(log)
        } else {
            Err(format!(
                "{} exited with {status} on SIGTERM: {}",
                self.name,
                log.trim()
            ))
        }
    }

    /// Kill the server with SIGKILL, as a crash would, and wait until it is gone.
    pub fn kill(mut self) -> Result<ExitStatus, String> {
        let child = self
            .child
            .take()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        signal_and_wait(child, "KILL", Duration::from_secs(10))
            .map_err(|error| format!("{}: {error}", self.name))
    }
}

/// Print and send `signal` to `child`, then reap it; a child still there after `limit` is
/// terminated and that is an error.
fn signal_and_wait(mut child: Child, signal: &str, limit: Duration) -> Result<ExitStatus, String> {
    run(Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string()))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
            return Ok(status);
        }
        if started.elapsed() > limit {
            terminate(child);
            return Err(format!("still running {limit:?} after SIG{signal}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_as_a_shell_would_take_them() {
        let mut command = Command::new("qemu-img");
        command.args([
            "convert",
            "-O",
            "raw",
            "nbd+unix:///xvda?socket=run/dom0/xvda.nbd",
            "",
            "a b",
            "it's",
            "^has_journal",
        ]);
        assert_eq!(
            display(&command),
            "qemu-img convert -O raw 'nbd+unix:///xvda?socket=run/dom0/xvda.nbd' '' 'a b' 'it'\\''s' ^has_journal"
        );
        let mut elsewhere = Command::new("sha256sum");
        elsewhere.current_dir("target/demo/rootfs").arg("init");
        assert_eq!(
            display(&elsewhere),
            "cd target/demo/rootfs && sha256sum init"
        );
        let mut with_flags = Command::new("cargo");
        with_flags.env("RUSTFLAGS", "--cfg loom").arg("test");
        assert_eq!(display(&with_flags), "RUSTFLAGS='--cfg loom' cargo test");
    }
}
