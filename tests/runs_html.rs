//! The `sluice runs --html` page renders in a real browser: headless Chromium
//! (Debian `chromium`, installed by scripts/test.sh; `SLUICE_CHROMIUM` names another
//! binary) loads it with the network off, and the DOM it builds has the run table
//! and one SVG bar per run and chart.

use std::path::Path;
use std::process::Command;

use sluice::report::{html, StoredRun, StoredTable};

fn chromium() -> String {
    if let Ok(path) = std::env::var("SLUICE_CHROMIUM") {
        return path;
    }
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(candidate).arg("--version").output().is_ok() {
            return candidate.to_string();
        }
    }
    panic!(
        "no Chromium found: install the Debian package (`apt-get install -y chromium`, as \
         scripts/test.sh does) or set SLUICE_CHROMIUM to a Chromium binary"
    );
}

fn browse(page: &Path, profile: &Path, extra: &[String]) -> std::process::Output {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()));
    cmd.output().expect("chromium runs")
}

fn runs() -> Vec<StoredRun> {
    // Newest first, as `sluice runs` reads them; the middle one failed.
    (0..3)
        .rev()
        .map(|i| StoredRun {
            run_id: format!("20261126T0{i}0000Z-abcdef0{i}"),
            started_at: format!("2026-11-26T0{i}:00:00+00:00"),
            finished_at: format!("2026-11-26T0{i}:00:0{}+00:00", i + 1),
            tables: ["users", "transactions"]
                .iter()
                .map(|t| StoredTable {
                    table: t.to_string(),
                    rows_changed: 100 * (i + 1),
                    seconds: 0.5 * (i + 1) as f64,
                    ..Default::default()
                })
                .collect(),
            error: (i == 1).then(|| "table users: source: connection refused".into()),
            ..Default::default()
        })
        .collect()
}

#[test]
fn runs_page_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("runs.html");
    std::fs::write(&page, html(&runs())).unwrap();

    let out = browse(&page, &dir.path().join("profile"), &["--dump-dom".into()]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium --dump-dom failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The run table: three runs, the failed one marked.
    assert_eq!(dom.matches("<tr class=\"ok\">").count(), 2, "{dom}");
    assert_eq!(dom.matches("<tr class=\"failed\">").count(), 1, "{dom}");
    // Two tables × two charts, one bar per run in each.
    assert_eq!(dom.matches("<svg").count(), 4, "{dom}");
    assert_eq!(dom.matches("<rect").count(), 12, "{dom}");
    assert!(dom.contains("transactions: rows written per run"), "{dom}");

    let png = dir.path().join("runs.png");
    let out = browse(
        &page,
        &dir.path().join("profile2"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=900,700".into(),
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000);
}
