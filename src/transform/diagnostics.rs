//! What a failing model tells its author: the model's file and line for SQL
//! errors and unknown names, and the partition column's problems.

use arrow::datatypes::{DataType, Schema};
use datafusion::error::DataFusionError;

use super::project::{last_line, line_in_message, line_of, Model};
use super::ModelError;
use crate::error::{Error, Result};

/// A check that cannot run on this model (e.g. a column it does not have).
pub(super) fn check_error(model: &Model, message: String) -> Error {
    ModelError::Sql {
        model: model.name.clone(),
        file: model.file.clone(),
        line: None,
        message: format!(
            "a check could not run (see [models.model.{}.checks]): {message}",
            model.name
        ),
    }
    .into()
}

pub(super) fn check_partition_column(model: &Model, schema: &Schema, column: &str) -> Result<()> {
    let field = schema
        .field_with_name(column)
        .map_err(|_| ModelError::Sql {
            model: model.name.clone(),
            file: model.file.clone(),
            line: None,
            message: format!(
                "partition_by = {column:?} is not a column of the model ({})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    if !matches!(
        field.data_type(),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
    ) {
        return Err(ModelError::Sql {
            model: model.name.clone(),
            file: model.file.clone(),
            line: None,
            message: format!(
                "partition_by = {column:?} is {}, not a date or timestamp",
                field.data_type()
            ),
        }
        .into());
    }
    Ok(())
}

/// A DataFusion error in a model, with the line it points at: from the error's
/// diagnostic span, the parser's `Line: N`, or the first line naming what it
/// could not find.
pub(super) fn sql_error(model: &Model, sql: &str, e: &DataFusionError) -> Error {
    let message = crate::error::redact(&e.to_string());
    let line = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|s| s.start.line)
        .filter(|l| *l > 0)
        .or_else(|| line_in_message(&message))
        .or_else(|| missing_name(&message).and_then(|n| line_of(sql, &n)))
        .or_else(|| message.contains("found: EOF").then(|| last_line(sql)));
    ModelError::Sql {
        model: model.name.clone(),
        file: model.file.clone(),
        line,
        message,
    }
    .into()
}

/// The name in "No field named x", "table '…x' not found" or "Function 'f'".
pub(super) fn missing_name(message: &str) -> Option<String> {
    let clean = |s: &str| {
        s.trim_matches(|c| c == '"' || c == '\'' || c == '`')
            .rsplit('.')
            .next()
            .unwrap_or("")
            .trim_matches('"')
            .to_string()
    };
    if let Some(rest) = message.split("No field named ").nth(1) {
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ',')
            .collect();
        return Some(clean(name.trim_end_matches('.')));
    }
    for opening in ["table '", "Function '"] {
        if let Some(rest) = message.split(opening).nth(1) {
            return rest.split('\'').next().map(clean);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_are_found_in_messages() {
        assert_eq!(
            missing_name("Schema error: No field named amout. Valid fields are t.amount."),
            Some("amout".into())
        );
        assert_eq!(
            missing_name("Error during planning: table 'datafusion.public.userz' not found"),
            Some("userz".into())
        );
    }
}
