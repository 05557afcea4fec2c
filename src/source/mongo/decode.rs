//! Raw documents into record batches of one [`DocumentSchema`]: the columns, the
//! `_overflow` JSON of values that did not fit (or an error naming the field),
//! `_key` and `_hash`.

use std::sync::Arc;

use arrow::array::builder::ArrayBuilder;
use arrow::array::{BinaryBuilder, StringBuilder, UInt64Builder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use mongodb::bson::raw::RawDocument;

use super::builder::{recycle, to_json, DocContext, PathPart, StructBuilder};
use super::key::sort_key_into;
use super::schema::DocumentSchema;
use crate::config::MismatchPolicy;

/// The `_id` of a document for messages: its JSON, or a note when it has none.
pub fn describe_id(doc: &RawDocument) -> String {
    match doc.get("_id") {
        Ok(Some(id)) => to_json(id),
        _ => "(no _id)".to_string(),
    }
}

/// Decodes raw documents into record batches of one schema.
pub struct Decoder {
    pub(super) schema: DocumentSchema,
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

    /// The `_key` ([`sort_key`](super::sort_key) of the key field) of the last
    /// document appended.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mongo_types::ColumnType;
    use crate::config::NestedMode;
    use crate::source::mongo::{sort_key, OVERFLOW_COLUMN};
    use arrow::array::Array;
    use arrow::util::pretty::pretty_format_batches;
    use mongodb::bson::raw::RawDocumentBuf;
    use mongodb::bson::{oid::ObjectId, rawdoc, Binary, DateTime, Decimal128};

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
}
