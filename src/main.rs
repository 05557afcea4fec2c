//! The `sluice` command line: parses arguments, calls the library, maps errors to
//! exit codes (see README.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::error::redact;
use sluice::{Config, Error, RunOptions};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Nightly lakehouse ETL: databases → Parquet lake → ClickHouse"
)]
struct Cli {
    /// Only warnings and errors on stderr, and no progress bars (shown otherwise
    /// when stderr is a terminal and logs are text).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Log lines on stderr as text, or as one JSON object per line (log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: extract what changed, commit it to the lake, load ClickHouse.
    Run {
        /// The pipeline file.
        #[arg(long, short)]
        config: PathBuf,
        /// Run only this table (repeatable).
        #[arg(long = "table", short)]
        tables: Vec<String>,
        /// Rebuild a table from a full reload when its source columns changed in a
        /// way the lake cannot follow (a dropped column, a narrower or other type).
        #[arg(long)]
        allow_schema_change: bool,
        /// Reset the `--table` tables first (as `sluice state reset`), so they are
        /// reloaded from the source in full.
        #[arg(long, requires = "tables", conflicts_with = "dry_run")]
        full_refresh: bool,
        /// Print, per table, the query that would run, its watermark range and the
        /// committed partitions; write, lock and load nothing. With --since, also
        /// read the range's rows and list the days a backfill would replace.
        #[arg(long)]
        dry_run: bool,
        /// Tables run at the same time (each has its own lock and commits; the
        /// summary keeps the config's order). After a failure no further table
        /// starts.
        #[arg(long, short = 'j', default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
        /// Backfill: read again the `--table` rows whose cursor falls on the days
        /// from --since to --until (UTC, both included) and merge them into their
        /// partitions and ClickHouse; the watermark does not move.
        #[arg(
            long,
            value_name = "YYYY-MM-DD",
            requires_all = ["until", "tables"],
            conflicts_with_all = ["full_refresh", "allow_schema_change"]
        )]
        since: Option<chrono::NaiveDate>,
        /// Last day of the backfill (included).
        #[arg(long, value_name = "YYYY-MM-DD", requires = "since")]
        until: Option<chrono::NaiveDate>,
    },
    /// List recent runs from the lake's run reports, newest first, or show one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Runs {
        /// The pipeline file.
        #[arg(long, short, required = true)]
        config: Option<PathBuf>,
        /// How many runs to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Also write a static HTML page of these runs (rows and seconds per table).
        #[arg(long)]
        html: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<RunsCommand>,
    },
    /// Run SQL over the lake's committed files (each table also has a
    /// `<partition column>_day` date column; filters on it read only those days).
    Query {
        /// The pipeline file.
        #[arg(long, short)]
        config: PathBuf,
        /// How to print the result (json: one object per line).
        #[arg(long, value_enum, default_value_t)]
        format: sluice::query::OutputFormat,
        /// Write the result to this file instead of stdout (required for parquet).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Read the tables as they were: on a day (YYYY-MM-DD), at a Delta
        /// version (42) or at an instant (2026-11-21T08:00:00Z).
        #[arg(long, value_name = "DAY|VERSION|TIME")]
        as_of: Option<sluice::query::as_of::AsOf>,
        /// One SQL statement, e.g. "SELECT count(*) FROM transactions".
        sql: String,
    },
    /// An interactive SQL prompt over the lake, as `sluice query` sees it
    /// (statements end with `;`; `\d`, `\d TABLE`, `\q`).
    Shell {
        /// The pipeline file.
        #[arg(long, short)]
        config: PathBuf,
        /// Read the tables as they were: on a day (YYYY-MM-DD), at a Delta
        /// version (42) or at an instant (2026-11-21T08:00:00Z).
        #[arg(long, value_name = "DAY|VERSION|TIME")]
        as_of: Option<sluice::query::as_of::AsOf>,
    },
    /// Run only the SQL models of the config's `[models]` section over the lake
    /// (`sluice run` runs them after the tables).
    Models {
        /// The pipeline file.
        #[arg(long, short)]
        config: PathBuf,
        /// Run only this model (repeatable); the models it reads must be in the lake.
        #[arg(long = "model", short)]
        models: Vec<String>,
    },
    /// The embedded quick start: writes an e-wallet SQLite database, runs the
    /// pipeline into a local-folder lake and prints two reports. No services needed.
    /// `demo generate` / `demo simulate` fill the fintech sources on the services.
    #[command(args_conflicts_with_subcommands = true)]
    Demo {
        /// Folder for the database, the config and the lake (rebuilt each time).
        #[arg(long, default_value = ".sluice-demo")]
        dir: PathBuf,
        /// 1.0 = 2,000 users, 200 merchants, 50,000 transactions.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Generator seed: the same seed gives the same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[command(subcommand)]
        command: Option<DemoCommand>,
    },
    /// Show the committed state of every table (watermark, partitions, rows), or
    /// start one over.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Create the reference fintech data set (examples/fintech_sources.toml):
    /// MongoDB users, PostgreSQL savings_plan / savings_transaction, MySQL e-wallet
    /// users / merchants / transactions. Drops and recreates those tables.
    Generate {
        /// 1.0 = 150K users, ~150K plans, ~3M savings transactions, 500K e-wallet
        /// transactions.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Generator seed: the same seed gives the same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[command(flatten)]
        services: DemoServices,
    },
    /// Change the generated sources once: insert, update and delete users, plans
    /// and transactions, and print what changed (table, operation, count, ids).
    Simulate {
        /// 1.0 = e.g. 500 new users, 1,000 updated, 100 deleted (see the output).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Seed, mixed with the current table sizes: each call changes other rows.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[command(flatten)]
        services: DemoServices,
    },
}

/// The services of `sluice demo generate` / `simulate` (scripts/services.sh's).
#[derive(clap::Args)]
struct DemoServices {
    /// PostgreSQL database for savings_plan and savings_transaction.
    #[arg(long, env = "SLUICE_DEMO_PG_URL", default_value = sluice::demo_data::DEFAULT_POSTGRES, hide_env_values = true)]
    postgres_url: String,
    /// MySQL/MariaDB database for the e-wallet tables.
    #[arg(long, env = "SLUICE_DEMO_MYSQL_URL", default_value = sluice::demo_data::DEFAULT_MYSQL, hide_env_values = true)]
    mysql_url: String,
    /// MongoDB for the users collection (the path names the database).
    #[arg(long, env = "SLUICE_DEMO_MONGO_URL", default_value = sluice::demo_data::DEFAULT_MONGODB, hide_env_values = true)]
    mongo_url: String,
}

impl DemoServices {
    fn into_services(self) -> sluice::demo_data::Services {
        sluice::demo_data::Services {
            postgres: self.postgres_url,
            mysql: self.mysql_url,
            mongodb: self.mongo_url,
        }
    }
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print each table's manifest summary.
    Show {
        /// The pipeline file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Convert the lake tables still in the format before Delta (`_manifest.json`)
    /// into Delta tables now, without a run (a table's next run would).
    Upgrade {
        /// The pipeline file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a table over: empty its manifest and delete its files, so the next
    /// run reloads it from the source (asks first on a terminal).
    Reset {
        /// The pipeline file.
        #[arg(long, short)]
        config: PathBuf,
        /// The table to reset.
        #[arg(long, short)]
        table: String,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Print one run's report.
    Show {
        /// The pipeline file.
        #[arg(long, short)]
        config: PathBuf,
        /// The run id (or a prefix matching one run).
        id: String,
        /// The stored JSON report as it is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// mimalloc, as datafusion-cli uses. `sluice models` of the fintech demo at scale
/// 1.0: glibc malloc 39.2 s, 766 MiB peak RSS, 27.4 CPU s; mimalloc 33.8 s,
/// 711–723 MiB, 20.4–21.3 CPU s (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.log_format);
    // Panics inside connectorx's reader threads are turned into errors; keep their
    // messages (which may quote driver errors) out of stderr except when debugging.
    std::panic::set_hook(Box::new(|info| {
        tracing::debug!(panic = %redact(&info.to_string()), "Thread panicked.");
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", redact(&e.to_string()));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn dispatch(command: Command) -> Result<(), Error> {
    match command {
        Command::Run {
            config,
            tables,
            allow_schema_change,
            full_refresh,
            dry_run,
            jobs,
            since,
            until,
        } => {
            let backfill = match (since, until) {
                (Some(since), Some(until)) => {
                    Some(sluice::capture::backfill::Backfill::new(since, until)?)
                }
                _ => None,
            };
            let (config, base) = Config::load(&config)?;
            if dry_run {
                let lake = sluice::lake::Lake::open(&config.lake, &base)?;
                let (text, failure) =
                    sluice::state::dry_run(&config, &base, &lake, &tables, backfill.as_ref())
                        .await?;
                print!("{}", redact(&text));
                return failure.map_or(Ok(()), Err);
            }
            if full_refresh {
                let lake = sluice::lake::Lake::open(&config.lake, &base)?;
                let id = format!("full-refresh-{}", std::process::id());
                for table in &tables {
                    let plan = sluice::state::reset(&config, &lake, table, &id).await?;
                    eprintln!("reset {plan}");
                }
            }
            let options = RunOptions {
                tables,
                allow_schema_change,
                backfill,
                jobs: jobs.into(),
            };
            let report = sluice::run(&config, &base, &options).await?;
            print!("{}", redact(&summary(&report)));
            Ok(())
        }
        Command::Query {
            config,
            format,
            output,
            as_of,
            sql,
        } => {
            let (config, base) = Config::load(&config)?;
            let options = sluice::query::QueryOptions { format, output };
            let out = std::io::stdout().lock();
            sluice::query::query_as_of(&config, &base, &sql, &options, as_of, out).await?;
            Ok(())
        }
        Command::Shell { config, as_of } => {
            use std::io::IsTerminal;
            let (config, base) = Config::load(&config)?;
            let stdin = std::io::stdin();
            let options = sluice::query::shell::ShellOptions {
                as_of,
                interactive: stdin.is_terminal(),
            };
            let (out, err) = (std::io::stdout(), std::io::stderr());
            sluice::query::shell::shell(&config, &base, &options, stdin.lock(), out, err).await
        }
        Command::Demo {
            dir,
            scale,
            seed,
            command: None,
        } => {
            let options = sluice::demo::DemoOptions { dir, scale, seed };
            sluice::demo::run(&options, std::io::stdout().lock()).await?;
            Ok(())
        }
        Command::Demo {
            command:
                Some(DemoCommand::Generate {
                    scale,
                    seed,
                    services,
                }),
            ..
        } => {
            let services = services.into_services();
            sluice::demo_data::generate(&services, scale, seed, std::io::stdout()).await?;
            Ok(())
        }
        Command::Demo {
            command:
                Some(DemoCommand::Simulate {
                    scale,
                    seed,
                    services,
                }),
            ..
        } => {
            let services = services.into_services();
            sluice::demo_data::simulate(&services, scale, seed, std::io::stdout()).await?;
            Ok(())
        }
        Command::Models { config, models } => {
            let (config, base) = Config::load(&config)?;
            let options = sluice::transform::ModelsOptions { models };
            let reports = sluice::transform::run_models(&config, &base, &options).await?;
            print!("{}", redact(&models_summary(&reports)));
            Ok(())
        }
        Command::State {
            command: StateCommand::Show { config },
        } => {
            let (config, base) = Config::load(&config)?;
            let lake = sluice::lake::Lake::open(&config.lake, &base)?;
            print!("{}", redact(&sluice::state::show(&config, &lake).await?));
            Ok(())
        }
        Command::State {
            command: StateCommand::Upgrade { config },
        } => {
            let (config, base) = Config::load(&config)?;
            let lake = sluice::lake::Lake::open(&config.lake, &base)?;
            let id = format!("state-upgrade-{}", std::process::id());
            let converted = sluice::state::upgrade(&config, &base, &lake, &id).await?;
            if converted.is_empty() {
                println!("every lake table is a Delta table already");
            } else {
                println!("converted to Delta: {}", converted.join(", "));
            }
            Ok(())
        }
        Command::State {
            command: StateCommand::Reset { config, table, yes },
        } => {
            let (config, base) = Config::load(&config)?;
            let lake = sluice::lake::Lake::open(&config.lake, &base)?;
            let plan = sluice::state::reset_plan(&config, &lake, &table).await?;
            if !yes {
                confirm_reset(&plan)?;
            }
            let id = format!("state-reset-{}", std::process::id());
            let plan = sluice::state::reset(&config, &lake, &table, &id).await?;
            println!("reset {plan}; the next run reloads it from the source");
            Ok(())
        }
        Command::Runs {
            config,
            limit,
            html,
            command: None,
        } => {
            let config = config.expect("required by clap");
            let (config, base) = Config::load(&config)?;
            let lake = sluice::lake::Lake::open(&config.lake, &base)?;
            let runs = sluice::report::recent(&lake, limit).await?;
            if let Some(path) = html {
                std::fs::write(&path, redact(&sluice::report::html(&runs)))
                    .map_err(|e| Error::Query(format!("cannot write {}: {e}", path.display())))?;
            }
            print!("{}", redact(&sluice::report::format_list(&runs)));
            Ok(())
        }
        Command::Runs {
            command: Some(RunsCommand::Show { config, id, json }),
            ..
        } => {
            let (config, base) = Config::load(&config)?;
            let lake = sluice::lake::Lake::open(&config.lake, &base)?;
            let text = if json {
                let (_, value) = sluice::report::read_raw(&lake, &id).await?;
                serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
            } else {
                sluice::report::format_run(&sluice::report::read(&lake, &id).await?)
            };
            print!("{}", redact(&text));
            Ok(())
        }
    }
}

fn summary(report: &sluice::RunReport) -> String {
    let mut out = format!("run {}\n", report.run_id);
    if let Some(b) = &report.backfill {
        out.push_str(&format!(
            "backfill of the cursor's days {} … {}: watermarks kept\n",
            b.since, b.until
        ));
    }
    out.push_str(&format!(
        "{:<24} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8}  watermark\n",
        "table", "read", "changed", "skipped", "parts", "loaded", "seconds"
    ));
    for t in &report.tables {
        out.push_str(&format!(
            "{:<24} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8.2}  {}\n",
            t.table,
            t.rows_read,
            t.rows_changed,
            t.rows_skipped,
            t.partitions_written.len(),
            t.rows_loaded,
            t.seconds,
            t.watermark_after.as_deref().unwrap_or("-")
        ));
        if !t.partitions_written.is_empty() || t.watermark_before != t.watermark_after {
            out.push_str(&format!(
                "  partitions {}; {} written; watermark {} -> {}\n",
                sluice::report::days_text(&t.partitions_written),
                sluice::report::bytes_text(t.bytes_written),
                t.watermark_before.as_deref().unwrap_or("-"),
                t.watermark_after.as_deref().unwrap_or("-")
            ));
        }
        if t.rows_deleted > 0 {
            out.push_str(&format!(
                "  deletes: {} row(s) the source no longer has, removed\n",
                t.rows_deleted
            ));
        }
        for w in &t.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
    }
    if !report.models.is_empty() {
        out.push_str(&models_summary(&report.models));
    }
    out
}

fn models_summary(models: &[sluice::transform::ModelReport]) -> String {
    let mut out = format!(
        "{:<28} {:>10} {:>10} {:>8} {:>10} {:>7} {:>8} {:>7} {:>7} {:>7}\n",
        "model", "status", "rows", "dropped", "loaded", "checks", "seconds", "build", "check", "CH"
    );
    for m in models {
        out.push_str(&format!(
            "{:<28} {:>10} {:>10} {:>8} {:>10} {:>7} {:>8.2} {:>7.2} {:>7.2} {:>7.2}\n",
            m.model,
            format!("{:?}", m.status).to_lowercase(),
            m.rows,
            m.rows_dropped,
            m.rows_loaded,
            m.checks.len(),
            m.seconds,
            m.stages.build,
            m.stages.checks,
            m.stages.warehouse,
        ));
    }
    out
}

/// Asks on the terminal before `state reset`; without a terminal, `--yes` is needed.
fn confirm_reset(plan: &sluice::state::ResetPlan) -> Result<(), Error> {
    use std::io::{BufRead, IsTerminal, Write};
    let refuse = |why: &str| {
        Err(Error::Config(sluice::error::ConfigError::Argument(
            format!("not resetting table {}: {why}", plan.table),
        )))
    };
    if !std::io::stdin().is_terminal() {
        return refuse("stdin is not a terminal; pass --yes to confirm");
    }
    eprint!(
        "This deletes {plan} and its watermark; the next run reloads it from the source.\nType the table name to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim() == plan.table {
        Ok(())
    } else {
        refuse("not confirmed")
    }
}

fn init_logging(quiet: bool, format: LogFormat) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("sluice={default},warn")));
    // Progress bars only for a person at a terminal: not with --quiet, not with JSON
    // logs, not when stderr is a pipe or a file. Log lines then go through the bars.
    let bars = match format {
        LogFormat::Text if !quiet => sluice::progress::enable(),
        _ => None,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sluice::progress::LogWriter::new(bars))
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object per line: timestamp, level, fields (message included) and
        // the spans (the table being run).
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
