//! BSON values into Arrow column builders, one builder per schema column
//! (structs and lists nest), with the per-document state that records values
//! that do not fit their column. One cohesive thing: the value-level half of
//! the decoder, every BSON type against every column type.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::builder::{ArrayBuilder, NullBufferBuilder};
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Decimal128Builder, Float64Builder, Int32Builder,
    Int64Builder, ListArray, StringBuilder, StructArray, TimestampMillisecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{Field, FieldRef, Fields};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::raw::{RawBinaryRef, RawBsonRef, RawDocument};
use mongodb::bson::{Bson, DateTime, Decimal128};

use super::scan::{kind, Element, Elements};
use crate::config::mongo_types::{fields_of, Column, ColumnType};

/// A value that did not fit: where, and what it was.
pub(super) struct Mismatch {
    pub(super) path: String,
    pub(super) json: String,
    pub(super) reason: String,
}

/// Per-document decoding state.
pub(super) struct DocContext<'p> {
    /// Field names from the root to the value being decoded.
    pub(super) path: Vec<PathPart<'p>>,
    pub(super) mismatches: Vec<Mismatch>,
    /// The policy; with `Error` the first mismatch stops the document.
    pub(super) stop_at_first: bool,
    /// The root column of the key field, whose value is captured in `key`.
    pub(super) key_column: Option<usize>,
    pub(super) key: Option<RawBsonRef<'p>>,
}

#[derive(Clone, Copy)]
pub(super) enum PathPart<'p> {
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
pub(super) fn recycle<'a, 'b>(mut path: Vec<PathPart<'a>>) -> Vec<PathPart<'b>> {
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

pub(super) struct StructBuilder {
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
    pub(super) fn new(columns: &[Column]) -> Self {
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
    pub(super) fn append_document<'p>(
        &mut self,
        doc: &'p [u8],
        cx: &mut DocContext<'p>,
    ) -> Result<(), ()> {
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

    pub(super) fn finish(&mut self) -> StructArray {
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

/// Decimal digits of `v` (1 for 0).
pub(super) fn digits(mut v: u128) -> u32 {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}
