//! A folder of SQL models: reading the files, their headers, the relations each one
//! reads, and the order to run them in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use datafusion::execution::SessionState;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;

use super::ModelError;
pub use crate::config::models::model_files;
use crate::config::models::{ModelConfig, ModelsConfig};
use crate::config::PartitionGrain;

/// One model: a `SELECT` in `<name>.sql`.
#[derive(Debug, Clone)]
pub struct Model {
    /// The file name without `.sql`; the lake table and ClickHouse table it becomes.
    pub name: String,
    pub file: PathBuf,
    pub sql: String,
    /// Settings from the file's header, overridden by the config.
    pub settings: ModelConfig,
    /// Models this one reads.
    pub models: BTreeSet<String>,
    /// Lake tables this one reads.
    pub tables: BTreeSet<String>,
}

/// Every model of a folder, in an order where each model comes after what it reads.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub models: Vec<Model>,
}

impl Project {
    /// Reads and parses the models of `config`, checks their names and orders them.
    /// `tables` are the lake tables the config extracts (model names may not clash
    /// with them); `state` parses the SQL as DataFusion will.
    pub fn load(
        config: &ModelsConfig,
        base: &Path,
        tables: &BTreeSet<String>,
        state: &SessionState,
    ) -> Result<Self, ModelError> {
        let dir = base.join(&config.path);
        let files = model_files(&dir)?;
        let names: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
        if let Some(unknown) = config.models.keys().find(|n| !names.contains(*n)) {
            return Err(ModelError::Folder {
                path: dir.clone(),
                message: format!(
                    "the config has settings for model {unknown} but there is no {unknown}.sql"
                ),
            });
        }
        let mut models = Vec::new();
        for (name, file) in files {
            let sql = std::fs::read_to_string(&file).map_err(|e| ModelError::Sql {
                model: name.clone(),
                file: file.clone(),
                line: None,
                message: format!("cannot read: {e}"),
            })?;
            let sql_error = |line: Option<u64>, message: String| ModelError::Sql {
                model: name.clone(),
                file: file.clone(),
                line,
                message,
            };
            if name.is_empty() || name.starts_with('_') || name.contains(['.', ' ']) {
                return Err(sql_error(
                    None,
                    "a model's file name must not start with '_' nor contain '.' or spaces".into(),
                ));
            }
            if tables.contains(&name) {
                return Err(sql_error(
                    None,
                    format!("a [[table]] of the config is also named {name}; rename the file"),
                ));
            }
            let mut settings = header_settings(&sql).map_err(|(line, m)| sql_error(line, m))?;
            if let Some(configured) = config.models.get(&name) {
                settings = merge(settings, configured.clone());
            }
            if settings.clickhouse_partition.is_some() && settings.partition_by.is_none() {
                return Err(sql_error(
                    None,
                    "clickhouse_partition needs partition_by: a model without it is one ClickHouse partition".to_string(),
                ));
            }
            let mut references = references(state, &sql).map_err(|(line, m)| sql_error(line, m))?;
            // What checks and validate-before-write read is read by the model too.
            references.extend(
                settings
                    .checks
                    .relationships
                    .iter()
                    .chain(&settings.drop_unmatched)
                    .map(|r| r.to.clone()),
            );
            let mut model_refs = BTreeSet::new();
            let mut table_refs = BTreeSet::new();
            for reference in references {
                if reference == name {
                    return Err(sql_error(
                        line_of(&sql, &reference),
                        format!("model {name} reads itself"),
                    ));
                }
                if names.contains(&reference) {
                    model_refs.insert(reference);
                } else {
                    table_refs.insert(reference);
                }
            }
            models.push(Model {
                name,
                file,
                sql,
                settings,
                models: model_refs,
                tables: table_refs,
            });
        }
        let models = order(models)?;
        Ok(Self { dir, models })
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Settings from `-- sluice: name = value` lines at the top of a model.
fn header_settings(sql: &str) -> Result<ModelConfig, (Option<u64>, String)> {
    let mut settings = ModelConfig::default();
    for (i, line) in sql.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break; // the header ends at the first line of SQL
        };
        let Some(setting) = comment.trim().strip_prefix("sluice:") else {
            continue;
        };
        let line_no = Some(i as u64 + 1);
        let (key, value) = setting.split_once('=').ok_or_else(|| {
            (
                line_no,
                "a `-- sluice:` header is `name = value`".to_string(),
            )
        })?;
        let value = value.trim();
        match key.trim() {
            "partition_by" => settings.partition_by = Some(value.to_string()),
            "key" => {
                settings.key = Some(
                    value
                        .split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect(),
                )
            }
            "clickhouse_partition" => {
                settings.clickhouse_partition = Some(match value {
                    "day" => PartitionGrain::Day,
                    "month" => PartitionGrain::Month,
                    other => {
                        return Err((
                            line_no,
                            format!("clickhouse_partition is \"day\" or \"month\", not {other:?}"),
                        ))
                    }
                })
            }
            other => {
                return Err((
                    line_no,
                    format!(
                        "unknown header setting {other:?} (known: partition_by, key, clickhouse_partition)"
                    ),
                ))
            }
        }
    }
    Ok(settings)
}

/// The config's settings over the header's.
fn merge(header: ModelConfig, configured: ModelConfig) -> ModelConfig {
    ModelConfig {
        partition_by: configured.partition_by.or(header.partition_by),
        key: configured.key.or(header.key),
        clickhouse_partition: configured
            .clickhouse_partition
            .or(header.clickhouse_partition),
        ..configured
    }
}

/// The relations a model reads (CTE names excluded), as they will be looked up.
fn references(state: &SessionState, sql: &str) -> Result<Vec<String>, (Option<u64>, String)> {
    let dialect = state.config_options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(|e| {
        let message = e.to_string();
        let line = line_in_message(&message)
            .or_else(|| message.contains("found: EOF").then(|| last_line(sql)));
        (line, message)
    })?;
    let is_query =
        matches!(&statement, DFStatement::Statement(s) if matches!(**s, Statement::Query(_)));
    if !is_query {
        return Err((None, "a model is one SELECT (or WITH … SELECT)".into()));
    }
    let references = state
        .resolve_table_references(&statement)
        .map_err(|e| (None, e.to_string()))?;
    let mut names = Vec::new();
    for reference in references {
        let default_schema = reference.schema().is_none_or(|s| s == "public");
        if !default_schema {
            return Err((
                line_of(sql, reference.table()),
                format!("{reference}: models read lake tables and models by bare name"),
            ));
        }
        names.push(reference.table().to_string());
    }
    Ok(names)
}

/// Orders models so that each comes after the models it reads (ties by name).
fn order(models: Vec<Model>) -> Result<Vec<Model>, ModelError> {
    let mut pending: BTreeMap<String, Model> =
        models.into_iter().map(|m| (m.name.clone(), m)).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::new();
    while !pending.is_empty() {
        let ready: Vec<String> = pending
            .values()
            .filter(|m| m.models.iter().all(|d| done.contains(d)))
            .map(|m| m.name.clone())
            .collect();
        if ready.is_empty() {
            return Err(ModelError::Cycle {
                files: cycle(&pending),
            });
        }
        for name in ready {
            let model = pending.remove(&name).expect("listed above");
            done.insert(name);
            ordered.push(model);
        }
    }
    Ok(ordered)
}

/// One cycle among models that could not be ordered, as their files.
fn cycle(pending: &BTreeMap<String, Model>) -> Vec<PathBuf> {
    // Every pending model reads another pending one; walk until a model repeats.
    let mut path: Vec<&str> = Vec::new();
    let mut current = pending.keys().next().expect("not empty").as_str();
    loop {
        if let Some(start) = path.iter().position(|n| *n == current) {
            let mut files: Vec<PathBuf> = path[start..]
                .iter()
                .map(|n| pending[*n].file.clone())
                .collect();
            files.push(pending[current].file.clone());
            return files;
        }
        path.push(current);
        current = pending[current]
            .models
            .iter()
            .find(|d| pending.contains_key(*d))
            .expect("a pending model reads a pending model")
            .as_str();
    }
}

/// The last line holding SQL (where a parser that hit the end points).
pub(crate) fn last_line(sql: &str) -> u64 {
    sql.lines()
        .enumerate()
        .filter(|(_, l)| {
            let code = l.split("--").next().unwrap_or("").trim();
            !code.is_empty()
        })
        .map(|(i, _)| i as u64 + 1)
        .last()
        .unwrap_or(1)
}

/// The line of `Line: N` in a parser message.
pub(crate) fn line_in_message(message: &str) -> Option<u64> {
    let rest = &message[message.find("Line: ")? + "Line: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The first line (1-based) where `word` appears as a whole word outside `--`
/// comments, case-insensitively.
pub(crate) fn line_of(sql: &str, word: &str) -> Option<u64> {
    let word = word.to_ascii_lowercase();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (i, line) in sql.lines().enumerate() {
        let code = line.split("--").next().unwrap_or("").to_ascii_lowercase();
        let mut from = 0;
        while let Some(pos) = code[from..].find(&word) {
            let start = from + pos;
            let end = start + word.len();
            let before = code[..start].chars().next_back();
            let after = code[end..].chars().next();
            if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
                return Some(i as u64 + 1);
            }
            from = end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_settings_are_read_until_the_sql() {
        let s = header_settings(
            "-- Sales.\n-- sluice: partition_by = day\n-- sluice: key = a, b\nSELECT 1\n-- sluice: key = c",
        )
        .unwrap();
        assert_eq!(s.partition_by.as_deref(), Some("day"));
        assert_eq!(s.key, Some(vec!["a".to_string(), "b".to_string()]));
        let err = header_settings("-- sluice: partition = x\nSELECT 1").unwrap_err();
        assert_eq!(err.0, Some(1));
    }

    #[test]
    fn finds_lines() {
        let sql = "SELECT a -- users here\nFROM users_x u\nJOIN users ON 1=1";
        assert_eq!(line_of(sql, "users"), Some(3));
        assert_eq!(
            line_in_message(
                "sql parser error: Expected: end of statement, found: x at Line: 4, Column: 2"
            ),
            Some(4)
        );
    }
}
