//! Errors by pipeline area; each area maps to its own process exit code.
//!
//! Messages name the table and what to fix. Anything that might echo a secret (a
//! driver error quoting a URL, ClickHouse echoing an `s3()` call) passes through
//! [`redact`] before it leaves the library.

use std::path::PathBuf;
use std::sync::RwLock;

/// Errors while reading the pipeline file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid TOML for sluice: {0}")]
    Parse(String),
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("table {table}: {field} {reason}")]
    Invalid {
        table: String,
        field: String,
        reason: String,
    },
    /// A command-line argument that names nothing in the lake (a run id) or is
    /// missing where it must be given (`--yes` without a terminal).
    #[error("{0}")]
    Argument(String),
}

/// Errors of the SQL models. Each names the model's file, and the line when the
/// problem has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("models folder {}: {message}", path.display())]
    Folder { path: PathBuf, message: String },
    #[error("{}{}: model {model}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Sql {
        model: String,
        file: PathBuf,
        line: Option<u64>,
        message: String,
    },
    #[error("{}{}: model {model} reads {name}, which is neither a lake table nor a model", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    UnknownName {
        model: String,
        file: PathBuf,
        line: Option<u64>,
        name: String,
    },
    #[error("models depend on each other in a cycle: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" → "))]
    Cycle { files: Vec<PathBuf> },
    #[error("{}: model {model}: {} check(s) failed, nothing published: {}", file.display(), failures.len(), failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    CheckFailed {
        model: String,
        file: PathBuf,
        failures: Vec<CheckOutcome>,
    },
    #[error("{} model(s) failed ({}), {} skipped downstream ({}):\n{}", failed.len(), failed.join(", "), skipped.len(), skipped.join(", "), messages.join("\n"))]
    Run {
        failed: Vec<String>,
        skipped: Vec<String>,
        messages: Vec<String>,
    },
}

/// The outcome of one model check (`transform::checks`); failed ones are carried
/// by [`ModelError::CheckFailed`].
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct CheckOutcome {
    /// What was checked, e.g. `not_null(user_key)`.
    pub check: String,
    /// Rows breaking the check (0: it passed).
    pub failing_rows: u64,
    /// A few of those rows, as a pretty-printed table.
    pub sample: String,
}

impl CheckOutcome {
    pub fn passed(&self) -> bool {
        self.failing_rows == 0
    }
}

impl std::fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed on {} row(s)", self.check, self.failing_rows)?;
        if !self.sample.is_empty() {
            write!(f, ", e.g.\n{}", self.sample)?;
        }
        Ok(())
    }
}

/// Errors of the whole pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("table {table}: source: {message}")]
    Source { table: String, message: String },
    #[error("table {table}: {message}")]
    Capture { table: String, message: String },
    #[error("lake: {message}")]
    Lake { message: String },
    #[error("table {table}: ClickHouse: {message}")]
    Warehouse { table: String, message: String },
    #[error("{0}")]
    Query(String),
    #[error("table {table} is already being written by {holder}; wait for that run to finish")]
    AlreadyRunning { table: String, holder: String },
    /// Another writer replaced the table's manifest after this run read it: the
    /// commit was refused (a conditional PUT), nothing of this run is visible.
    #[error("table {table}: another run committed the lake table after this run read it ({detail}); nothing of this run was committed: rerun it")]
    CommitConflict { table: String, detail: String },
    /// An object-store call failed. The store's own error stays matchable
    /// (`object_store::Error::Precondition`, `AlreadyExists`, `NotFound`, …); the
    /// message is the redacted text shown to users.
    #[error("lake: {message}")]
    Store {
        message: String,
        store: object_store::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl Error {
    /// The process exit code for this class of error (documented in README.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            Error::Source { .. } | Error::Capture { .. } => 3,
            Error::Lake { .. } | Error::Store { .. } => 4,
            Error::Warehouse { .. } => 5,
            Error::Query(_) => 6,
            Error::AlreadyRunning { .. } | Error::CommitConflict { .. } => 7,
            Error::Model(_) => 8,
        }
    }

    pub(crate) fn source(table: &str, message: impl std::fmt::Display) -> Self {
        Error::Source {
            table: table.to_string(),
            message: redact(&message.to_string()),
        }
    }

    pub(crate) fn capture(table: &str, message: impl std::fmt::Display) -> Self {
        Error::Capture {
            table: table.to_string(),
            message: redact(&message.to_string()),
        }
    }

    pub(crate) fn lake(message: impl std::fmt::Display) -> Self {
        Error::Lake {
            message: redact(&message.to_string()),
        }
    }

    /// An object-store failure while doing `context` (e.g. `reading <path>`).
    pub(crate) fn store(context: impl std::fmt::Display, store: object_store::Error) -> Self {
        Error::Store {
            message: redact(&format!("{context}: {store}")),
            store,
        }
    }

    pub(crate) fn warehouse(table: &str, message: impl std::fmt::Display) -> Self {
        Error::Warehouse {
            table: table.to_string(),
            message: redact(&message.to_string()),
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::Store {
            message: redact(&e.to_string()),
            store: e,
        }
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::lake(format!("parquet: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes as one line (`outer: cause: root cause`), since many
/// driver errors say little more than "db error" at the top.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a value that must never be shown: it is replaced by `***` in every
/// error message and report sluice produces.
pub fn register_secret(secret: &str) {
    if secret.len() < 3 {
        return; // too short to redact without mangling ordinary text
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_string());
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the password of a connection URL, if it has one, also in its
/// percent-decoded form.
pub fn register_url_secret(url: &str) {
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(password) = parsed.password() {
            register_secret(password);
            if let Ok(decoded) = percent_decode(password) {
                register_secret(&decoded);
            }
        }
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

/// Replaces every registered secret in `text` by `***`.
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_passwords_plain_and_decoded() {
        register_url_secret("postgres://u:p%40ss-word-1@h/db");
        assert_eq!(redact("x p%40ss-word-1 y p@ss-word-1"), "x *** y ***");
    }
}
