//! ClickHouse DDL generated from the lake's Arrow schema.

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::layout::LoadTarget;
use crate::config::PartitionGrain;

/// Quotes a ClickHouse identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A ClickHouse string literal.
pub fn string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The ClickHouse type that holds an Arrow column, as written to Parquet.
pub fn column_type(field: &Field, force_not_null: bool) -> Result<String, String> {
    let inner = base_type(field.data_type()).map_err(|reason| {
        format!(
            "column {:?} has Arrow type {} which sluice cannot load into ClickHouse ({reason}); cast it in the table's `query`",
            field.name(),
            field.data_type()
        )
    })?;
    let nullable_ok = !matches!(
        field.data_type(),
        DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) | DataType::Map(_, _)
    );
    if field.is_nullable() && !force_not_null && nullable_ok {
        Ok(format!("Nullable({inner})"))
    } else {
        Ok(inner)
    }
}

fn base_type(data_type: &DataType) -> Result<String, String> {
    Ok(match data_type {
        DataType::Boolean => "Bool".into(),
        DataType::Int8 => "Int8".into(),
        DataType::Int16 => "Int16".into(),
        DataType::Int32 => "Int32".into(),
        DataType::Int64 => "Int64".into(),
        DataType::UInt8 => "UInt8".into(),
        DataType::UInt16 => "UInt16".into(),
        DataType::UInt32 => "UInt32".into(),
        DataType::UInt64 => "UInt64".into(),
        DataType::Float16 | DataType::Float32 => "Float32".into(),
        DataType::Float64 => "Float64".into(),
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            format!("Decimal({p}, {s})")
        }
        DataType::Decimal256(p, s) => format!("Decimal({p}, {s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "String".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "String".into(),
        DataType::FixedSizeBinary(n) => format!("FixedString({n})"),
        DataType::Date32 => "Date32".into(),
        DataType::Date64 => "DateTime64(3, 'UTC')".into(),
        DataType::Timestamp(unit, _tz) => {
            // Naive timestamps are stored as UTC wall-clock values (see README).
            let precision = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                TimeUnit::Microsecond => 6,
                TimeUnit::Nanosecond => 9,
            };
            format!("DateTime64({precision}, 'UTC')")
        }
        DataType::List(item) | DataType::LargeList(item) => {
            format!("Array({})", column_type(item, false)?)
        }
        DataType::Struct(fields) => {
            let parts = fields
                .iter()
                .map(|f| Ok(format!("{} {}", ident(f.name()), column_type(f, false)?)))
                .collect::<Result<Vec<_>, String>>()?;
            format!("Tuple({})", parts.join(", "))
        }
        other => return Err(format!("no ClickHouse mapping for {other}")),
    })
}

/// Each column's name and ClickHouse type in `target` (the partition and key
/// columns are never `Nullable`: ClickHouse refuses them there).
pub fn column_types(target: &LoadTarget, schema: &Schema) -> Result<Vec<(String, String)>, String> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let not_null = f.name() == target.partition_column() || target.key.contains(f.name());
            Ok((f.name().clone(), column_type(f, not_null)?))
        })
        .collect()
}

/// `CREATE TABLE IF NOT EXISTS` for `target` in `database`: the only place
/// sluice writes ClickHouse DDL.
pub fn create_table(
    database: &str,
    target: &LoadTarget,
    schema: &Schema,
) -> Result<String, String> {
    let columns = column_types(target, schema)?
        .into_iter()
        .map(|(name, ty)| format!("    {} {ty}", ident(&name)))
        .collect::<Vec<_>>();
    let order_by = if target.key.is_empty() {
        "tuple()".to_string()
    } else {
        format!(
            "({})",
            target
                .key
                .iter()
                .map(|k| ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let partition = match &target.partition {
        Some((column, grain)) => {
            format!(
                "\nPARTITION BY {}",
                partition_expression_for(column, *grain)
            )
        }
        None => String::new(),
    };
    let ttl = match (&target.partition, target.retention_days) {
        (Some((column, _)), Some(days)) => format!(
            "\nTTL toDate({}) + toIntervalDay({days}) DELETE",
            ident(column)
        ),
        _ => String::new(),
    };
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (\n{}\n)\nENGINE = {}{partition}\nORDER BY {order_by}{ttl}",
        ident(database),
        ident(&target.name),
        columns.join(",\n"),
        target.engine.clause(),
    ))
}

/// The partition expression: one ClickHouse partition per lake day, so that a lake
/// partition replaces exactly one ClickHouse partition.
pub fn partition_expression(column: &str) -> String {
    format!("toYYYYMMDD({})", ident(column))
}

/// `PARTITION BY` of a table partitioned by `column` at `grain`.
pub fn partition_expression_for(column: &str, grain: PartitionGrain) -> String {
    match grain {
        PartitionGrain::Day => partition_expression(column),
        PartitionGrain::Month => format!("toYYYYMM({})", ident(column)),
    }
}

/// ClickHouse's partition ID of a table without `PARTITION BY`: the whole table.
pub const UNPARTITIONED: &str = "all";

/// ClickHouse's partition ID of a lake day (`YYYY-MM-DD`) in a table partitioned
/// by day (`YYYYMMDD`).
pub fn partition_id(day: &str) -> String {
    day.replace('-', "")
}

/// The partition ID holding lake day `day` at `grain`: `YYYYMMDD` or `YYYYMM`.
pub fn partition_id_for(day: &str, grain: PartitionGrain) -> String {
    let id = partition_id(day);
    match grain {
        PartitionGrain::Day => id,
        PartitionGrain::Month => id.chars().take(6).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::layout::Engine;

    #[test]
    fn ddl_for_a_typical_table() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Decimal128(38, 10), true),
            Field::new(
                "created_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("we`ird", DataType::LargeUtf8, false),
        ]);
        let mut target = LoadTarget {
            name: "t".into(),
            partition: Some(("created_at".into(), PartitionGrain::Day)),
            key: vec!["id".to_string()],
            engine: Engine::MergeTree,
            retention_days: Some(90),
        };
        assert_eq!(
            create_table("db", &target, &schema).unwrap(),
            "CREATE TABLE IF NOT EXISTS `db`.`t` (\n    `id` Int64,\n    `amount` Nullable(Decimal(38, 10)),\n    `created_at` DateTime64(6, 'UTC'),\n    `we\\`ird` String\n)\nENGINE = MergeTree\nPARTITION BY toYYYYMMDD(`created_at`)\nORDER BY (`id`)\nTTL toDate(`created_at`) + toIntervalDay(90) DELETE"
        );
        target.partition = Some(("created_at".into(), PartitionGrain::Month));
        assert!(create_table("db", &target, &schema)
            .unwrap()
            .contains("\nPARTITION BY toYYYYMM(`created_at`)\n"));
    }

    #[test]
    fn current_state_tables_replace_by_version_without_ttl() {
        let schema = Schema::new(vec![
            Field::new("_id", DataType::Utf8, false),
            Field::new("_change_date", DataType::Date32, false),
            Field::new("_version", DataType::UInt64, false),
            Field::new("_is_deleted", DataType::UInt8, false),
        ]);
        let target = LoadTarget::current(
            "c",
            "_change_date",
            &["_id".into()],
            "_version",
            "_is_deleted",
        );
        let ddl = create_table("db", &target, &schema).unwrap();
        assert!(
            ddl.ends_with("\nENGINE = ReplacingMergeTree(_version, _is_deleted)\nPARTITION BY toYYYYMMDD(`_change_date`)\nORDER BY (`_id`)"),
            "{ddl}"
        );
    }

    #[test]
    fn unpartitioned_model_ddl() {
        let schema = Schema::new(vec![
            Field::new("merchant_id", DataType::Int64, true),
            Field::new("n", DataType::Int64, false),
        ]);
        let target = LoadTarget::model("m", None, &["merchant_id".into()]);
        assert_eq!(
            create_table("db", &target, &schema).unwrap(),
            "CREATE TABLE IF NOT EXISTS `db`.`m` (\n    `merchant_id` Int64,\n    `n` Int64\n)\nENGINE = MergeTree\nORDER BY (`merchant_id`)"
        );
        let keyless = LoadTarget::model("m", None, &[]);
        assert!(create_table("db", &keyless, &schema)
            .unwrap()
            .ends_with("\nORDER BY tuple()"));
    }

    #[test]
    fn month_partitioned_model_ddl() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("day", DataType::Date32, true),
        ]);
        let target = LoadTarget::model("m", Some(("day", PartitionGrain::Month)), &["id".into()]);
        let ddl = create_table("db", &target, &schema).unwrap();
        assert!(
            ddl.contains("`day` Date32\n)\nENGINE = MergeTree\nPARTITION BY toYYYYMM(`day`)"),
            "{ddl}"
        );
    }

    #[test]
    fn partition_ids_per_grain() {
        assert_eq!(
            partition_id_for("2026-03-09", PartitionGrain::Day),
            "20260309"
        );
        assert_eq!(
            partition_id_for("2026-03-09", PartitionGrain::Month),
            "202603"
        );
    }

    #[test]
    fn unsupported_type_names_column_and_fix() {
        let field = Field::new("t", DataType::Duration(TimeUnit::Second), true);
        let err = column_type(&field, false).unwrap_err();
        assert!(err.contains("\"t\"") && err.contains("cast it"), "{err}");
    }
}
