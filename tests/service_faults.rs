//! Service faults and secrets, against a private S3 server (s3s-fs) this test starts
//! and stops itself, so the shared one is never disturbed.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const S3_KEY: &str = "faultaccess";

/// A private s3s-fs server on its own port and folder.
struct PrivateS3 {
    port: u16,
    root: PathBuf,
    secret: String,
    child: Option<Child>,
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_S3S_FS") {
        return path.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let installed = Path::new(&home).join(".cache/sluice-tools/bin/s3s-fs");
    if installed.exists() {
        installed
    } else {
        "s3s-fs".into()
    }
}

impl PrivateS3 {
    fn start(root: &Path, secret: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(root.join("lake")).unwrap();
        let mut s3 = Self {
            port,
            root: root.to_path_buf(),
            secret: secret.to_string(),
            child: None,
        };
        s3.restart();
        s3
    }

    fn restart(&mut self) {
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", &self.secret])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs (scripts/services.sh up installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), S3_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(name: &str, pg_url: &str, ch_s3: &str, ch_password_var: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://lake/{name}"

[sources.app]
kind = "postgres"
url = "{pg_url}"

[clickhouse]
url = "{ch}"
database = "{name}"
password = "${{{ch_password_var}}}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "events"
source = "app"
source_table = "events"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
batch_rows = 1000
"#,
        ch = clickhouse_url(),
    )
}

/// Runs sluice with exactly the private S3's environment.
fn run_with(
    s3_env: &[(String, String)],
    extra: &[(&str, &str)],
    config: &Path,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["run", "--config", config.to_str().unwrap()]);
    for (k, v) in s3_env {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

async fn seed(pg: &PgDb, rows: i64) {
    pg.exec(&format!(
        "CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                              updated_at timestamptz NOT NULL, payload text);
         INSERT INTO events SELECT g, now() - (g % 5) * interval '1 day', now() - interval '1 hour',
                                   repeat(md5(g::text), 8)
         FROM generate_series(1, {rows}) g;"
    ))
    .await;
}

async fn assert_warehouse_equals_source(pg: &PgDb, db: &str) {
    let source = pg
        .lines("SELECT id::text, payload FROM events e ORDER BY e.id")
        .await;
    let warehouse = ch_lines(&format!(
        "SELECT id, payload FROM `{db}`.events ORDER BY id"
    ))
    .await;
    assert_eq!(source.len(), warehouse.len());
    assert!(source == warehouse, "ClickHouse differs from the source");
}

/// The S3 server dies while a run writes the lake: the run fails within the retry
/// bound with a one-line cause, and once S3 is back the next run completes exactly.
#[tokio::test(flavor = "multi_thread")]
async fn s3_server_dies_mid_run_then_comes_back() {
    let name = unique("s3down");
    let pg = PgDb::create(&name).await;
    seed(&pg, 60_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = PrivateS3::start(&dir.path().join("s3"), "fault-secret-123");
    let cfg = write_config(&dir, &config(&name, &pg.url, &s3.endpoint(), "CH_PASSWORD"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .envs(s3.env())
        .env("CH_PASSWORD", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first object of the table appears, then pull the plug.
    let table_dir = dir.path().join(format!("s3/lake/{name}/events"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !table_dir.exists() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s3.kill();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "the run cannot succeed without its lake:\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "bounded retries: it gave up after {:?}",
        started.elapsed()
    );
    let error = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect::<Vec<_>>();
    assert_eq!(error.len(), 1, "one error line:\n{stderr}");
    assert!(matches!(out.status.code(), Some(4) | Some(5)), "{stderr}");

    s3.restart();
    let env = s3.env();
    let cfg2 = cfg.clone();
    let out = tokio::task::spawn_blocking(move || run_with(&env, &[("CH_PASSWORD", "")], &cfg2))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_warehouse_equals_source(&pg, &name).await;
    pg.drop().await;
}

/// Distinctive passwords and keys never appear in stdout, stderr, run reports or
/// state files, in a good run nor in failing ones (a bad source password, and a
/// ClickHouse error that echoes the `s3()` call).
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leak() {
    const PG_SECRET: &str = "Pg-Secret-7f3a9c";
    const S3_SECRET: &str = "S3-Secret-b81e4d";
    const CH_SECRET: &str = "Ch-Secret-55aa21";
    let name = unique("secrets");
    let pg = PgDb::create(&name).await;
    seed(&pg, 500).await;
    pg.exec(&format!(
        "DROP ROLE IF EXISTS {name}_r; CREATE ROLE {name}_r LOGIN SUPERUSER PASSWORD '{PG_SECRET}'"
    ))
    .await;
    let pg_url = pg
        .url
        .replacen("sluice:sluice@", &format!("{name}_r:{PG_SECRET}@"), 1);
    let dir = tempfile::tempdir().unwrap();
    let s3 = PrivateS3::start(&dir.path().join("s3"), S3_SECRET);
    let mut outputs = Vec::new();

    // A good run.
    let good = write_config(&dir, &config(&name, &pg_url, &s3.endpoint(), "CH_PASSWORD"));
    let env = s3.env();
    let out = run_with(&env, &[("CH_PASSWORD", CH_SECRET)], &good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    outputs.push(out);
    // ClickHouse cannot reach the lake: its error quotes the s3() call.
    let bad_ch = dir.path().join("bad_ch.toml");
    // (A missing bucket answers at once; an unreachable host would make ClickHouse retry.)
    let wrong_bucket = format!("{}/no-such-bucket", s3.endpoint());
    std::fs::write(
        &bad_ch,
        config(&name, &pg_url, &wrong_bucket, "CH_PASSWORD"),
    )
    .unwrap();
    pg.exec("UPDATE events SET updated_at = now() WHERE id = 1")
        .await;
    let out = run_with(&env, &[("CH_PASSWORD", CH_SECRET)], &bad_ch);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    outputs.push(out);
    // A wrong source password.
    let bad_pg = dir.path().join("bad_pg.toml");
    let wrong = pg_url.replacen(PG_SECRET, "Pg-Wrong-Secret-0d0d", 1);
    std::fs::write(
        &bad_pg,
        config(&name, &wrong, &s3.endpoint(), "CH_PASSWORD"),
    )
    .unwrap();
    let out = run_with(&env, &[("CH_PASSWORD", CH_SECRET)], &bad_pg);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    outputs.push(out);

    for out in &outputs {
        for text in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(text);
            for secret in [PG_SECRET, S3_SECRET, CH_SECRET, "Pg-Wrong-Secret-0d0d"] {
                assert!(!text.contains(secret), "{secret} leaked:\n{text}");
            }
        }
    }
    let mut files = 0;
    for file in walk(&dir.path().join("s3")) {
        if file.extension().is_some_and(|e| e == "json") {
            files += 1;
            let text = std::fs::read_to_string(&file).unwrap();
            for secret in [PG_SECRET, S3_SECRET, CH_SECRET] {
                assert!(!text.contains(secret), "{secret} in {}", file.display());
            }
        }
    }
    assert!(
        files >= 4,
        "manifest and run reports were checked ({files} files)"
    );
    pg.exec(&format!("DROP OWNED BY {name}_r; DROP ROLE {name}_r"))
        .await;
    pg.drop().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The source connection is killed mid-read (`pg_terminate_backend`): the run fails
/// with a one-line source error (exit 3), commits nothing, and the next run is exact.
#[tokio::test(flavor = "multi_thread")]
async fn source_connection_dropped_mid_read() {
    let name = unique("pgdrop");
    let pg = PgDb::create(&name).await;
    seed(&pg, 300_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            r#"
[lake]
url = "s3://{bucket}/{name}"

[sources.app]
kind = "postgres"
url = "{pg}"

[clickhouse]
url = "{ch}"
database = "{name}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "events"
source = "app"
source_table = "events"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
batch_rows = 1000
"#,
            bucket = s3_bucket(),
            pg = pg.url,
            ch = clickhouse_url(),
            ch_s3 = clickhouse_s3_endpoint(),
        ),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .envs(s3_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the extract query to be running, then kill its backend. Active
    // only: connectorx's pool keeps idle connections whose last query (the
    // schema probe) names sluice_src too, and killing one of those is no fault
    // of the read.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = 0;
    while killed == 0 && Instant::now() < deadline {
        let rows = pg
            .lines(&format!(
                "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity
                 WHERE datname = '{name}' AND pid <> pg_backend_pid() AND state = 'active'
                   AND query LIKE '%sluice_src%' AND query LIKE 'COPY%'"
            ))
            .await;
        killed = rows.len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(killed > 0, "never saw the extract query");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("table events: source"), "{stderr}");
    assert!(
        s3_table_state(&name, "events").await.is_null(),
        "nothing committed"
    );
    let cfg2 = cfg.clone();
    tokio::task::spawn_blocking(move || sluice_run_ok(&cfg2))
        .await
        .unwrap();
    assert_warehouse_equals_source(&pg, &name).await;
    pg.drop().await;
}
