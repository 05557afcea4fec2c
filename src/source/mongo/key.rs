//! The key field's value encoded so that byte order is MongoDB's sort order: the
//! `_key` column the snapshot diff merge-joins on, and the bounds of parallel
//! key ranges.

use mongodb::bson::raw::RawBsonRef;

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
pub(super) fn sort_key_into(value: RawBsonRef<'_>, out: &mut Vec<u8>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{oid::ObjectId, rawdoc};

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
