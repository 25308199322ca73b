//! Writing to standard output and standard error without panicking.
//!
//! `println!` panics when stdout is a closed pipe or a full disk; the
//! commands print through [`outln!`] (and [`stdout`] for loops) instead,
//! which return a [`StdoutError`] that `main` turns into a quiet exit (a
//! closed pipe, as `git` and `ripgrep` do) or exit 1 with the cause.
//! [`errln!`] writes to stderr and ignores failures: there is nowhere left
//! to report them.

use std::fmt;
use std::io::{self, Write};

/// Standard output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {}", io_message(.0))]
pub struct StdoutError(pub io::Error);

impl StdoutError {
    /// Whether the reader went away (`| head -1`): not worth a word.
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == io::ErrorKind::BrokenPipe
    }
}

impl From<serde_json::Error> for StdoutError {
    fn from(e: serde_json::Error) -> Self {
        // An I/O failure inside serde_json keeps its kind (a closed pipe).
        StdoutError(io::Error::from(e))
    }
}

/// An I/O error's text without the " (os error N)" suffix meant for
/// programmers.
pub fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Standard output, locked, whose `write_fmt` (so `write!`/`writeln!`)
/// returns a [`StdoutError`].
pub struct Stdout(io::StdoutLock<'static>);

/// Locks standard output for a run of `writeln!`.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

impl Stdout {
    /// What `write!` calls.
    pub fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> Result<(), StdoutError> {
        self.0.write_fmt(args).map_err(StdoutError)
    }

    /// Pushes out what is buffered.
    pub fn flush(&mut self) -> Result<(), StdoutError> {
        self.0.flush().map_err(StdoutError)
    }

    /// The lock itself, for code that takes any writer.
    pub fn raw(&mut self) -> &mut io::StdoutLock<'static> {
        &mut self.0
    }
}

/// Writes one line to standard output.
pub fn line(args: fmt::Arguments<'_>) -> Result<(), StdoutError> {
    let mut out = stdout();
    writeln!(out, "{args}")?;
    out.flush()
}

/// Writes one line to standard error; a failure is ignored.
pub fn err_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// `println!` that returns a [`StdoutError`] instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (a closed or full stderr is ignored).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::err_line(format_args!($($arg)*))
    };
}

/// Adds to an output error that the command's action already took effect,
/// so the user does not repeat it.
pub trait AlreadyDone<T> {
    /// `what` is the effect, e.g. "the contact was saved".
    fn done(self, what: &str) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> AlreadyDone<T> for Result<T, E> {
    fn done(self, what: &str) -> anyhow::Result<T> {
        self.map_err(|e| {
            let e: anyhow::Error = e.into();
            if e.is::<StdoutError>() {
                e.context(format!("{what}, but its report could not be printed"))
            } else {
                e
            }
        })
    }
}

/// The output error at the root of `e`, if that is what ended the command.
pub fn stdout_error(e: &anyhow::Error) -> Option<&StdoutError> {
    e.chain().find_map(|c| c.downcast_ref::<StdoutError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_numbers_are_left_out() {
        let e = StdoutError(io::Error::from_raw_os_error(28));
        assert_eq!(
            e.to_string(),
            "cannot write to standard output: No space left on device"
        );
    }

    #[test]
    fn done_says_what_took_effect_only_for_output_errors() {
        let e: Result<(), StdoutError> = Err(StdoutError(io::Error::from_raw_os_error(28)));
        let e = e.done("the contact was saved").unwrap_err();
        assert!(format!("{e:#}").starts_with("the contact was saved, but"));
        assert!(stdout_error(&e).is_some());
        let other: anyhow::Result<()> = Err(anyhow::anyhow!("boom"));
        assert_eq!(other.done("x").unwrap_err().to_string(), "boom");
    }
}
