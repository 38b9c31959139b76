//! Running external commands: every command is printed before it runs, failures name it.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Render a command the way a shell user would type it.
pub fn display(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for argument in command.get_args() {
        let argument = argument.to_string_lossy();
        if argument.contains(' ') || argument.is_empty() {
            text.push_str(&format!(" '{argument}'"));
        } else {
            text.push(' ');
            text.push_str(&argument);
        }
    }
    text
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

/// Stop a server with SIGTERM (the command printed) and require a clean exit, status 0,
/// within `limit`; after that it is killed and the stop fails. `name` names it in errors.
pub fn stop_gracefully(mut child: Child, name: &str, limit: Duration) -> Result<(), String> {
    let mut kill = Command::new("kill");
    kill.args(["-TERM", &child.id().to_string()]);
    eprintln!("$ {}", display(&kill));
    let _ = kill.status();
    let started = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|error| format!("{name}: {error}"))?
        {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("{name} exited with {status} on SIGTERM"))
            };
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name} ignored SIGTERM for {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `ready` holds for server `name`, just started with its output in `log`
/// (which an error quotes if the server exits first); `what` says what readiness is, for
/// the error after `limit`.
pub fn wait_until_ready(
    child: &mut Child,
    name: &str,
    log: &Path,
    limit: Duration,
    what: &str,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let started = Instant::now();
    while !ready() {
        if let Some(status) = child
            .try_wait()
            .map_err(|error| format!("{name}: {error}"))?
        {
            return Err(format!(
                "{name} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default().trim()
            ));
        }
        if started.elapsed() > limit {
            return Err(format!("{name} {what} in {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
