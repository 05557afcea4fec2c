//! `sluice shell`: an interactive SQL prompt over the lake session of
//! `sluice query`, in the manner of psql and datafusion-cli.
//!
//! Statements end with `;` and may span lines; several may share a line. Between
//! statements, backslash commands: `\d` lists the tables, `\d NAME` shows a
//! table's columns, `\s` prints this session's history, `\timing` turns the
//! per-statement timing off and on, `\?` helps, `\q` quits (so does end of input).
//! Each result is a table followed by its row count and time.
//!
//! Input is read line by line from stdin (no line editing; run it under `rlwrap`
//! for arrow keys). On a terminal the prompt is shown and statements are appended
//! to `~/.sluice_history`. A failed statement prints its error and the shell goes
//! on; when stdin is not a terminal, the shell then exits with the query error's
//! code after the last statement, so scripts notice.

use std::io::{BufRead, Write};
use std::path::Path as FsPath;
use std::time::Instant;

use super::{write_text, LakeSession, OutputFormat};
use crate::config::Config;
use crate::error::{redact, Error, Result};

/// How the shell was started.
#[derive(Debug, Clone, Default)]
pub struct ShellOptions {
    /// Read snapshot and change tables as of this day.
    pub as_of: Option<super::as_of::AsOf>,
    /// Show prompts and keep a history file (stdin is a terminal).
    pub interactive: bool,
}

const PROMPT: &str = "sluice> ";
const CONTINUATION: &str = "     -> ";
const HELP: &str = "\
  SQL;          run a statement (it may span lines; end it with ;)
  \\d            list the tables
  \\d NAME       show a table's columns
  \\s            show this session's history
  \\timing       turn the timing of statements off or on
  \\q            quit
";

/// Runs the shell on `input` until `\q` or the end of input; results go to
/// `out`, errors to `err`.
pub async fn shell<R: BufRead, W: Write, E: Write>(
    config: &Config,
    base: &FsPath,
    options: &ShellOptions,
    input: R,
    mut out: W,
    mut err: E,
) -> Result<()> {
    let session = LakeSession::open_as_of(config, base, options.as_of).await?;
    let mut state = Shell {
        session,
        out: &mut out,
        err: &mut err,
        timing: true,
        history: Vec::new(),
        failed: 0,
    };
    if options.interactive {
        writeln!(
            state.out,
            "sluice shell: SQL over the lake (DataFusion). \\? for help, \\q to quit."
        )
        .map_err(io_error)?;
        if let Some(when) = options.as_of {
            writeln!(state.out, "Tables as of {when}.").map_err(io_error)?;
        }
    }
    let history_file = options.interactive.then(history_path).flatten();
    let mut buffer = String::new();
    let mut lines = input.lines();
    loop {
        if options.interactive {
            let prompt = if buffer.trim().is_empty() {
                PROMPT
            } else {
                CONTINUATION
            };
            write!(state.out, "{prompt}").map_err(io_error)?;
            state.out.flush().map_err(io_error)?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(io_error)?;
        if buffer.trim().is_empty() && line.trim_start().starts_with('\\') {
            buffer.clear();
            if !state.command(line.trim()).await? {
                break;
            }
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        let (statements, rest) = split_statements(&buffer);
        buffer = rest;
        for statement in statements {
            if let Some(path) = &history_file {
                append_history(path, &statement);
            }
            state.history.push(statement.clone());
            state.run(&statement).await?;
        }
    }
    if !buffer.trim().is_empty() {
        // The last statement without its `;`: run it, as psql does at end of input.
        let statement = buffer.trim().to_string();
        state.history.push(statement.clone());
        state.run(&statement).await?;
    }
    if options.interactive {
        writeln!(state.out).map_err(io_error)?;
    }
    if state.failed > 0 && !options.interactive {
        return Err(Error::Query(format!(
            "{} statement(s) failed",
            state.failed
        )));
    }
    Ok(())
}

struct Shell<'a, W: Write, E: Write> {
    session: LakeSession,
    out: &'a mut W,
    err: &'a mut E,
    timing: bool,
    history: Vec<String>,
    failed: usize,
}

impl<W: Write, E: Write> Shell<'_, W, E> {
    /// Runs one backslash command; false to quit.
    async fn command(&mut self, line: &str) -> Result<bool> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let argument = words.next();
        match (command, argument) {
            ("\\q", _) => return Ok(false),
            ("\\d", None) => {
                self.run_quiet(
                    "SELECT table_name AS \"table\", table_type AS \"type\" \
                     FROM information_schema.tables WHERE table_schema = 'public' \
                     ORDER BY table_name",
                )
                .await?
            }
            ("\\d", Some(table)) => {
                self.run_quiet(&format!(
                    "SELECT column_name AS \"column\", data_type AS \"type\", \
                     is_nullable AS \"nullable\" FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = '{}' \
                     ORDER BY ordinal_position",
                    table.trim_end_matches(';').replace('\'', "''")
                ))
                .await?
            }
            ("\\s", _) => {
                for statement in &self.history {
                    writeln!(self.out, "{statement}").map_err(io_error)?;
                }
            }
            ("\\timing", _) => {
                self.timing = !self.timing;
                let state = if self.timing { "on" } else { "off" };
                writeln!(self.out, "Timing is {state}.").map_err(io_error)?;
            }
            ("\\?", _) | ("\\h", _) => write!(self.out, "{HELP}").map_err(io_error)?,
            _ => {
                self.failed += 1;
                writeln!(
                    self.err,
                    "unknown command {command}; \\? lists the commands"
                )
                .map_err(io_error)?;
            }
        }
        Ok(true)
    }

    /// Runs a statement and prints its result, row count and time.
    async fn run(&mut self, sql: &str) -> Result<()> {
        let started = Instant::now();
        match self.execute(sql).await {
            Ok(rows) => {
                if self.timing {
                    let seconds = started.elapsed().as_secs_f64();
                    let plural = if rows == 1 { "" } else { "s" };
                    writeln!(self.out, "{rows} row{plural} in {seconds:.3} s").map_err(io_error)?;
                }
            }
            Err(e) => self.report(e)?,
        }
        Ok(())
    }

    /// Runs a statement of a backslash command: the result only.
    async fn run_quiet(&mut self, sql: &str) -> Result<()> {
        if let Err(e) = self.execute(sql).await {
            self.report(e)?;
        }
        Ok(())
    }

    async fn execute(&mut self, sql: &str) -> Result<u64> {
        let stream = self.session.execute(sql).await?;
        let summary = write_text(stream, OutputFormat::Table, &mut *self.out).await?;
        Ok(summary.rows)
    }

    /// Prints a statement's error; the shell goes on.
    fn report(&mut self, e: Error) -> Result<()> {
        self.failed += 1;
        writeln!(self.err, "error: {}", redact(&e.to_string())).map_err(io_error)
    }
}

/// Splits off the complete statements of `buffer` (each ended by a `;` outside
/// quotes and comments); returns them and what is left.
fn split_statements(buffer: &str) -> (Vec<String>, String) {
    let mut statements = Vec::new();
    let mut start = 0;
    let mut chars = buffer.char_indices().peekable();
    let mut quote: Option<char> = None;
    let mut line_comment = false;
    let mut block_comment = false;
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|(_, n)| *n);
        if line_comment {
            line_comment = c != '\n';
        } else if block_comment {
            if c == '*' && next == Some('/') {
                chars.next();
                block_comment = false;
            }
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == '-' && next == Some('-') {
            line_comment = true;
        } else if c == '/' && next == Some('*') {
            block_comment = true;
        } else if c == ';' {
            let statement = buffer[start..i].trim();
            if !statement.is_empty() {
                statements.push(statement.to_string());
            }
            start = i + 1;
        }
    }
    let rest = &buffer[start..];
    let rest = if rest.trim().is_empty() { "" } else { rest };
    (statements, rest.to_string())
}

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".sluice_history"))
}

/// Appends a statement to the history file; a history that cannot be written is
/// not worth stopping the shell for.
fn append_history(path: &FsPath, statement: &str) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{statement};"));
    if let Err(e) = written {
        tracing::debug!(path = %path.display(), error = %e, "History not written.");
    }
}

fn io_error(e: std::io::Error) -> Error {
    Error::Query(format!("shell input/output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        let (done, rest) = split_statements("SELECT 1; SELECT ';' -- a ; comment\n, 2;\nSELECT");
        assert_eq!(done, vec!["SELECT 1", "SELECT ';' -- a ; comment\n, 2"]);
        assert_eq!(rest, "\nSELECT");
        let (done, rest) = split_statements("SELECT /* ; */ 3\n");
        assert!(done.is_empty());
        assert_eq!(rest, "SELECT /* ; */ 3\n");
        let (done, rest) = split_statements("  ;\n");
        assert!(done.is_empty());
        assert_eq!(rest, "");
    }
}
