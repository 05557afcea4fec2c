//! Progress of a run on a terminal: one bar per table and stage (rows read and
//! bytes written while extracting, days merged, partitions loaded into ClickHouse,
//! each with its rate), drawn by `indicatif` on stderr.
//!
//! The bars are off unless the command line turns them on with [`enable`], which
//! `sluice` does only when stderr is a terminal, without `--quiet` and with text
//! logs. Off, every hook is a no-op, and the run's log lines are the progress.
//! On, log lines go through [`LogWriter`], which lifts the bars while a line is
//! written, so lines never tear a bar.
//!
//! Run code calls thin hooks on a [`TableProgress`]: [`TableProgress::stage`],
//! [`TableProgress::rows_read`], [`TableProgress::bytes_written`],
//! [`TableProgress::partition_loaded`], [`TableProgress::finish`].

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanCount, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Turns the progress bars on, if stderr is a terminal (and `TERM` is not
/// `dumb`). Returns the bars, which the log writer must go through
/// ([`LogWriter::new`]); `None` when they stay off.
pub fn enable() -> Option<MultiProgress> {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    if multi.is_hidden() {
        return None;
    }
    Some(BARS.get_or_init(|| multi).clone())
}

/// A `tracing_subscriber` writer for stderr that suspends the progress bars (if
/// any) while it writes, so a log line is printed above them, whole.
#[derive(Clone, Default)]
pub struct LogWriter(Option<MultiProgress>);

impl LogWriter {
    pub fn new(bars: Option<MultiProgress>) -> Self {
        Self(bars)
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(bars) => bars.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // One log line is one `write_all`: keep it in one suspension.
        match &self.0 {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A stage of one table's run, each with its own bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the source and writing the new rows as Parquet.
    Extract,
    /// Rewriting days that already had files (copy-on-write merge by key).
    Merge,
    /// Loading days into ClickHouse.
    Load,
    /// A MongoDB snapshot (counts are in the log and the run report).
    Snapshot,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Extract => "extract",
            Stage::Merge => "merge",
            Stage::Load => "load",
            Stage::Snapshot => "snapshot",
        }
    }

    fn template(self) -> &'static str {
        match self {
            Stage::Extract => {
                "{prefix:.bold} {spinner} {human_pos} rows read ({per_sec:0}), {msg} [{elapsed}]"
            }
            Stage::Merge => "{prefix:.bold} [{bar:20}] {pos}/{len} days merged, {msg} [{elapsed}]",
            Stage::Load => {
                "{prefix:.bold} [{bar:20}] {pos}/{len} partitions loaded ({per_sec:0}) {msg} [{elapsed}]"
            }
            Stage::Snapshot => "{prefix:.bold} {spinner} {msg} [{elapsed}]",
        }
    }
}

/// The bars of one table. Every method is a no-op when progress is off.
pub struct TableProgress {
    table: String,
    current: Mutex<Option<StageBar>>,
}

struct StageBar {
    stage: Stage,
    bar: ProgressBar,
    started: Instant,
    bytes: u64,
}

impl StageBar {
    fn bytes_message(&self) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{} written ({}/s)",
            HumanBytes(self.bytes),
            HumanBytes((self.bytes as f64 / seconds) as u64)
        )
    }

    /// Replaces the bar by a permanent line above the remaining bars, so that
    /// nothing is left half-drawn when the run prints its summary.
    fn close(self, table: &str, outcome: &str) {
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = |n: u64| HumanCount((n as f64 / seconds.max(1e-3)) as u64);
        let done = self.bar.position();
        let total = self.bar.length().unwrap_or(done);
        let what = match self.stage {
            Stage::Extract => format!(
                "{} rows read ({}/s), {}",
                HumanCount(done),
                rate(done),
                self.bytes_message()
            ),
            Stage::Merge => format!("{done}/{total} days merged, {}", self.bytes_message()),
            Stage::Load => format!("{done}/{total} partitions loaded ({}/s)", rate(done)),
            Stage::Snapshot => "snapshot taken".into(),
        };
        // Cleared first, so that the line is not followed by a last drawing of it.
        self.bar.finish_and_clear();
        if let Some(bars) = BARS.get() {
            bars.remove(&self.bar);
            // Written like a log line (whole, ending with a newline, bars lifted),
            // where `MultiProgress::println` leaves the cursor at its end.
            let line = format!(
                "{table} {}: {what}; {outcome} in {seconds:.1} s\n",
                self.stage.name()
            );
            let _ = LogWriter::new(Some(bars.clone())).write_all(line.as_bytes());
        }
    }
}

/// The progress of `table`'s run: no bars at all unless [`enable`] turned them on.
pub fn table(table: &str) -> TableProgress {
    TableProgress {
        table: table.to_string(),
        current: Mutex::new(None),
    }
}

impl TableProgress {
    fn with_bar(&self, f: impl FnOnce(&mut StageBar)) {
        if BARS.get().is_none() {
            return;
        }
        if let Ok(mut current) = self.current.lock() {
            if let Some(bar) = current.as_mut() {
                f(bar);
            }
        }
    }

    /// Starts `stage` (the previous stage's bar becomes a line of its own); `total`
    /// is the number of days to merge or partitions to load, when known.
    pub fn stage(&self, stage: Stage, total: Option<u64>) {
        let Some(bars) = BARS.get() else { return };
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if let Some(done) = current.take() {
            done.close(&self.table, "done");
        }
        let style = ProgressStyle::with_template(stage.template())
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .progress_chars("=> ");
        let bar = match total {
            Some(len) => ProgressBar::new(len),
            None => ProgressBar::new_spinner(),
        }
        .with_style(style)
        .with_prefix(format!("{} {}", self.table, stage.name()));
        let bar = bars.add(bar);
        if stage == Stage::Snapshot {
            bar.set_message("reading the collection");
        } else if stage != Stage::Load {
            bar.set_message(format!("{} written", HumanBytes(0)));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        *current = Some(StageBar {
            stage,
            bar,
            started: Instant::now(),
            bytes: 0,
        });
    }

    /// `n` more rows came from the source.
    pub fn rows_read(&self, n: u64) {
        self.with_bar(|s| {
            if s.stage == Stage::Extract {
                s.bar.inc(n);
            }
        });
    }

    /// `n` more bytes of Parquet were written.
    pub fn bytes_written(&self, n: u64) {
        self.with_bar(|s| {
            s.bytes += n;
            let message = s.bytes_message();
            s.bar.set_message(message);
        });
    }

    /// One more day was merged (the merge stage's unit).
    pub fn day_merged(&self) {
        self.with_bar(|s| {
            if s.stage == Stage::Merge {
                s.bar.inc(1);
            }
        });
    }

    /// The ClickHouse partition of `day` was replaced.
    pub fn partition_loaded(&self, day: &str) {
        self.with_bar(|s| {
            if s.stage == Stage::Load {
                s.bar.inc(1);
                s.bar.set_message(format!("(last {day})"));
            }
        });
    }

    /// The table is done: its last bar becomes a line of its own.
    pub fn finish(&self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some(done) = current.take() {
                done.close(&self.table, "done");
            }
        }
    }
}

impl Drop for TableProgress {
    /// A table that stopped on an error leaves its bar where it stopped.
    fn drop(&mut self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some(stopped) = current.take() {
                stopped.close(&self.table, "stopped");
            }
        }
    }
}
