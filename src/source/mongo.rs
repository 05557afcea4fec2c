//! MongoDB collections as Arrow batches.
//!
//! Documents come off the driver as raw BSON (`Collection<RawDocumentBuf>`, no
//! `Document` or JSON in between) and are decoded straight into Arrow builders
//! following a [`ColumnType`] schema, declared in the config or inferred from a
//! sample. A value that does not fit its column is never dropped: it goes, as
//! relaxed Extended JSON under its field path, to the `_overflow` column, or fails
//! the run naming the collection, `_id` and field ([`MismatchPolicy`]).
//!
//! Each batch also carries `_key` (the key field encoded so that byte order is
//! MongoDB's sort order, for the snapshot diff's merge join) and `_hash` (XXH3 of
//! the document's BSON bytes: its content hash).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::builder::{ArrayBuilder, NullBufferBuilder};
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Decimal128Builder, Float64Builder, Int32Builder,
    Int64Builder, ListArray, StringBuilder, StructArray, TimestampMillisecondBuilder,
    UInt64Builder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::raw::{RawBinaryRef, RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::bson::{doc, Bson, DateTime, Decimal128, Document};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::info;

use super::BatchStream;
use crate::config::mongo_types::fields_of;
pub use crate::config::mongo_types::{Column, ColumnType};
use crate::config::{MismatchPolicy, NestedMode};
use crate::error::{Error, Result};
use scan::{kind, Element, Elements};

mod scan;

/// The JSON column that keeps values that did not fit the schema.
pub const OVERFLOW_COLUMN: &str = "_overflow";
/// Order-preserving encoding of the key field (see [`sort_key`]).
pub const KEY_COLUMN: &str = "_key";
/// XXH3-64 of the document's BSON bytes.
pub const HASH_COLUMN: &str = "_hash";

/// Nesting levels turned into Struct / List columns by inference; deeper values
/// are stored as JSON strings.
const MAX_INFER_DEPTH: usize = 16;
/// A batch is emitted when its documents reach this many BSON bytes, whatever
/// `batch_rows` says, so that large documents keep memory bounded.
pub const BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Batches in flight between the reader task and the pipeline.
const CHANNEL_BATCHES: usize = 2;

/// Schema inference: the type of sampled values, merged across documents.
impl ColumnType {
    /// The type of one value, for inference.
    fn of_value(value: RawBsonRef<'_>, nested: NestedMode, depth: usize) -> ColumnType {
        match value {
            RawBsonRef::Double(_) => ColumnType::Double,
            RawBsonRef::String(_) => ColumnType::String,
            RawBsonRef::Boolean(_) => ColumnType::Bool,
            RawBsonRef::Null | RawBsonRef::Undefined => ColumnType::Unknown,
            RawBsonRef::Int32(_) => ColumnType::Int32,
            RawBsonRef::Int64(_) => ColumnType::Int64,
            RawBsonRef::ObjectId(_) => ColumnType::ObjectId,
            RawBsonRef::DateTime(_) => ColumnType::Timestamp,
            RawBsonRef::Binary(_) => ColumnType::Binary,
            RawBsonRef::Decimal128(d) => match decimal_parts(d) {
                Some((_, coefficient, exponent)) => {
                    let digits = digits(coefficient) as i32;
                    let scale = (-exponent).max(0);
                    let int_digits = (digits + exponent).max(1);
                    if scale + int_digits > 38 {
                        ColumnType::DecimalText
                    } else {
                        ColumnType::Decimal {
                            precision: (scale + int_digits) as u8,
                            scale: scale as i8,
                        }
                    }
                }
                None => ColumnType::DecimalText,
            },
            RawBsonRef::Document(d) if nested == NestedMode::Struct && depth < MAX_INFER_DEPTH => {
                let mut columns: Vec<Column> = Vec::new();
                for (name, v) in d.iter().flatten() {
                    merge_field(&mut columns, name, Self::of_value(v, nested, depth + 1));
                }
                ColumnType::Struct(columns)
            }
            RawBsonRef::Array(a) if nested == NestedMode::Struct && depth < MAX_INFER_DEPTH => {
                let mut item = ColumnType::Unknown;
                for v in a.into_iter().flatten() {
                    item = item.merge(Self::of_value(v, nested, depth + 1));
                }
                ColumnType::List(Box::new(item))
            }
            _ => ColumnType::Json,
        }
    }

    /// The narrowest type holding values of both types.
    fn merge(self, other: ColumnType) -> ColumnType {
        use ColumnType::*;
        match (self, other) {
            (Unknown, t) | (t, Unknown) => t,
            (a, b) if a == b => a,
            (Int32, Int64) | (Int64, Int32) => Int64,
            (Int32 | Int64, Double) | (Double, Int32 | Int64) => Double,
            (
                Decimal {
                    precision: p1,
                    scale: s1,
                },
                Decimal {
                    precision: p2,
                    scale: s2,
                },
            ) => {
                let scale = s1.max(s2);
                let int_digits = (p1 as i8 - s1).max(p2 as i8 - s2);
                if int_digits as i32 + scale as i32 > 38 {
                    DecimalText
                } else {
                    Decimal {
                        precision: (int_digits + scale) as u8,
                        scale,
                    }
                }
            }
            (Decimal { .. }, DecimalText) | (DecimalText, Decimal { .. }) => DecimalText,
            (Struct(mut a), Struct(b)) => {
                for c in b {
                    merge_field(&mut a, &c.name, c.ty);
                }
                Struct(a)
            }
            (List(a), List(b)) => List(Box::new(a.merge(*b))),
            _ => Json,
        }
    }

    /// Replaces what inference could not decide (`Unknown`) by `Json`, and gives
    /// decimals the full precision 38 so that larger values still fit.
    fn finalize(self) -> ColumnType {
        match self {
            ColumnType::Unknown => ColumnType::Json,
            ColumnType::Decimal { scale, .. } => ColumnType::Decimal {
                precision: 38,
                scale,
            },
            ColumnType::Struct(columns) if columns.is_empty() => ColumnType::Json,
            ColumnType::Struct(columns) => ColumnType::Struct(
                columns
                    .into_iter()
                    .map(|c| Column {
                        name: c.name,
                        ty: c.ty.finalize(),
                    })
                    .collect(),
            ),
            ColumnType::List(item) => ColumnType::List(Box::new(item.finalize())),
            t => t,
        }
    }
}

fn merge_field(columns: &mut Vec<Column>, name: &str, ty: ColumnType) {
    match columns.iter_mut().find(|c| c.name == name) {
        Some(c) => {
            let old = std::mem::replace(&mut c.ty, ColumnType::Unknown);
            c.ty = old.merge(ty);
        }
        None => columns.push(Column {
            name: name.to_string(),
            ty,
        }),
    }
}

/// The schema of a collection's documents, and how they are decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentSchema {
    /// Top-level fields, `_id` first.
    pub columns: Vec<Column>,
    pub nested: NestedMode,
    pub on_mismatch: MismatchPolicy,
    /// The key field (`_id` by default), encoded into `_key`.
    pub key: String,
}

impl DocumentSchema {
    /// Infers columns from sampled documents, then applies the declared types.
    pub fn infer<'a>(
        sample: impl IntoIterator<Item = &'a RawDocument>,
        declared: &[(String, ColumnType)],
        nested: NestedMode,
        on_mismatch: MismatchPolicy,
        key: &str,
    ) -> Self {
        let mut columns: Vec<Column> = vec![Column {
            name: "_id".into(),
            ty: ColumnType::Unknown,
        }];
        for doc in sample {
            for (name, value) in doc.iter().flatten() {
                merge_field(&mut columns, name, ColumnType::of_value(value, nested, 1));
            }
        }
        for (name, ty) in declared {
            match columns.iter_mut().find(|c| &c.name == name) {
                Some(c) => c.ty = ty.clone(),
                None => columns.push(Column {
                    name: name.clone(),
                    ty: ty.clone(),
                }),
            }
        }
        let columns = columns
            .into_iter()
            .filter(|c| c.name != OVERFLOW_COLUMN && c.name != KEY_COLUMN && c.name != HASH_COLUMN)
            .map(|c| Column {
                name: c.name,
                ty: c.ty.finalize(),
            })
            .collect();
        Self {
            columns,
            nested,
            on_mismatch,
            key: key.to_string(),
        }
    }

    /// The Arrow schema of the decoded batches: the columns, then `_overflow`
    /// (with the `overflow` policy), `_key` and `_hash`.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.ty.arrow(), c.name != self.key))
            .collect();
        if self.on_mismatch == MismatchPolicy::Overflow {
            fields.push(Field::new(OVERFLOW_COLUMN, DataType::Utf8, true));
        }
        fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
        fields.push(Field::new(HASH_COLUMN, DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    }
}

/// A value that did not fit: where, and what it was.
struct Mismatch {
    path: String,
    json: String,
    reason: String,
}

/// Per-document decoding state.
struct DocContext<'p> {
    /// Field names from the root to the value being decoded.
    path: Vec<PathPart<'p>>,
    mismatches: Vec<Mismatch>,
    /// The policy; with `Error` the first mismatch stops the document.
    stop_at_first: bool,
    /// The root column of the key field, whose value is captured in `key`.
    key_column: Option<usize>,
    key: Option<RawBsonRef<'p>>,
}

#[derive(Clone, Copy)]
enum PathPart<'p> {
    /// A field name, checked as UTF-8 (it equals a schema name, or was checked).
    Field(&'p [u8]),
    Index(usize),
}

impl<'p> DocContext<'p> {
    fn path_string(&self) -> String {
        let mut out = String::new();
        for part in &self.path {
            match part {
                PathPart::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&String::from_utf8_lossy(name));
                }
                PathPart::Index(i) => {
                    out.push('.');
                    out.push_str(&i.to_string());
                }
            }
        }
        out
    }

    /// Records a value that does not fit; `Err` when the run must stop.
    fn mismatch(&mut self, value: RawBsonRef<'_>, reason: &'static str) -> Result<(), ()> {
        self.mismatches.push(Mismatch {
            path: self.path_string(),
            json: to_json(value),
            reason: reason.to_string(),
        });
        if self.stop_at_first {
            Err(())
        } else {
            Ok(())
        }
    }

    /// Records that the document cannot be decoded further (corrupt BSON,
    /// invalid UTF-8); always stops the document.
    fn corrupt(&mut self, what: impl std::fmt::Display) -> Result<(), ()> {
        self.mismatches.push(Mismatch {
            path: self.path_string(),
            json: String::new(),
            reason: format!("is not valid BSON ({what})"),
        });
        Err(())
    }
}

/// An empty path with the allocation of `path`, for documents of another
/// lifetime (the collect reuses the buffer: same layout, no element mapped).
fn recycle<'a, 'b>(mut path: Vec<PathPart<'a>>) -> Vec<PathPart<'b>> {
    path.clear();
    path.into_iter().map(|_| unreachable!("cleared")).collect()
}

/// A value as relaxed Extended JSON (binary as base64, dates as ISO-8601).
pub fn to_json(value: RawBsonRef<'_>) -> String {
    match Bson::try_from(value) {
        Ok(b) => b.into_relaxed_extjson().to_string(),
        Err(e) => serde_json::json!({ "$invalid": e.to_string() }).to_string(),
    }
}

/// `bytes` as UTF-8, checked. Short ASCII strings (most field values) take a
/// word-at-a-time check instead of the full validator.
#[inline]
fn utf8(bytes: &[u8]) -> std::result::Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

/// The `RawBsonRef` of a scanned element, for the paths that need one (JSON
/// columns, mismatches, rare types). `parent` holds the element at position
/// `index`: the types the `bson` crate gives no constructor for are found there.
fn value_ref<'p>(
    element: &Element<'p>,
    parent: &'p [u8],
    index: usize,
) -> std::result::Result<RawBsonRef<'p>, String> {
    let v = element.value;
    Ok(match element.kind {
        kind::DOUBLE => RawBsonRef::Double(element.f64()),
        kind::STRING => RawBsonRef::String(
            utf8(element.str_bytes()).map_err(|e| format!("invalid UTF-8 in a string: {e}"))?,
        ),
        kind::DOCUMENT => {
            RawBsonRef::Document(RawDocument::from_bytes(v).map_err(|e| e.to_string())?)
        }
        kind::BINARY if v[4] != 0x02 => RawBsonRef::Binary(RawBinaryRef {
            subtype: v[4].into(),
            bytes: &v[5..],
        }),
        kind::OBJECT_ID => RawBsonRef::ObjectId(ObjectId::from_bytes(*element.object_id())),
        kind::BOOLEAN => RawBsonRef::Boolean(v[0] == 1),
        kind::DATE_TIME => RawBsonRef::DateTime(DateTime::from_millis(element.i64())),
        kind::NULL => RawBsonRef::Null,
        kind::UNDEFINED => RawBsonRef::Undefined,
        kind::INT32 => RawBsonRef::Int32(element.i32()),
        kind::INT64 => RawBsonRef::Int64(element.i64()),
        kind::DECIMAL128 => RawBsonRef::Decimal128(Decimal128::from_bytes(
            v[..16].try_into().expect("scanned: 16 bytes"),
        )),
        kind::MIN_KEY => RawBsonRef::MinKey,
        kind::MAX_KEY => RawBsonRef::MaxKey,
        // Arrays, regexes, code, symbols, timestamps, DB pointers, old binary.
        _ => {
            let parent = RawDocument::from_bytes(parent).map_err(|e| e.to_string())?;
            match parent.iter().nth(index) {
                Some(Ok((_, value))) => value,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("element vanished on a second scan".into()),
            }
        }
    })
}

/// An Arrow builder for one column.
enum Builder {
    Utf8(StringBuilder, Utf8Kind),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Double(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
    Decimal(Decimal128Builder, u8, i8),
    Binary(BinaryBuilder),
    Struct(StructBuilder),
    List(Box<ListBuilder>),
}

#[derive(Clone, Copy, PartialEq)]
enum Utf8Kind {
    String,
    ObjectId,
    DecimalText,
    Json,
}

struct StructBuilder {
    fields: Fields,
    /// Column names as bytes, compared with the document's field names.
    names: Vec<Box<[u8]>>,
    index: HashMap<Box<[u8]>, usize>,
    children: Vec<Builder>,
    nulls: NullBufferBuilder,
    seen: Vec<bool>,
}

struct ListBuilder {
    field: FieldRef,
    item: Builder,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl Builder {
    fn new(ty: &ColumnType) -> Builder {
        match ty {
            ColumnType::String => Builder::Utf8(StringBuilder::new(), Utf8Kind::String),
            ColumnType::ObjectId => Builder::Utf8(StringBuilder::new(), Utf8Kind::ObjectId),
            ColumnType::DecimalText => Builder::Utf8(StringBuilder::new(), Utf8Kind::DecimalText),
            ColumnType::Json | ColumnType::Unknown => {
                Builder::Utf8(StringBuilder::new(), Utf8Kind::Json)
            }
            ColumnType::Int32 => Builder::Int32(Int32Builder::new()),
            ColumnType::Int64 => Builder::Int64(Int64Builder::new()),
            ColumnType::Double => Builder::Double(Float64Builder::new()),
            ColumnType::Bool => Builder::Bool(BooleanBuilder::new()),
            ColumnType::Timestamp => {
                Builder::Timestamp(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
            ColumnType::Decimal { precision, scale } => Builder::Decimal(
                Decimal128Builder::new()
                    .with_precision_and_scale(*precision, *scale)
                    .expect("validated precision and scale"),
                *precision,
                *scale,
            ),
            ColumnType::Binary => Builder::Binary(BinaryBuilder::new()),
            ColumnType::Struct(columns) => Builder::Struct(StructBuilder::new(columns)),
            ColumnType::List(item) => Builder::List(Box::new(ListBuilder {
                field: Arc::new(Field::new("item", item.arrow(), true)),
                item: Builder::new(item),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
            })),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Utf8(b, _) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Double(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::Decimal(b, _, _) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
            Builder::Struct(s) => {
                for child in &mut s.children {
                    child.append_null();
                }
                s.nulls.append_null();
            }
            Builder::List(l) => {
                let last = *l.offsets.last().expect("offsets start with 0");
                l.offsets.push(last);
                l.nulls.append_null();
            }
        }
    }

    /// Appends a scanned element: the common pairs of column and BSON type are
    /// read in place; anything else goes through [`Builder::append`].
    #[inline]
    fn append_element<'p>(
        &mut self,
        element: Element<'p>,
        parent: &'p [u8],
        index: usize,
        cx: &mut DocContext<'p>,
    ) -> Result<(), ()> {
        match (&mut *self, element.kind) {
            (Builder::Utf8(b, Utf8Kind::String), kind::STRING) => match utf8(element.str_bytes()) {
                Ok(s) => b.append_value(s),
                Err(e) => return cx.corrupt(format_args!("invalid UTF-8 in a string: {e}")),
            },
            (Builder::Utf8(b, Utf8Kind::ObjectId), kind::OBJECT_ID) => {
                let digits = hex(element.object_id());
                b.append_value(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
            }
            (_, kind::NULL | kind::UNDEFINED) => self.append_null(),
            (Builder::Int32(b), kind::INT32) => b.append_value(element.i32()),
            (Builder::Int64(b), kind::INT64) => b.append_value(element.i64()),
            (Builder::Int64(b), kind::INT32) => b.append_value(element.i32() as i64),
            (Builder::Double(b), kind::DOUBLE) => b.append_value(element.f64()),
            (Builder::Double(b), kind::INT32) => b.append_value(element.i32() as f64),
            (Builder::Bool(b), kind::BOOLEAN) => b.append_value(element.value[0] == 1),
            (Builder::Timestamp(b), kind::DATE_TIME) => b.append_value(element.i64()),
            (Builder::Binary(b), kind::BINARY) if element.value[4] != 0x02 => {
                b.append_value(&element.value[5..])
            }
            (Builder::Struct(s), kind::DOCUMENT) => s.append_document(element.value, cx)?,
            (Builder::List(l), kind::ARRAY) => l.append_array(element.value, cx)?,
            _ => match value_ref(&element, parent, index) {
                Ok(value) => self.append(value, cx)?,
                Err(e) => return cx.corrupt(e),
            },
        }
        Ok(())
    }

    /// Appends `value`; a value that does not fit appends NULL and is recorded.
    fn append<'p>(&mut self, value: RawBsonRef<'p>, cx: &mut DocContext<'p>) -> Result<(), ()> {
        if matches!(value, RawBsonRef::Null | RawBsonRef::Undefined) {
            self.append_null();
            return Ok(());
        }
        let fits = match (&mut *self, value) {
            (Builder::Utf8(b, Utf8Kind::Json), v) => {
                b.append_value(to_json(v));
                true
            }
            (Builder::Utf8(b, Utf8Kind::String), RawBsonRef::String(s)) => {
                b.append_value(s);
                true
            }
            (Builder::Utf8(b, Utf8Kind::ObjectId), RawBsonRef::ObjectId(oid)) => {
                let digits = hex(&oid.bytes());
                b.append_value(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
                true
            }
            (Builder::Utf8(b, Utf8Kind::DecimalText), RawBsonRef::Decimal128(d)) => {
                b.append_value(d.to_string());
                true
            }
            (Builder::Int32(b), RawBsonRef::Int32(v)) => {
                b.append_value(v);
                true
            }
            (Builder::Int64(b), RawBsonRef::Int64(v)) => {
                b.append_value(v);
                true
            }
            (Builder::Int64(b), RawBsonRef::Int32(v)) => {
                b.append_value(v as i64);
                true
            }
            (Builder::Double(b), RawBsonRef::Double(v)) => {
                b.append_value(v);
                true
            }
            (Builder::Double(b), RawBsonRef::Int32(v)) => {
                b.append_value(v as f64);
                true
            }
            // Only when the double holds the integer exactly.
            (Builder::Double(b), RawBsonRef::Int64(v))
                if (v as f64) as i64 == v && v.unsigned_abs() <= 1 << 53 =>
            {
                b.append_value(v as f64);
                true
            }
            (Builder::Bool(b), RawBsonRef::Boolean(v)) => {
                b.append_value(v);
                true
            }
            (Builder::Timestamp(b), RawBsonRef::DateTime(v)) => {
                b.append_value(v.timestamp_millis());
                true
            }
            (Builder::Decimal(b, precision, scale), v) => match decimal_value(v, *scale) {
                Some(x) if *precision as u32 >= digits(x.unsigned_abs()) => {
                    b.append_value(x);
                    true
                }
                _ => false,
            },
            (Builder::Binary(b), RawBsonRef::Binary(bin)) => {
                b.append_value(bin.bytes);
                true
            }
            (Builder::Struct(s), RawBsonRef::Document(d)) => {
                s.append_document(d.as_bytes(), cx)?;
                true
            }
            (Builder::List(l), RawBsonRef::Array(a)) => {
                l.append_array(a.as_bytes(), cx)?;
                true
            }
            _ => false,
        };
        if !fits {
            self.append_null();
            cx.mismatch(value, "does not fit the column's type")?;
        }
        Ok(())
    }

    /// The column so far; the builder starts again, sized for a batch like
    /// this one (so that it does not grow step by step through every batch).
    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Utf8(b, _) => {
                let (rows, bytes) = (b.len(), b.values_slice().len());
                Arc::new(std::mem::replace(b, StringBuilder::with_capacity(rows, bytes)).finish())
            }
            Builder::Int32(b) => {
                let rows = b.len();
                Arc::new(std::mem::replace(b, Int32Builder::with_capacity(rows)).finish())
            }
            Builder::Int64(b) => {
                let rows = b.len();
                Arc::new(std::mem::replace(b, Int64Builder::with_capacity(rows)).finish())
            }
            Builder::Double(b) => {
                let rows = b.len();
                Arc::new(std::mem::replace(b, Float64Builder::with_capacity(rows)).finish())
            }
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => {
                let next = TimestampMillisecondBuilder::with_capacity(b.len()).with_timezone("UTC");
                Arc::new(std::mem::replace(b, next).finish())
            }
            Builder::Decimal(b, _, _) => Arc::new(b.finish()),
            Builder::Binary(b) => {
                let (rows, bytes) = (b.len(), b.values_slice().len());
                Arc::new(std::mem::replace(b, BinaryBuilder::with_capacity(rows, bytes)).finish())
            }
            Builder::Struct(s) => Arc::new(s.finish()),
            Builder::List(l) => {
                let values = l.item.finish();
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                Arc::new(ListArray::new(
                    Arc::clone(&l.field),
                    OffsetBuffer::new(offsets.into()),
                    values,
                    l.nulls.finish(),
                ))
            }
        }
    }
}

impl StructBuilder {
    fn new(columns: &[Column]) -> Self {
        Self {
            fields: fields_of(columns),
            names: columns
                .iter()
                .map(|c| c.name.as_bytes().to_vec().into_boxed_slice())
                .collect(),
            index: columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.as_bytes().to_vec().into_boxed_slice(), i))
                .collect(),
            children: columns.iter().map(|c| Builder::new(&c.ty)).collect(),
            nulls: NullBufferBuilder::new(0),
            seen: vec![false; columns.len()],
        }
    }

    /// Appends one document given as its bytes (length prefix to final NUL).
    fn append_document<'p>(&mut self, doc: &'p [u8], cx: &mut DocContext<'p>) -> Result<(), ()> {
        // Only the root document looks for the key field.
        let key_column = if cx.path.is_empty() {
            cx.key_column
        } else {
            None
        };
        self.seen.fill(false);
        let mut elements = match Elements::new(doc) {
            Ok(e) => e,
            Err(e) => return cx.corrupt(e),
        };
        // Documents of a collection mostly share their field order: expect the
        // column after the last one matched before looking the name up.
        let mut hint = 0usize;
        let mut index = 0usize;
        loop {
            let (element, matched) = match elements.next_named(self.names.get(hint).map(|n| &**n)) {
                None => break,
                Some(Ok(pair)) => pair,
                // A corrupt document cannot be decoded further: always stop.
                Some(Err(e)) => return cx.corrupt(e),
            };
            let column = if matched {
                Some(hint)
            } else {
                self.index.get(element.name).copied()
            };
            match column {
                Some(i) if !self.seen[i] => {
                    self.seen[i] = true;
                    hint = i + 1;
                    cx.path.push(PathPart::Field(element.name));
                    if key_column == Some(i) {
                        match value_ref(&element, doc, index) {
                            Ok(v) => cx.key = Some(v),
                            Err(e) => return cx.corrupt(e),
                        }
                    }
                    self.children[i].append_element(element, doc, index, cx)?;
                }
                _ => {
                    // Not a schema name, so not known to be UTF-8 yet.
                    if let Err(e) = std::str::from_utf8(element.name) {
                        return cx.corrupt(format_args!("invalid UTF-8 in a field name: {e}"));
                    }
                    cx.path.push(PathPart::Field(element.name));
                    let value = match value_ref(&element, doc, index) {
                        Ok(v) => v,
                        Err(e) => return cx.corrupt(e),
                    };
                    if column.is_some() {
                        cx.mismatch(value, "repeats a field name in one document")?;
                    } else {
                        cx.mismatch(value, "is not in the schema")?;
                    }
                }
            }
            cx.path.pop();
            index += 1;
        }
        for (i, seen) in self.seen.iter().enumerate() {
            if !seen {
                self.children[i].append_null();
            }
        }
        self.nulls.append_non_null();
        Ok(())
    }

    fn finish(&mut self) -> StructArray {
        let columns: Vec<ArrayRef> = self.children.iter_mut().map(Builder::finish).collect();
        let nulls = self.nulls.finish();
        if self.fields.is_empty() {
            let len = nulls.as_ref().map(|n| n.len()).unwrap_or(0);
            return StructArray::new_empty_fields(len, nulls);
        }
        StructArray::new(self.fields.clone(), columns, nulls)
    }
}

impl ListBuilder {
    /// Appends one array given as its bytes (a document keyed "0", "1", …; the
    /// keys are not checked).
    fn append_array<'p>(&mut self, array: &'p [u8], cx: &mut DocContext<'p>) -> Result<(), ()> {
        let elements = match Elements::new(array) {
            Ok(e) => e,
            Err(e) => return cx.corrupt(e),
        };
        let mut n = 0i32;
        for (i, item) in elements.enumerate() {
            let item = match item {
                Ok(v) => v,
                Err(e) => return cx.corrupt(e),
            };
            cx.path.push(PathPart::Index(i));
            let outcome = self.item.append_element(item, array, i, cx);
            cx.path.pop();
            outcome?;
            n += 1;
        }
        let last = *self.offsets.last().expect("offsets start with 0");
        self.offsets.push(last + n);
        self.nulls.append_non_null();
        Ok(())
    }
}

/// The 24 hex digits of an ObjectId, without allocating.
fn hex(bytes: &[u8; 12]) -> [u8; 24] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 24];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    out
}

/// Sign, coefficient and exponent of a finite Decimal128 (IEEE 754 BID).
pub fn decimal_parts(d: Decimal128) -> Option<(bool, u128, i32)> {
    let bits = u128::from_le_bytes(d.bytes());
    let negative = bits >> 127 == 1;
    let combination = (bits >> 122) & 0x1f;
    if combination == 0x1e || combination == 0x1f {
        return None; // infinity or NaN
    }
    let (exponent, coefficient) = if (bits >> 125) & 0b11 == 0b11 {
        // The "large coefficient" form always exceeds 10^34 - 1: non-canonical, zero.
        (((bits >> 111) & 0x3fff) as i32, 0)
    } else {
        let c = bits & ((1u128 << 113) - 1);
        let c = if c >= 10u128.pow(34) { 0 } else { c };
        (((bits >> 113) & 0x3fff) as i32, c)
    };
    Some((negative, coefficient, exponent - 6176))
}

/// The unscaled Decimal128(_, scale) value of a BSON number, when exact.
fn decimal_value(value: RawBsonRef<'_>, scale: i8) -> Option<i128> {
    let (negative, coefficient, exponent) = match value {
        RawBsonRef::Decimal128(d) => decimal_parts(d)?,
        RawBsonRef::Int32(v) => (v < 0, v.unsigned_abs() as u128, 0),
        RawBsonRef::Int64(v) => (v < 0, v.unsigned_abs() as u128, 0),
        _ => return None,
    };
    let shift = exponent + scale as i32;
    let magnitude = if shift >= 0 {
        coefficient.checked_mul(10u128.checked_pow(shift as u32)?)?
    } else {
        let divisor = 10u128.checked_pow((-shift) as u32)?;
        if coefficient % divisor != 0 {
            return None; // would lose digits
        }
        coefficient / divisor
    };
    let magnitude = i128::try_from(magnitude).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

fn digits(mut v: u128) -> u32 {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// The key value encoded so that comparing the bytes compares the values in
/// MongoDB's sort order (type bracket first, then the value), for the types a key
/// can reasonably have. `None` for a type sluice does not order (documents,
/// arrays, …).
pub fn sort_key(value: RawBsonRef<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(16);
    sort_key_into(value, &mut out).then_some(out)
}

/// [`sort_key`] written into `out` (cleared first); `false` for a type sluice
/// does not order.
fn sort_key_into(value: RawBsonRef<'_>, out: &mut Vec<u8>) -> bool {
    // MongoDB's brackets: numbers < strings < objects < arrays < binary < ObjectId
    // < bool < date.
    out.clear();
    match value {
        RawBsonRef::Int32(_) | RawBsonRef::Int64(_) | RawBsonRef::Double(_) => {
            let (as_f64, as_i64) = match value {
                RawBsonRef::Int32(v) => (v as f64, v as i64),
                RawBsonRef::Int64(v) => (v as f64, v),
                RawBsonRef::Double(v) => (v, v as i64),
                _ => unreachable!(),
            };
            if as_f64.is_nan() {
                return false;
            }
            out.push(10);
            let bits = as_f64.to_bits();
            let ordered = if as_f64.is_sign_negative() {
                !bits
            } else {
                bits | (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
            // Ties between large integers that round to the same double.
            out.extend_from_slice(&((as_i64 as u64) ^ (1 << 63)).to_be_bytes());
        }
        RawBsonRef::String(s) => {
            out.push(20);
            out.extend_from_slice(s.as_bytes());
        }
        RawBsonRef::Binary(b) => {
            out.push(50);
            out.extend_from_slice(&(b.bytes.len() as u32).to_be_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(b.bytes);
        }
        RawBsonRef::ObjectId(oid) => {
            out.push(60);
            out.extend_from_slice(&oid.bytes());
        }
        RawBsonRef::Boolean(b) => {
            out.push(70);
            out.push(b as u8);
        }
        RawBsonRef::DateTime(d) => {
            out.push(80);
            out.extend_from_slice(&((d.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes());
        }
        _ => return false,
    }
    true
}

/// The `_id` of a document for messages: its JSON, or a note when it has none.
pub fn describe_id(doc: &RawDocument) -> String {
    match doc.get("_id") {
        Ok(Some(id)) => to_json(id),
        _ => "(no _id)".to_string(),
    }
}

/// Decodes raw documents into record batches of one schema.
pub struct Decoder {
    schema: DocumentSchema,
    arrow: SchemaRef,
    root: StructBuilder,
    /// The root column of the key field, when the schema has it.
    key_column: Option<usize>,
    overflow: StringBuilder,
    keys: BinaryBuilder,
    hashes: UInt64Builder,
    /// The `_key` of the last document appended.
    last_key: Vec<u8>,
    /// The allocation of the per-document field path, kept across documents.
    path: Vec<PathPart<'static>>,
    rows: usize,
    bytes: usize,
    collection: String,
}

impl Decoder {
    pub fn new(schema: DocumentSchema, collection: &str) -> Self {
        Self {
            arrow: schema.arrow_schema(),
            root: StructBuilder::new(&schema.columns),
            key_column: schema.columns.iter().position(|c| c.name == schema.key),
            schema,
            overflow: StringBuilder::new(),
            keys: BinaryBuilder::new(),
            hashes: UInt64Builder::new(),
            last_key: Vec::with_capacity(16),
            path: Vec::with_capacity(8),
            rows: 0,
            bytes: 0,
            collection: collection.to_string(),
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.arrow
    }

    /// Documents buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// BSON bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The `_key` ([`sort_key`] of the key field) of the last document appended.
    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Appends one document. On an error (a mismatch under `on_mismatch =
    /// "error"`, a missing or unorderable key, corrupt BSON) the builders are left
    /// in an unusable state: drop the decoder.
    pub fn append(&mut self, doc: &RawDocument) -> std::result::Result<(), String> {
        let mut cx = DocContext {
            path: recycle(std::mem::take(&mut self.path)),
            mismatches: Vec::new(),
            stop_at_first: self.schema.on_mismatch == MismatchPolicy::Error,
            key_column: self.key_column,
            key: None,
        };
        let outcome = self.root.append_document(doc.as_bytes(), &mut cx);
        self.path = recycle(std::mem::take(&mut cx.path));
        // The key is checked first, so that its errors win over the fields'.
        let key = match (self.key_column, cx.key) {
            (Some(_), Some(v)) => Ok(Some(v)),
            // Not in the schema (or not reached, corrupt): ask the document.
            _ => doc.get(&self.schema.key),
        };
        match key {
            Ok(Some(v)) => {
                if !sort_key_into(v, &mut self.last_key) {
                    return Err(format!(
                        "collection {}: document _id {}: key field {:?} has a type sluice cannot order ({}); use ObjectId, string, number, date, bool or binary keys",
                        self.collection,
                        describe_id(doc),
                        self.schema.key,
                        to_json(v)
                    ));
                }
            }
            Ok(None) if outcome.is_ok() => {
                return Err(format!(
                    "collection {}: document _id {} has no key field {:?}",
                    self.collection,
                    describe_id(doc),
                    self.schema.key
                ))
            }
            Ok(None) => {}
            Err(e) => {
                return Err(format!(
                    "collection {}: document _id {} is not valid BSON: {e}",
                    self.collection,
                    describe_id(doc)
                ))
            }
        }
        if outcome.is_err() || (cx.stop_at_first && !cx.mismatches.is_empty()) {
            let m = cx.mismatches.first();
            return Err(format!(
                "collection {}: document _id {}: field {:?} {}{}",
                self.collection,
                describe_id(doc),
                m.map(|m| m.path.as_str()).unwrap_or(""),
                m.map(|m| m.reason.as_str())
                    .unwrap_or("could not be decoded"),
                m.filter(|m| !m.json.is_empty())
                    .map(|m| format!(": {}", truncate(&m.json, 200)))
                    .unwrap_or_default()
            ));
        }
        if self.schema.on_mismatch == MismatchPolicy::Overflow {
            if cx.mismatches.is_empty() {
                self.overflow.append_null();
            } else {
                let mut object = String::from("{");
                for (i, m) in cx.mismatches.iter().enumerate() {
                    if i > 0 {
                        object.push(',');
                    }
                    object.push_str(&serde_json::Value::String(m.path.clone()).to_string());
                    object.push(':');
                    object.push_str(&m.json);
                }
                object.push('}');
                self.overflow.append_value(object);
            }
        }
        self.keys.append_value(&self.last_key);
        self.hashes
            .append_value(twox_hash::XxHash3_64::oneshot(doc.as_bytes()));
        self.rows += 1;
        self.bytes += doc.as_bytes().len();
        Ok(())
    }

    /// The buffered documents as a batch; the decoder is empty again.
    pub fn flush(&mut self) -> Result<RecordBatch, String> {
        let root = self.root.finish();
        let (_, mut columns, _) = root.into_parts();
        if self.schema.on_mismatch == MismatchPolicy::Overflow {
            columns.push(Arc::new(self.overflow.finish()));
        }
        let (rows, key_bytes) = (self.keys.len(), self.keys.values_slice().len());
        let mut keys = std::mem::replace(
            &mut self.keys,
            BinaryBuilder::with_capacity(rows, key_bytes),
        );
        columns.push(Arc::new(keys.finish()));
        let mut hashes = std::mem::replace(&mut self.hashes, UInt64Builder::with_capacity(rows));
        columns.push(Arc::new(hashes.finish()));
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(Arc::clone(&self.arrow), columns).map_err(|e| e.to_string())
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Where to read: a collection of the database named in the source URL.
#[derive(Debug, Clone)]
pub struct CollectionSource {
    pub url: String,
    pub collection: String,
}

impl CollectionSource {
    async fn collection(&self, table: &str) -> Result<mongodb::Collection<RawDocumentBuf>> {
        let client = mongodb::Client::with_uri_str(&self.url)
            .await
            .map_err(|e| Error::source(table, crate::error::chain(&e)))?;
        let db = client.default_database().ok_or_else(|| {
            Error::source(
                table,
                "the MongoDB source URL names no database (mongodb://host:27017/DATABASE)",
            )
        })?;
        Ok(db.collection::<RawDocumentBuf>(&self.collection))
    }

    /// Reads up to `n` documents in natural order, for schema inference.
    pub async fn sample(&self, table: &str, n: usize) -> Result<Vec<RawDocumentBuf>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let coll = self.collection(table).await?;
        let mut cursor = coll
            .find(doc! {})
            .limit(n as i64)
            .await
            .map_err(|e| Error::source(table, crate::error::chain(&e)))?;
        let mut out = Vec::new();
        while cursor
            .advance()
            .await
            .map_err(|e| Error::source(table, crate::error::chain(&e)))?
        {
            out.push(cursor.current().to_raw_document_buf());
        }
        Ok(out)
    }

    /// Streams the whole collection, sorted by the schema's key field, as batches
    /// of at most `batch_rows` documents or [`BATCH_BYTES`] bytes.
    ///
    /// The driver runs in a task feeding a bounded channel; the stream ends with an
    /// error if the task fails or panics, never with a silent end of data.
    pub async fn read(
        &self,
        table: &str,
        schema: DocumentSchema,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let coll = self.collection(table).await?;
        self.read_filters(table, &coll, schema, batch_rows, vec![doc! {}])
            .await
    }

    /// Streams the whole collection as [`CollectionSource::read`] does, with up
    /// to `parallelism` cursors each reading one range of the key field at once
    /// (snapshot mode: batches of different ranges interleave, so the stream as a
    /// whole is not in key order; each range is, and keys are still checked
    /// unique). Falls back to one cursor for a collection of at most `batch_rows`
    /// documents or whose keys are not all of one orderable type.
    ///
    /// Memory: each cursor holds at most one batch being decoded plus the
    /// driver's current server batch; the cursors share one bounded channel of
    /// finished batches.
    pub async fn read_parallel(
        &self,
        table: &str,
        schema: DocumentSchema,
        batch_rows: usize,
        parallelism: usize,
    ) -> Result<BatchStream> {
        let coll = self.collection(table).await?;
        let filters = if parallelism > 1 {
            key_ranges(table, &coll, &schema.key, parallelism, batch_rows).await?
        } else {
            vec![doc! {}]
        };
        self.read_filters(table, &coll, schema, batch_rows, filters)
            .await
    }

    /// One cursor per filter, sorted by key, each decoded in its own task into
    /// one bounded channel.
    async fn read_filters(
        &self,
        table: &str,
        coll: &mongodb::Collection<RawDocumentBuf>,
        schema: DocumentSchema,
        batch_rows: usize,
        filters: Vec<Document>,
    ) -> Result<BatchStream> {
        let arrow_schema = schema.arrow_schema();
        let (tx, mut rx) = mpsc::channel::<Result<Option<RecordBatch>>>(CHANNEL_BATCHES);
        let readers = filters.len();
        for filter in filters {
            let key = schema.key.clone();
            let cursor = coll
                .find(filter)
                .sort(doc! { key.as_str(): 1 })
                .allow_disk_use(true)
                .batch_size(batch_rows.min(10_000) as u32)
                .await
                .map_err(|e| Error::source(table, crate::error::chain(&e)))?;
            let decoder = Decoder::new(schema.clone(), &self.collection);
            let producer = read_cursor(table.to_string(), cursor, decoder, batch_rows, tx.clone());
            let error_tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = producer.await {
                    let _ = error_tx.send(Err(e)).await;
                }
            });
        }
        drop(tx);
        let table_name = table.to_string();
        let mut ended = 0usize;
        let mut done = false;
        let batches = futures::stream::poll_fn(move |cx| {
            use std::task::Poll;
            loop {
                if done {
                    return Poll::Ready(None);
                }
                return match rx.poll_recv(cx) {
                    Poll::Ready(Some(Ok(Some(batch)))) => Poll::Ready(Some(Ok(batch))),
                    Poll::Ready(Some(Ok(None))) => {
                        ended += 1;
                        if ended == readers {
                            done = true;
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        done = true;
                        Poll::Ready(Some(Err(e)))
                    }
                    // Every task ended, one without its end marker: it panicked.
                    Poll::Ready(None) => {
                        done = true;
                        Poll::Ready(Some(Err(Error::source(
                            &table_name,
                            "the MongoDB reader stopped before the end of the collection",
                        ))))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
        });
        Ok(BatchStream {
            schema: arrow_schema,
            batches: Box::pin(batches),
        })
    }
}

/// Decodes one cursor into batches sent on `tx`, then its end marker
/// (`Ok(None)`). An `Err` is for the caller to send.
async fn read_cursor(
    name: String,
    mut cursor: mongodb::Cursor<RawDocumentBuf>,
    mut decoder: Decoder,
    batch_rows: usize,
    tx: mpsc::Sender<Result<Option<RecordBatch>>>,
) -> Result<()> {
    let mut last_key: Option<Vec<u8>> = None;
    loop {
        let more = cursor
            .advance()
            .await
            .map_err(|e| Error::source(&name, crate::error::chain(&e)))?;
        if more {
            let doc = cursor.current();
            decoder.append(doc).map_err(|e| Error::source(&name, e))?;
            // The diff merge-joins on `_key`: check the server's order is ours,
            // and that the key is unique.
            let key_now = decoder.last_key();
            if let Some(prev) = &last_key {
                if prev.as_slice() >= key_now {
                    return Err(Error::source(
                        &name,
                        format!(
                            "document _id {}: key field {:?} {} (sluice needs one document per key, in MongoDB's sort order)",
                            describe_id(doc),
                            decoder.schema.key,
                            if prev.as_slice() == key_now { "is not unique" } else { "arrived out of order" }
                        ),
                    ));
                }
            }
            match &mut last_key {
                Some(prev) => {
                    prev.clear();
                    prev.extend_from_slice(key_now);
                }
                None => last_key = Some(key_now.to_vec()),
            }
        }
        if decoder.rows() > 0
            && (!more || decoder.rows() >= batch_rows || decoder.bytes() >= BATCH_BYTES)
        {
            let batch = decoder.flush().map_err(|e| Error::source(&name, e))?;
            if tx.send(Ok(Some(batch))).await.is_err() {
                return Ok(()); // the pipeline stopped reading
            }
        }
        if !more {
            let _ = tx.send(Ok(None)).await;
            return Ok(());
        }
    }
}

/// Documents sampled per range to place the range boundaries.
const SAMPLE_PER_RANGE: usize = 64;

/// Filters that split the collection into up to `n` disjoint ranges of `key`
/// whose union is the whole collection, or one empty filter when it cannot be
/// split safely.
///
/// MongoDB's `$lt`/`$gte` only match values of the bound's type bracket, so the
/// ranges cover the collection only if every key is of one bracket: that holds
/// when the lowest and the highest key (two index lookups on `_id`) are. Then
/// boundaries are quantiles of a `$sample` of the keys: ranges are about equal,
/// not exactly. Both work on MongoDB and SecantusDB (which has no
/// `splitVector`).
async fn key_ranges(
    table: &str,
    coll: &mongodb::Collection<RawDocumentBuf>,
    key: &str,
    n: usize,
    batch_rows: usize,
) -> Result<Vec<Document>> {
    let fail = |e: mongodb::error::Error| Error::source(table, crate::error::chain(&e));
    let whole = vec![doc! {}];
    let count = coll.estimated_document_count().await.map_err(fail)?;
    if count <= batch_rows as u64 {
        return Ok(whole);
    }
    let end = |direction: i32| {
        coll.find_one(doc! {})
            .sort(doc! { key: direction })
            .projection(doc! { key: 1 })
    };
    let (Some(low), Some(high)) = (end(1).await.map_err(fail)?, end(-1).await.map_err(fail)?)
    else {
        return Ok(whole);
    };
    let bracket = |d: &RawDocument| {
        d.get(key)
            .ok()
            .flatten()
            .and_then(sort_key)
            .map(|k| (k[0], k))
    };
    let (Some((low_bracket, low_key)), Some((high_bracket, _))) = (bracket(&low), bracket(&high))
    else {
        return Ok(whole);
    };
    if low_bracket != high_bracket {
        info!(
            table,
            key, "Keys of more than one type: reading with one cursor."
        );
        return Ok(whole);
    }
    let mut sample = coll
        .aggregate(vec![
            doc! { "$sample": { "size": (SAMPLE_PER_RANGE * n) as i64 } },
            doc! { "$project": { key: 1 } },
        ])
        .with_type::<RawDocumentBuf>()
        .await
        .map_err(fail)?;
    let mut keys: Vec<(Vec<u8>, Bson)> = Vec::new();
    while let Some(d) = sample.try_next().await.map_err(fail)? {
        let Ok(Some(value)) = d.get(key) else {
            continue;
        };
        let Some(sort) = sort_key(value) else {
            continue;
        };
        if sort[0] != low_bracket || sort <= low_key {
            continue;
        }
        if let Ok(value) = Bson::try_from(value) {
            keys.push((sort, value));
        }
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys.dedup_by(|a, b| a.0 == b.0);
    let mut bounds: Vec<Bson> = Vec::new();
    let mut last: Option<&[u8]> = None;
    for i in 1..n {
        let Some((sort, value)) = keys.get(i * keys.len() / n) else {
            continue;
        };
        if last.is_some_and(|l| l >= sort.as_slice()) {
            continue;
        }
        last = Some(sort);
        bounds.push(value.clone());
    }
    if bounds.is_empty() {
        return Ok(whole);
    }
    let mut filters = Vec::with_capacity(bounds.len() + 1);
    filters.push(doc! { key: { "$lt": bounds[0].clone() } });
    for pair in bounds.windows(2) {
        filters.push(doc! { key: { "$gte": pair[0].clone(), "$lt": pair[1].clone() } });
    }
    filters.push(doc! { key: { "$gte": bounds[bounds.len() - 1].clone() } });
    info!(
        table,
        ranges = filters.len(),
        sampled = keys.len(),
        "Reading key ranges in parallel."
    );
    Ok(filters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use arrow::util::pretty::pretty_format_batches;
    use mongodb::bson::{oid::ObjectId, rawdoc, Binary, DateTime};

    fn schema(docs: &[RawDocumentBuf], policy: MismatchPolicy) -> DocumentSchema {
        DocumentSchema::infer(
            docs.iter().map(|d| d.as_ref()),
            &[],
            NestedMode::Struct,
            policy,
            "_id",
        )
    }

    #[test]
    fn decodes_every_type_and_widens_mixed_numbers() {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let docs = vec![
            rawdoc! {
                "_id": oid, "i": 1i32, "l": 5_000_000_000i64, "d": 1.5, "n": 1i32,
                "b": true, "t": DateTime::from_millis(-86_400_000),
                "dec": "12.34".parse::<Decimal128>().unwrap(),
                "bin": Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![0xff, 0xfe] },
                "doc": { "a": 1i32, "s": "x" }, "arr": [1i32, 2i32],
            },
            rawdoc! { "_id": "k2", "n": 2.25, "doc": { "a": 2i32 }, "arr": [] },
        ];
        let s = schema(&docs, MismatchPolicy::Overflow);
        let types: Vec<_> = s
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.ty.arrow().to_string()))
            .collect();
        assert_eq!(
            types[0],
            ("_id", "Utf8".to_string()),
            "mixed _id types are JSON"
        );
        assert!(types.contains(&("n", "Float64".to_string())), "{types:?}");
        assert!(
            types.contains(&("dec", "Decimal128(38, 2)".to_string())),
            "{types:?}"
        );
        let mut d = Decoder::new(s, "c");
        for doc in &docs {
            d.append(doc).unwrap();
        }
        let batch = d.flush().unwrap();
        let text =
            pretty_format_batches(&[batch.project(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]).unwrap()])
                .unwrap()
                .to_string();
        assert!(text.contains("1969-12-31T00:00:00Z"), "{text}");
        assert!(text.contains("12.34"), "{text}");
        assert!(text.contains("fffe"), "{text}");
        assert!(text.contains("{a: 1, s: x}"), "{text}");
        assert!(text.contains("[1, 2]") && text.contains("[]"), "{text}");
    }

    #[test]
    fn mismatches_go_to_overflow_or_fail_naming_the_field() {
        let docs = vec![rawdoc! { "_id": 1i32, "age": 30i32 }];
        let late = rawdoc! { "_id": 2i32, "age": "thirty", "extra": { "x": 1i32 } };
        let mut d = Decoder::new(schema(&docs, MismatchPolicy::Overflow), "users");
        d.append(&docs[0]).unwrap();
        d.append(&late).unwrap();
        let batch = d.flush().unwrap();
        let overflow = batch.column_by_name(OVERFLOW_COLUMN).unwrap();
        let overflow = overflow
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert!(overflow.is_null(0));
        assert_eq!(overflow.value(1), r#"{"age":"thirty","extra":{"x":1}}"#);

        let mut d = Decoder::new(schema(&docs, MismatchPolicy::Error), "users");
        let err = d.append(&late).unwrap_err();
        assert!(
            err.contains("collection users") && err.contains("_id 2") && err.contains("\"age\""),
            "{err}"
        );
    }

    #[test]
    fn missing_key_and_wide_decimals() {
        let docs = vec![rawdoc! { "_id": 1i32, "v": "1E+40".parse::<Decimal128>().unwrap() }];
        let s = schema(&docs, MismatchPolicy::Overflow);
        assert_eq!(s.columns[1].ty, ColumnType::DecimalText);
        let mut d = Decoder::new(s, "c");
        let err = d.append(&rawdoc! { "v": 1i32 }).unwrap_err();
        assert!(err.contains("no key field \"_id\""), "{err}");
    }

    fn decode_one(
        schema_docs: &[RawDocumentBuf],
        doc: &RawDocument,
    ) -> Result<RecordBatch, String> {
        let mut d = Decoder::new(schema(schema_docs, MismatchPolicy::Overflow), "c");
        d.append(doc)?;
        d.flush()
    }

    #[test]
    fn invalid_utf8_and_corrupt_values_name_the_document() {
        let good = rawdoc! { "_id": 7i32, "name": "abc", "sub": { "x": "yz" } };
        // Bytes of "abc" and "yz" replaced by invalid UTF-8.
        let mut bytes = good.as_bytes().to_vec();
        let at = bytes.windows(3).position(|w| w == b"abc").unwrap();
        bytes[at] = 0xff;
        let doc = RawDocument::from_bytes(&bytes).unwrap();
        let err = decode_one(std::slice::from_ref(&good), doc).unwrap_err();
        assert!(
            err.contains("_id 7") && err.contains("\"name\"") && err.contains("UTF-8"),
            "{err}"
        );
        let mut bytes = good.as_bytes().to_vec();
        let at = bytes.windows(2).position(|w| w == b"yz").unwrap();
        bytes[at + 1] = 0xc3;
        let err = decode_one(
            std::slice::from_ref(&good),
            RawDocument::from_bytes(&bytes).unwrap(),
        )
        .unwrap_err();
        assert!(err.contains("\"sub.x\"") && err.contains("UTF-8"), "{err}");

        // A field the schema does not have, with an invalid UTF-8 name.
        let extra = rawdoc! { "_id": 8i32, "zz": 1i32 };
        let mut bytes = extra.as_bytes().to_vec();
        let at = bytes.windows(2).position(|w| w == b"zz").unwrap();
        bytes[at] = 0xfe;
        let err = decode_one(
            std::slice::from_ref(&good),
            RawDocument::from_bytes(&bytes).unwrap(),
        )
        .unwrap_err();
        assert!(
            err.contains("_id 8") && err.contains("not valid BSON"),
            "{err}"
        );

        // The embedded document's length lies (points past its parent).
        let mut bytes = good.as_bytes().to_vec();
        let at = bytes.windows(4).position(|w| w == b"sub\0").unwrap() + 4;
        bytes[at] = 0x7f;
        let err = decode_one(
            std::slice::from_ref(&good),
            RawDocument::from_bytes(&bytes).unwrap(),
        )
        .unwrap_err();
        assert!(
            err.contains("_id 7") && err.contains("not valid BSON"),
            "{err}"
        );
    }

    #[test]
    fn every_corrupted_byte_is_an_error_or_a_row_never_a_panic() {
        let docs = vec![rawdoc! {
            "_id": ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap(), "s": "text",
            "n": 5i32, "d": { "a": [1i32, 2i32], "b": "x" }, "l": [{ "k": 1.5 }],
            "j": mongodb::bson::Regex { pattern: "p".into(), options: "i".into() },
        }];
        let bytes = docs[0].as_bytes().to_vec();
        for policy in [MismatchPolicy::Overflow, MismatchPolicy::Error] {
            for i in 4..bytes.len() - 1 {
                for v in [0u8, 1, 2, 3, 4, 5, 0x0b, 0x10, 0x7f, 0x80, 0xff] {
                    let mut bad = bytes.clone();
                    bad[i] = v;
                    let doc = RawDocument::from_bytes(&bad).unwrap();
                    let mut d = Decoder::new(schema(&docs, policy), "c");
                    if d.append(doc).is_ok() {
                        assert_eq!(d.flush().unwrap().num_rows(), 1);
                    }
                }
            }
        }
    }

    #[test]
    fn rare_types_and_reordered_fields_decode_like_common_ones() {
        let docs = vec![
            rawdoc! {
                "_id": 1i32, "a": "x", "b": 2i64, "j": [1i32, "two"],
                "re": mongodb::bson::Regex { pattern: "p".into(), options: "i".into() },
                "ts": mongodb::bson::Timestamp { time: 5, increment: 6 },
            },
            rawdoc! { "ts": mongodb::bson::Timestamp { time: 7, increment: 8 }, "b": 3i32, "a": "y", "_id": 2i32, "new": true },
        ];
        let mut d = Decoder::new(schema(&docs[..1], MismatchPolicy::Overflow), "c");
        for doc in &docs {
            d.append(doc).unwrap();
            assert_eq!(
                d.last_key(),
                sort_key(doc.get("_id").unwrap().unwrap()).unwrap()
            );
        }
        let batch = d.flush().unwrap();
        let text = pretty_format_batches(&[batch.project(&[0, 1, 2, 3, 4, 5, 6]).unwrap()])
            .unwrap()
            .to_string();
        for expected in [
            r#"| 1   | x | 2 | [1, "two"]"#,
            "| 2   | y | 3 |",
            r#"{"$regularExpression":{"pattern":"p","options":"i"}}"#,
            r#"{"$timestamp":{"t":7,"i":8}}"#,
            r#"{"new":true}"#,
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }

    #[test]
    fn sort_key_orders_like_mongodb() {
        let values = [
            rawdoc! { "v": -2.5 },
            rawdoc! { "v": 1i32 },
            rawdoc! { "v": 2i64 },
            rawdoc! { "v": "a" },
            rawdoc! { "v": "ab" },
            rawdoc! { "v": ObjectId::parse_str("000000000000000000000001").unwrap() },
            rawdoc! { "v": ObjectId::parse_str("100000000000000000000000").unwrap() },
        ];
        let keys: Vec<_> = values
            .iter()
            .map(|d| sort_key(d.get("v").unwrap().unwrap()).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
