//! Source column types, read from the source's catalog before any data moves.
//!
//! connectorx maps every PostgreSQL `numeric` and MySQL `DECIMAL` through
//! `rust_decimal` (28 significant digits at most) into `Decimal128(38, 10)`: a
//! `NUMERIC(38,10)` holding 38 digits fails, a scale above 10 is rounded, and the
//! column's real precision and scale are lost. It also re-serialises JSON through
//! `serde_json` (big numbers become floats) and cannot hold MySQL `TIME` values
//! beyond 24 hours. So for a `source_table`, sluice reads the column types from
//! `information_schema` and generates a typed `SELECT`: such columns are cast to
//! text at the source and parsed back here into exact Arrow types. A column type
//! sluice cannot carry is an error at plan time that names the column and a cast.
//!
//! MySQL `TIMESTAMP` columns are instants: the reader sets the session time zone to
//! UTC (see [`super::sql`]), and their Arrow type is labelled `+00:00` here.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, Decimal256Array};
use arrow::compute::cast;
use arrow::datatypes::{i256, DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};

use super::sql::Dialect;
use super::BatchStream;
use crate::config::SourceKind;
use crate::error::{Error, Result};

/// Largest precision Arrow (`Decimal256`) and ClickHouse (`Decimal256`) hold.
const MAX_DECIMAL_PRECISION: u32 = 76;

/// Precision and scale for a PostgreSQL `numeric` declared without them: values
/// that do not fit exactly are an error naming the column, never rounded.
const UNCONSTRAINED_NUMERIC: (u8, i8) = (38, 10);

/// How one source column travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carry {
    /// connectorx reads it exactly.
    AsIs,
    /// Cast to text at the source, parsed into `Decimal128/256(precision, scale)`.
    Decimal { precision: u8, scale: i8 },
    /// Cast to text at the source, kept as text.
    Text,
    /// A naive timestamp that is really a UTC instant (MySQL `TIMESTAMP`).
    UtcTimestamp,
}

/// One column as the source's catalog describes it.
#[derive(Debug, Clone, Default)]
pub struct SourceColumn {
    pub name: String,
    /// `information_schema.columns.data_type` (`numeric`, `ARRAY`, `USER-DEFINED`…).
    pub data_type: String,
    /// PostgreSQL `udt_name` (`int4`, `_text`, an enum's name); MySQL `COLUMN_TYPE`.
    pub udt: String,
    pub precision: Option<i64>,
    pub scale: Option<i64>,
    /// PostgreSQL `pg_type.typtype` (`e` for an enum).
    pub type_kind: String,
}

/// The typed `SELECT` of a source table and what to do with its columns.
#[derive(Debug, Clone)]
pub struct TypedSelect {
    pub sql: String,
    columns: Vec<(String, Carry)>,
}

/// Reads the column types of `source_table` and plans how each one is carried.
pub async fn plan(
    table: &str,
    kind: SourceKind,
    url: &str,
    source_table: &str,
) -> Result<TypedSelect> {
    let dialect = Dialect::from(kind);
    let (schema, name) = match source_table.rsplit_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, source_table),
    };
    let catalog = match kind {
        SourceKind::Postgres => postgres_catalog_query(dialect, schema, name),
        SourceKind::Mysql => mysql_catalog_query(dialect, schema, name),
        // SQLite has no catalog of declared types worth reading: as connectorx maps it.
        _ => {
            return Ok(TypedSelect {
                sql: format!("SELECT * FROM {}", dialect.table(source_table)),
                columns: Vec::new(),
            })
        }
    };
    let columns = read_catalog(table, url, catalog).await?;
    if columns.is_empty() {
        return Err(Error::source(
            table,
            format!(
                "source table {source_table:?} does not exist or has no columns this user can see"
            ),
        ));
    }
    typed_select(table, kind, source_table, &columns)
}

/// Builds the `SELECT` for `columns` of `source_table`, or the plan-time error of
/// the first column sluice cannot carry.
pub fn typed_select(
    table: &str,
    kind: SourceKind,
    source_table: &str,
    columns: &[SourceColumn],
) -> Result<TypedSelect> {
    let dialect = Dialect::from(kind);
    let mut select = Vec::with_capacity(columns.len());
    let mut carried = Vec::with_capacity(columns.len());
    for column in columns {
        let carry = match kind {
            SourceKind::Postgres => postgres_carry(column),
            _ => mysql_carry(column),
        }
        .map_err(|reason| Error::source(table, format!("column {:?} {reason}", column.name)))?;
        let ident = dialect.ident(&column.name);
        select.push(match (&carry, kind) {
            (Carry::Decimal { .. } | Carry::Text, SourceKind::Postgres) => {
                format!("{ident}::text AS {ident}")
            }
            (Carry::Decimal { .. } | Carry::Text, _) => format!("CAST({ident} AS CHAR) AS {ident}"),
            _ => ident,
        });
        carried.push((column.name.clone(), carry));
    }
    Ok(TypedSelect {
        sql: format!(
            "SELECT {} FROM {}",
            select.join(", "),
            dialect.table(source_table)
        ),
        columns: carried,
    })
}

fn postgres_carry(c: &SourceColumn) -> Result<Carry, String> {
    let q = Dialect::Postgres.ident(&c.name);
    let cannot = |what: &str, cast: &str| {
        format!(
            "has PostgreSQL type {what}, which sluice cannot carry; set the table's `query` and cast it there, e.g. `{q}::{cast} AS {q}`"
        )
    };
    Ok(match c.udt.as_str() {
        "bool" | "int2" | "int4" | "int8" | "oid" | "float4" | "float8" | "text" | "varchar"
        | "bpchar" | "char" | "name" | "citext" | "bytea" | "date" | "timestamp"
        | "timestamptz" | "uuid" | "inet" => Carry::AsIs,
        "_bool" | "_int2" | "_int4" | "_int8" | "_float4" | "_float8" | "_text" | "_varchar" => {
            Carry::AsIs
        }
        // JSON keeps its text (connectorx would re-serialise it through serde_json,
        // turning big numbers into floats); TIME travels as `HH:MM:SS[.ffffff]`
        // text, like MySQL's, since ClickHouse before 25.6 has no time-of-day type.
        "json" | "jsonb" | "time" => Carry::Text,
        "numeric" => match (c.precision, c.scale) {
            (None, _) => Carry::Decimal {
                precision: UNCONSTRAINED_NUMERIC.0,
                scale: UNCONSTRAINED_NUMERIC.1,
            },
            (Some(p), Some(s)) if p as u32 <= MAX_DECIMAL_PRECISION && s >= 0 => Carry::Decimal {
                precision: p as u8,
                scale: s as i8,
            },
            (Some(p), s) => {
                return Err(cannot(
                    &format!("numeric({p},{})", s.unwrap_or(0)),
                    &format!("numeric({},{})", p.min(76), s.unwrap_or(0).clamp(0, 38)),
                ))
            }
        },
        "_numeric" => return Err(cannot("numeric[]", "text[]")),
        udt if c.type_kind == "e" => {
            let _ = udt;
            Carry::AsIs
        }
        udt if udt.starts_with('_') => {
            return Err(cannot(&format!("{}[]", &udt[1..]), "text[]"));
        }
        udt => return Err(cannot(udt, "text")),
    })
}

fn mysql_carry(c: &SourceColumn) -> Result<Carry, String> {
    let q = Dialect::Mysql.ident(&c.name);
    Ok(match c.data_type.to_ascii_lowercase().as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "float"
        | "double" | "real" | "char" | "varchar" | "tinytext" | "text" | "mediumtext"
        | "longtext" | "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob"
        | "longblob" | "date" | "datetime" | "year" | "enum" | "set" | "bit" => Carry::AsIs,
        "timestamp" => Carry::UtcTimestamp,
        // TIME is a duration (-838:59:59 to 838:59:59), not a time of day.
        "time" | "json" | "uuid" | "inet4" | "inet6" => Carry::Text,
        "decimal" | "numeric" => match (c.precision, c.scale) {
            (Some(p), Some(s)) if p as u32 <= MAX_DECIMAL_PRECISION => Carry::Decimal {
                precision: p as u8,
                scale: s as i8,
            },
            _ => {
                return Err(format!(
                    "has MySQL type {} without a usable precision; set the table's `query` and cast it there, e.g. `CAST({q} AS DECIMAL(38,10)) AS {q}`",
                    c.udt
                ))
            }
        },
        other => {
            return Err(format!(
                "has MySQL type {other}, which sluice cannot carry; set the table's `query` and cast it there, e.g. `CAST({q} AS CHAR) AS {q}`"
            ))
        }
    })
}

fn postgres_catalog_query(d: Dialect, schema: Option<&str>, name: &str) -> String {
    let schema = schema.map_or("current_schema()".to_string(), |s| d.string(s));
    format!(
        "SELECT c.column_name::text, c.data_type::text, c.udt_name::text, \
         c.numeric_precision::text, c.numeric_scale::text, \
         (SELECT t.typtype::text FROM pg_catalog.pg_type t \
          JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
          WHERE t.typname = c.udt_name AND n.nspname = c.udt_schema) AS type_kind \
         FROM information_schema.columns c \
         WHERE c.table_schema = {schema} AND c.table_name = {} \
         ORDER BY c.ordinal_position",
        d.string(name)
    )
}

fn mysql_catalog_query(d: Dialect, schema: Option<&str>, name: &str) -> String {
    let schema = schema.map_or("DATABASE()".to_string(), |s| d.string(s));
    format!(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
         CAST(NUMERIC_PRECISION AS CHAR), CAST(NUMERIC_SCALE AS CHAR), CAST('' AS CHAR) \
         FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = {schema} AND TABLE_NAME = {} \
         ORDER BY ORDINAL_POSITION",
        d.string(name)
    )
}

async fn read_catalog(table: &str, url: &str, query: String) -> Result<Vec<SourceColumn>> {
    let stream = super::sql::read(table, url, query, 1024).await?;
    let batches: Vec<RecordBatch> = stream.batches.try_collect().await?;
    let mut out = Vec::new();
    for batch in batches {
        let text = |i: usize| -> Result<ArrayRef> {
            cast(batch.column(i), &DataType::Utf8).map_err(|e| Error::source(table, e))
        };
        let cols = (0..6).map(text).collect::<Result<Vec<_>>>()?;
        let get = |col: usize, row: usize| -> Option<String> {
            let a = cols[col].as_string::<i32>();
            a.is_valid(row).then(|| a.value(row).to_string())
        };
        for row in 0..batch.num_rows() {
            out.push(SourceColumn {
                name: get(0, row).unwrap_or_default(),
                data_type: get(1, row).unwrap_or_default(),
                udt: get(2, row).unwrap_or_default(),
                precision: get(3, row).and_then(|s| s.parse().ok()),
                scale: get(4, row).and_then(|s| s.parse().ok()),
                type_kind: get(5, row).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

impl TypedSelect {
    /// Whether any column needs converting after the read.
    fn converts(&self) -> bool {
        self.columns
            .iter()
            .any(|(_, c)| matches!(c, Carry::Decimal { .. } | Carry::UtcTimestamp))
    }

    /// The Arrow schema after conversion of the reader's `schema`.
    fn schema(&self, schema: &Schema) -> Schema {
        let fields = schema.fields().iter().map(|f| match self.carry(f.name()) {
            Some(Carry::Decimal { precision, scale }) => Arc::new(Field::new(
                f.name(),
                decimal_type(*precision, *scale),
                f.is_nullable(),
            )),
            Some(Carry::UtcTimestamp) => Arc::new(Field::new(
                f.name(),
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                f.is_nullable(),
            )),
            _ => Arc::clone(f),
        });
        Schema::new(fields.collect::<Vec<_>>())
    }

    fn carry(&self, name: &str) -> Option<&Carry> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Converts the reader's stream: text decimals into exact decimals, MySQL
    /// `TIMESTAMP` columns labelled UTC.
    pub fn apply(&self, table: &str, stream: BatchStream) -> Result<BatchStream> {
        if !self.converts() {
            return Ok(stream);
        }
        let schema: SchemaRef = Arc::new(self.schema(&stream.schema));
        let plan = self.clone();
        let table = table.to_string();
        let out = Arc::clone(&schema);
        let batches = stream
            .batches
            .map(move |batch| batch.and_then(|b| plan.convert(&table, &out, &b)))
            .boxed();
        Ok(BatchStream { schema, batches })
    }

    fn convert(&self, table: &str, schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, array)| match self.carry(field.name()) {
                Some(Carry::Decimal { precision, scale }) => {
                    parse_decimals(array, *precision, *scale).map_err(|e| {
                        Error::source(table, format!("column {:?}: {e}", field.name()))
                    })
                }
                Some(Carry::UtcTimestamp) => cast(
                    array,
                    &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                )
                .map_err(|e| Error::source(table, e)),
                _ => Ok(Arc::clone(array)),
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| Error::source(table, e))
    }
}

fn decimal_type(precision: u8, scale: i8) -> DataType {
    if precision as u32 <= 38 {
        DataType::Decimal128(precision, scale)
    } else {
        DataType::Decimal256(precision, scale)
    }
}

/// Parses text decimals exactly into `Decimal128/256(precision, scale)`.
pub fn parse_decimals(array: &ArrayRef, precision: u8, scale: i8) -> Result<ArrayRef, String> {
    let text = cast(array, &DataType::Utf8).map_err(|e| e.to_string())?;
    let text = text.as_string::<i32>();
    let values = text
        .iter()
        .map(|v| v.map(|s| decimal_digits(s, precision, scale)).transpose());
    if precision as u32 <= 38 {
        let values = values
            .map(|v| {
                v.and_then(|d| {
                    d.map(|d| d.parse::<i128>().map_err(|e| e.to_string()))
                        .transpose()
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let array = Decimal128Array::from(values)
            .with_precision_and_scale(precision, scale)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(array))
    } else {
        let values = values
            .map(|v| {
                v.and_then(|d| {
                    d.map(|d| i256::from_string(&d).ok_or_else(|| format!("bad decimal {d}")))
                        .transpose()
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let array = Decimal256Array::from(values)
            .with_precision_and_scale(precision, scale)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(array))
    }
}

/// The unscaled integer of decimal text `s` at `scale`, as text; an error (never a
/// rounding) when the value has more digits than `precision, scale` hold.
fn decimal_digits(s: &str, precision: u8, scale: i8) -> Result<String, String> {
    let unfit = || {
        format!(
            "value {s:?} does not fit Decimal({precision}, {scale}) exactly; cast the column to numeric({precision}, {scale}) or to text in the table's `query`"
        )
    };
    let t = s.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(unfit());
    }
    let scale = scale.max(0) as usize;
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale {
        return Err(unfit());
    }
    let digits = format!("{int}{frac:0<scale$}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > precision as usize {
        return Err(unfit());
    }
    let digits = if digits.is_empty() { "0" } else { digits };
    Ok(if negative && digits != "0" {
        format!("-{digits}")
    } else {
        digits.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    fn col(name: &str, data_type: &str, udt: &str, p: Option<i64>, s: Option<i64>) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            data_type: data_type.into(),
            udt: udt.into(),
            precision: p,
            scale: s,
            type_kind: "b".into(),
        }
    }

    #[test]
    fn decimals_parse_exactly_or_fail() {
        assert_eq!(decimal_digits("1.50", 5, 2).unwrap(), "150");
        assert_eq!(decimal_digits("-0.0000000001", 38, 10).unwrap(), "-1");
        assert_eq!(decimal_digits("-0.00", 5, 2).unwrap(), "0");
        assert_eq!(
            decimal_digits("12.5000000000000", 38, 10).unwrap(),
            "125000000000"
        );
        let max38 = "9999999999999999999999999999.9999999999";
        assert_eq!(decimal_digits(max38, 38, 10).unwrap(), "9".repeat(38));
        assert!(
            decimal_digits("0.00000000001", 38, 10).is_err(),
            "scale 11 in (38,10)"
        );
        assert!(decimal_digits("123.4", 4, 2).is_err(), "too many digits");
        assert!(decimal_digits("NaN", 10, 2).is_err());
        let array: ArrayRef = Arc::new(StringArray::from(vec![Some(max38), None, Some("-1")]));
        let parsed = parse_decimals(&array, 38, 10).unwrap();
        assert_eq!(parsed.data_type(), &DataType::Decimal128(38, 10));
        let d = parsed.as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(d.value(0), 10i128.pow(38) - 1);
        assert!(d.is_null(1));
        assert_eq!(d.value(2), -10_000_000_000);
        let wide: ArrayRef = Arc::new(StringArray::from(vec![format!(
            "{}.{}",
            "9".repeat(35),
            "1".repeat(30)
        )]));
        let parsed = parse_decimals(&wide, 65, 30).unwrap();
        assert_eq!(parsed.data_type(), &DataType::Decimal256(65, 30));
    }

    #[test]
    fn typed_select_casts_what_connectorx_cannot_carry() {
        let columns = vec![
            col("id", "bigint", "int8", Some(64), Some(0)),
            col("amount", "numeric", "numeric", Some(38), Some(10)),
            col("doc", "jsonb", "jsonb", None, None),
        ];
        let plan = typed_select("t", SourceKind::Postgres, "public.t", &columns).unwrap();
        assert_eq!(
            plan.sql,
            "SELECT \"id\", \"amount\"::text AS \"amount\", \"doc\"::text AS \"doc\" FROM \"public\".\"t\""
        );
        let mysql = vec![
            col("n", "decimal", "decimal(65,30)", Some(65), Some(30)),
            col("at", "timestamp", "timestamp(6)", None, None),
        ];
        let plan = typed_select("t", SourceKind::Mysql, "t", &mysql).unwrap();
        assert_eq!(plan.sql, "SELECT CAST(`n` AS CHAR) AS `n`, `at` FROM `t`");
        assert_eq!(plan.carry("at"), Some(&Carry::UtcTimestamp));
    }

    #[test]
    fn uncarriable_type_fails_naming_column_and_cast() {
        let columns = vec![col("span", "interval", "interval", None, None)];
        let err = typed_select("t", SourceKind::Postgres, "t", &columns)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"span\"") && err.contains("::text"), "{err}");
        let columns = vec![col("dates", "ARRAY", "_date", None, None)];
        let err = typed_select("t", SourceKind::Postgres, "t", &columns)
            .unwrap_err()
            .to_string();
        assert!(err.contains("date[]") && err.contains("::text[]"), "{err}");
        let columns = vec![col("g", "point", "point", None, None)];
        let err = typed_select("t", SourceKind::Mysql, "t", &columns)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CAST(`g` AS CHAR)"), "{err}");
    }
}
