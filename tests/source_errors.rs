//! A source that cannot be reached fails at once, in the server's own words:
//! wrong password, unknown database, nothing listening. Exit code 3 (source),
//! the error names the table, and the password never appears.

mod common;
mod common_mysql;

use common::*;

struct Failure {
    code: i32,
    stderr: String,
    stdout: String,
}

impl Failure {
    fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line in:\n{}", self.stderr))
    }
}

/// Runs one table of `kind` from `url` into a local lake; it must fail.
fn run_failing(kind: &str, url: &str, table: &str) -> Failure {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            r#"
[lake]
url = "{lake}"

[sources.app]
kind = "{kind}"
url = "{url}"

[[table]]
name = "orders"
source = "app"
{table}
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#,
            lake = dir.path().join("lake").display()
        ),
    );
    let out = sluice(&["run", "--config", config.to_str().unwrap()], &[]);
    let failure = Failure {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
    };
    assert!(
        !out.status.success(),
        "expected a failure:\n{}",
        failure.stderr
    );
    assert_eq!(failure.code, 3, "a source error:\n{}", failure.stderr);
    assert!(
        failure.error_line().contains("table orders: source: "),
        "{}",
        failure.stderr
    );
    // The pool's retries ("ERROR db error", "timed out waiting for connection")
    // never start: the check fails first.
    assert!(
        !failure.stderr.contains("db error") && !failure.stderr.contains("timed out"),
        "{}",
        failure.stderr
    );
    failure
}

const SOURCE_TABLE: &str = r#"source_table = "orders""#;
const QUERY: &str = r#"query = "SELECT * FROM orders""#;

/// `url` with its password replaced by `password`.
fn with_password(url: &str, password: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

fn with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_path(database);
    url.to_string()
}

/// `url` pointing at a local port nothing listens on.
fn with_closed_port(url: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut url = url::Url::parse(url).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(port)).unwrap();
    url.to_string()
}

fn assert_secret_hidden(f: &Failure, secret: &str) {
    assert!(
        !f.stderr.contains(secret) && !f.stdout.contains(secret),
        "{}\n{}",
        f.stdout,
        f.stderr
    );
}

#[test]
fn postgres_wrong_password_says_so() {
    let secret = "Wr0ng-Pa55word-Pg-7x";
    for table in [SOURCE_TABLE, QUERY] {
        let f = run_failing("postgres", &with_password(&pg_url(), secret), table);
        let line = f.error_line();
        assert!(
            line.contains("password authentication failed for user")
                && line.contains("28P01")
                && line.contains("127.0.0.1:"),
            "{line}"
        );
        assert_secret_hidden(&f, secret);
    }
}

#[test]
fn postgres_unknown_database_is_named() {
    let database = unique("nodb");
    let f = run_failing(
        "postgres",
        &with_database(&pg_url(), &database),
        SOURCE_TABLE,
    );
    let line = f.error_line();
    assert!(
        line.contains(&format!("database \"{database}\" does not exist")),
        "{line}"
    );
}

#[test]
fn postgres_refused_connection_says_so() {
    let url = with_closed_port(&pg_url());
    let f = run_failing("postgres", &url, SOURCE_TABLE);
    let line = f.error_line();
    assert!(
        line.contains("cannot connect to PostgreSQL at 127.0.0.1:")
            && line.to_lowercase().contains("connection refused"),
        "{line}"
    );
}

#[test]
fn mysql_wrong_password_says_so() {
    let secret = "Wr0ng-Pa55word-My-7x";
    for table in [SOURCE_TABLE, QUERY] {
        let url = with_password(&common_mysql::mysql_url(), secret);
        let f = run_failing("mysql", &url, table);
        let line = f.error_line();
        assert!(
            line.contains("Access denied for user") && line.contains("1045"),
            "{line}"
        );
        assert_secret_hidden(&f, secret);
    }
}

#[test]
fn mysql_unknown_database_is_named() {
    let database = unique("nodb");
    let url = with_database(&common_mysql::mysql_url(), &database);
    let f = run_failing("mysql", &url, SOURCE_TABLE);
    let line = f.error_line();
    assert!(
        line.contains(&format!("Unknown database '{database}'")),
        "{line}"
    );
}

#[test]
fn mysql_refused_connection_says_so() {
    let url = with_closed_port(&common_mysql::mysql_url());
    let f = run_failing("mysql", &url, QUERY);
    let line = f.error_line();
    assert!(
        line.contains("cannot connect to MySQL at 127.0.0.1:")
            && line.to_lowercase().contains("connection refused"),
        "{line}"
    );
}

/// A server that accepts the connection and never says a word: the check gives up
/// after the URL's own time limit (one second here) instead of waiting forever.
fn silent_server_times_out(kind: &str, url: &str, limit: &str) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut url = url::Url::parse(url).unwrap();
    url.set_port(Some(port)).unwrap();
    url.set_query(Some(limit));
    let f = run_failing(kind, url.as_str(), QUERY);
    let line = f.error_line();
    assert!(
        line.contains(&format!("127.0.0.1:{port}: no answer within 1 s")),
        "{line}"
    );
    drop(listener);
}

#[test]
fn postgres_silent_server_times_out() {
    silent_server_times_out("postgres", &pg_url(), "connect_timeout=1");
}

#[test]
fn mysql_silent_server_times_out() {
    silent_server_times_out(
        "mysql",
        &common_mysql::mysql_url(),
        "tcp_connect_timeout_ms=1000",
    );
}
