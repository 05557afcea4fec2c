//! BSON → Arrow decoding alone: raw documents already fetched, decoded by the
//! MongoDB source's [`Decoder`] into 64K-document record batches on one core.
//!
//! Two shapes: the issue's `users` documents (ObjectId and five short strings) and
//! a nested, array-heavy order document (sub-documents, arrays of strings, ints and
//! documents, a date and a double). With `SLUICE_BENCH_BSON_DIR` set, the documents
//! are read from `users.bson` and `nested.bson` in that folder (concatenated raw
//! BSON, as benches/mongo_decode_vs_pymongoarrow.sh writes them, so both sides
//! decode the same bytes); otherwise the benchmark makes 1,000,000 of each itself.
//!
//! The schema is what the pipeline infers from the first 1,000 documents.
//! Throughput is in documents (criterion's `elem/s`).
//!
//! `SLUICE_BENCH_ONCE=DOCS` skips criterion: each shape's first DOCS documents
//! are decoded once, for instruction counts under
//! `valgrind --tool=callgrind` (see benches/README.md).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{rawdoc, DateTime, RawArrayBuf, RawDocument, RawDocumentBuf};
use sluice::config::{MismatchPolicy, NestedMode};
use sluice::source::mongo::{Decoder, DocumentSchema};

/// Documents per shape when the benchmark makes them itself.
const DOCS: usize = 1_000_000;
/// The pipeline's default `batch_rows`.
const BATCH_ROWS: usize = 64 * 1024;

const FIRST: [&str; 8] = [
    "Ada", "Chinedu", "Ngozi", "Tunde", "Amaka", "Emeka", "Folake", "Ifeanyi",
];
const LAST: [&str; 8] = [
    "Obi", "Okafor", "Adeyemi", "Balogun", "Eze", "Nwosu", "Bello", "Okonkwo",
];
const JOBS: [&str; 6] = [
    "Engineer",
    "Teacher",
    "Doctor",
    "Trader",
    "Farmer",
    "Accountant",
];
const STATES: [&str; 6] = ["Lagos", "Abuja", "Kano", "Oyo", "Rivers", "Enugu"];

fn oid(i: usize) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&0x6650_0000u32.to_be_bytes());
    bytes[4..].copy_from_slice(&(i as u64).to_be_bytes());
    ObjectId::from_bytes(bytes)
}

fn user(i: usize) -> RawDocumentBuf {
    rawdoc! {
        "_id": oid(i),
        "_Uid": format!("UID{:08}", i + 1),
        "firstName": FIRST[i % 8],
        "lastName": LAST[(i / 8) % 8],
        "occupation": JOBS[i % 6],
        "state": STATES[(i / 6) % 6],
    }
}

fn nested(i: usize) -> RawDocumentBuf {
    let mut tags = RawArrayBuf::new();
    for t in 0..5 {
        tags.push(format!("tag{}", (i + t) % 50));
    }
    let mut scores = RawArrayBuf::new();
    for s in 0..10 {
        scores.push(((i * 7 + s * 13) % 1000) as i32);
    }
    let mut items = RawArrayBuf::new();
    for n in 0..3 {
        items.push(rawdoc! {
            "sku": format!("SKU-{:05}", (i + n) % 10_000),
            "qty": (n + 1) as i32,
            "price": 100.0 + ((i + n) % 997) as f64 / 4.0,
        });
    }
    rawdoc! {
        "_id": oid(i),
        "customer": {
            "name": format!("{} {}", FIRST[i % 8], LAST[(i / 8) % 8]),
            "address": {
                "street": format!("{} Marina Road", i % 500),
                "city": STATES[i % 6],
                "geo": { "lat": 6.45 + (i % 100) as f64 / 1000.0, "lng": 3.39 },
            },
        },
        "tags": tags,
        "scores": scores,
        "items": items,
        "created": DateTime::from_millis(1_700_000_000_000 + i as i64 * 1000),
        "total": 300.0 + (i % 991) as f64,
    }
}

/// Concatenated raw BSON: the documents' bytes, one after the other.
fn load(file: &str, make: fn(usize) -> RawDocumentBuf, docs: usize) -> Vec<u8> {
    if let Ok(dir) = std::env::var("SLUICE_BENCH_BSON_DIR") {
        let path = std::path::Path::new(&dir).join(file);
        return std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let mut out = Vec::new();
    for i in 0..docs {
        out.extend_from_slice(make(i).as_bytes());
    }
    out
}

/// The documents of a raw BSON stream, borrowed.
fn split(bytes: &[u8]) -> Vec<&RawDocument> {
    let mut docs = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = i32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        docs.push(RawDocument::from_bytes(&bytes[at..at + len]).expect("a BSON document"));
        at += len;
    }
    docs
}

/// Decodes every document into batches of [`BATCH_ROWS`]; returns the rows.
/// Never inlined: `callgrind --toggle-collect=*decode_all*` counts only it.
#[inline(never)]
fn decode_all(schema: &DocumentSchema, docs: &[&RawDocument]) -> usize {
    let mut decoder = Decoder::new(schema.clone(), "bench");
    let mut rows = 0;
    for chunk in docs.chunks(BATCH_ROWS) {
        for doc in chunk {
            decoder.append(doc).expect("decode");
        }
        rows += decoder.flush().expect("flush").num_rows();
    }
    rows
}

/// A shape: its name, its file under `SLUICE_BENCH_BSON_DIR`, its maker.
type Shape = (&'static str, &'static str, fn(usize) -> RawDocumentBuf);

fn shapes() -> [Shape; 2] {
    [
        ("users", "users.bson", user),
        ("nested", "nested.bson", nested),
    ]
}

fn infer(docs: &[&RawDocument]) -> DocumentSchema {
    DocumentSchema::infer(
        docs.iter().take(1000).copied(),
        &[],
        NestedMode::Struct,
        MismatchPolicy::Overflow,
        "_id",
    )
}

fn decode(c: &mut Criterion) {
    if let Ok(n) = std::env::var("SLUICE_BENCH_ONCE") {
        let n: usize = n.parse().expect("SLUICE_BENCH_ONCE=DOCS");
        for (name, file, make) in shapes() {
            let bytes = load(file, make, n);
            let docs = split(&bytes);
            let docs = &docs[..n.min(docs.len())];
            let rows = decode_all(&infer(docs), docs);
            eprintln!("{name}: decoded {rows} documents once");
        }
        return;
    }
    let mut group = c.benchmark_group("mongo_decode");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(15));
    for (name, file, make) in shapes() {
        let bytes = load(file, make, DOCS);
        let docs = split(&bytes);
        let schema = infer(&docs);
        assert_eq!(decode_all(&schema, &docs[..1000]), 1000);
        group.throughput(Throughput::Elements(docs.len() as u64));
        group.bench_function(format!("{name} {} docs", docs.len()), |b| {
            b.iter(|| decode_all(&schema, &docs))
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
