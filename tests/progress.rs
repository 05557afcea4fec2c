//! Progress bars: shown on a terminal (a pseudo-terminal from util-linux `script`),
//! one per table and stage, and absent when stderr is a pipe, with `--quiet` and
//! with `--log-format json`. PostgreSQL → S3 lake → ClickHouse, so that the
//! extract, merge and load stages all run. No timing assertions.

mod common;

use std::process::Command;

use common::*;

async fn seed(pg: &PgDb) {
    pg.exec(
        "CREATE TABLE transactions (
            id bigint PRIMARY KEY,
            amount numeric(12,2) NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL);
         INSERT INTO transactions
         SELECT g, (g * 1.25)::numeric(12,2),
                date_trunc('day', now()) - interval '3 days' + g * interval '90 minutes',
                now() - interval '1 hour' + g * interval '1 second'
         FROM generate_series(0, 47) g;",
    )
    .await;
}

fn config(prefix: &str, pg_url: &str, ch_db: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://{bucket}/{prefix}"

[sources.app]
kind = "postgres"
url = "{pg_url}"

[clickhouse]
url = "{ch}"
database = "{ch_db}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "transactions"
source = "app"
source_table = "public.transactions"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
batch_rows = 16
"#,
        bucket = s3_bucket(),
        ch = clickhouse_url(),
        ch_s3 = clickhouse_s3_endpoint(),
    )
}

/// Single quotes for `sh -c`.
fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// Runs `sluice ARGS` with its stdin, stdout and stderr on a pseudo-terminal
/// (`script -qfec CMD /dev/null`); returns the exit code and what the terminal got.
fn on_terminal(args: &[&str]) -> (i32, String) {
    let line = std::iter::once(env!("CARGO_BIN_EXE_sluice"))
        .chain(args.iter().copied())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env("SHELL", "/bin/sh")
        .stdin(std::process::Stdio::null());
    for (k, v) in s3_env() {
        cmd.env(k, v);
    }
    let out = tokio::task::block_in_place(|| cmd.output())
        .expect("`script` from util-linux runs (apt-get install util-linux)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_bars_on_a_terminal_only() {
    let name = unique("progress");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&name, &pg.url, &name));
    let cfg = cfg.to_str().unwrap();

    // stderr is a pipe: log lines, no bars.
    let out = tokio::task::block_in_place(|| sluice(&["run", "--config", cfg], &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Extract finished."), "{stderr}");
    assert!(!stderr.contains("rows read"), "{stderr}");

    // On a terminal: a bar per stage, each ending as a line with its counts. The
    // update touches the three committed days, so they are merged, then loaded.
    pg.exec("UPDATE transactions SET amount = amount + 1, updated_at = now() WHERE id % 2 = 0")
        .await;
    let (exit, terminal) = on_terminal(&["run", "--config", cfg]);
    assert_eq!(exit, 0, "{terminal}");
    // 24 updated rows, and the row at the old watermark read again (and skipped).
    assert!(
        terminal.contains("transactions extract: 25 rows read"),
        "{terminal}"
    );
    let days = pg
        .lines("SELECT count(DISTINCT (created_at AT TIME ZONE 'UTC')::date)::text FROM transactions WHERE id % 2 = 0")
        .await[0]
        .clone();
    assert!(
        terminal.contains(&format!("transactions merge: {days}/{days} days merged")),
        "{terminal}"
    );
    assert!(
        terminal.contains(&format!(
            "transactions load: {days}/{days} partitions loaded"
        )),
        "{terminal}"
    );
    // Log lines are still there, whole, each on its own line.
    assert!(
        terminal
            .lines()
            .any(|l| l.contains("INFO") && l.contains("Lake committed.")),
        "{terminal}"
    );
    // The run's summary on stdout starts on a line of its own.
    assert!(
        terminal.lines().any(|l| l.starts_with("run ")),
        "{terminal}"
    );

    // --quiet and JSON logs: no bars, even on a terminal.
    pg.exec("UPDATE transactions SET updated_at = now() WHERE id < 4")
        .await;
    let (exit, quiet) = on_terminal(&["run", "--config", cfg, "--quiet"]);
    assert_eq!(exit, 0, "{quiet}");
    assert!(!quiet.contains("rows read"), "{quiet}");
    assert!(!quiet.contains("INFO"), "{quiet}");
    let (exit, json) = on_terminal(&["run", "--config", cfg, "--log-format", "json"]);
    assert_eq!(exit, 0, "{json}");
    assert!(!json.contains("rows read"), "{json}");
    for line in json.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    assert!(
        json.lines().any(|l| l.contains("Extract finished.")),
        "{json}"
    );

    ch_exec(&format!("DROP DATABASE IF EXISTS `{name}`")).await;
    pg.drop().await;
}
