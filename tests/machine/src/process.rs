//! Running external commands: every command is printed before it runs, failures name it.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

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
