//! Fault injection for the crash tests.
//!
//! `SLUICE_FAULT=<point>` or `SLUICE_FAULT=<point>@<n>` aborts the process (no
//! destructors, no flushing: as close to `kill -9` as a process can do to itself)
//! the n-th time (default: first) the run reaches `<point>`. Unset, a point costs one
//! relaxed atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Spec {
    point: String,
    nth: u64,
}

fn spec() -> Option<&'static Spec> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let raw = std::env::var("SLUICE_FAULT").ok()?;
        let (point, nth) = match raw.split_once('@') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (raw, 1),
        };
        Some(Spec { point, nth })
    })
    .as_ref()
}

/// Marks a place where a crash must not lose or duplicate anything.
pub fn point(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    if let Some(spec) = spec() {
        if spec.point == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == spec.nth {
            eprintln!("fault injected at {name}");
            std::process::abort();
        }
    }
}
