//! A bounds-checked scanner over the elements of one raw BSON document.
//!
//! The `bson` crate's raw iterator validates every field name as UTF-8 and builds
//! a `RawBsonRef` for every value; for documents of short strings that was half of
//! the decoder's time. This scanner yields each element as its type byte, its name
//! as bytes and the exact bytes of its value, checking only lengths and
//! terminators, so the decoder can compare names with the schema's as bytes and
//! read fixed-size values in place. UTF-8 is checked where a string is used.
//!
//! Every length read from the document is checked against the bytes that are
//! there: a malformed document is an [`ScanError`], never a panic or a read out of
//! bounds.

use std::fmt;

/// BSON element types (the byte before each field name).
pub mod kind {
    pub const DOUBLE: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const DOCUMENT: u8 = 0x03;
    pub const ARRAY: u8 = 0x04;
    pub const BINARY: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const OBJECT_ID: u8 = 0x07;
    pub const BOOLEAN: u8 = 0x08;
    pub const DATE_TIME: u8 = 0x09;
    pub const NULL: u8 = 0x0A;
    pub const REGEX: u8 = 0x0B;
    pub const DB_POINTER: u8 = 0x0C;
    pub const JAVASCRIPT: u8 = 0x0D;
    pub const SYMBOL: u8 = 0x0E;
    pub const JAVASCRIPT_WITH_SCOPE: u8 = 0x0F;
    pub const INT32: u8 = 0x10;
    pub const TIMESTAMP: u8 = 0x11;
    pub const INT64: u8 = 0x12;
    pub const DECIMAL128: u8 = 0x13;
    pub const MIN_KEY: u8 = 0xFF;
    pub const MAX_KEY: u8 = 0x7F;
}

/// Why a document could not be scanned, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub message: &'static str,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

fn err<T>(offset: usize, message: &'static str) -> Result<T, ScanError> {
    Err(ScanError { offset, message })
}

/// One element: its type byte, its name (not checked as UTF-8) and the bytes of
/// its value (for strings, documents and binaries including their length prefix).
#[derive(Debug, Clone, Copy)]
pub struct Element<'a> {
    pub kind: u8,
    pub name: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> Element<'a> {
    /// The bytes of a string value without length and terminator (checked by
    /// the scanner), not yet checked as UTF-8.
    #[inline]
    pub fn str_bytes(&self) -> &'a [u8] {
        &self.value[4..self.value.len() - 1]
    }

    #[inline]
    pub fn i32(&self) -> i32 {
        i32::from_le_bytes(self.value[..4].try_into().expect("scanned: 4 bytes"))
    }

    #[inline]
    pub fn i64(&self) -> i64 {
        i64::from_le_bytes(self.value[..8].try_into().expect("scanned: 8 bytes"))
    }

    #[inline]
    pub fn f64(&self) -> f64 {
        f64::from_le_bytes(self.value[..8].try_into().expect("scanned: 8 bytes"))
    }

    #[inline]
    pub fn object_id(&self) -> &'a [u8; 12] {
        self.value[..12].try_into().expect("scanned: 12 bytes")
    }
}

/// The elements of a document, in order. After an error it yields nothing more.
pub struct Elements<'a> {
    bytes: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Elements<'a> {
    /// Scans `bytes`, which must be exactly one document: its length prefix equal
    /// to `bytes.len()` and a final NUL.
    pub fn new(bytes: &'a [u8]) -> Result<Self, ScanError> {
        if bytes.len() < 5 {
            return err(0, "document shorter than 5 bytes");
        }
        let declared = i32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        if declared < 5 || declared as usize != bytes.len() {
            return err(0, "document length prefix does not match its bytes");
        }
        if bytes[bytes.len() - 1] != 0 {
            return err(bytes.len() - 1, "document not NUL-terminated");
        }
        Ok(Self {
            bytes,
            at: 4,
            done: false,
        })
    }

    #[inline]
    fn fail<T>(&mut self, offset: usize, message: &'static str) -> Option<Result<T, ScanError>> {
        self.done = true;
        Some(err(offset, message))
    }

    /// The length of the value of type `kind` starting at `at`, checked against
    /// the bytes available before the document's final NUL.
    #[inline]
    fn value_len(&self, kind: u8, at: usize) -> Result<usize, ScanError> {
        // Values end before the document's terminating NUL.
        let end = self.bytes.len() - 1;
        let avail = end.saturating_sub(at);
        let fixed = |n: usize| {
            if n <= avail {
                Ok(n)
            } else {
                err(at, "value runs past the end of the document")
            }
        };
        let prefix = |at: usize| -> Result<usize, ScanError> {
            match self.bytes.get(at..at + 4) {
                Some(b) if at + 4 <= end => {
                    let n = i32::from_le_bytes(b.try_into().expect("4 bytes"));
                    if n < 0 {
                        err(at, "negative length")
                    } else {
                        Ok(n as usize)
                    }
                }
                _ => err(at, "length runs past the end of the document"),
            }
        };
        match kind {
            kind::DOUBLE | kind::DATE_TIME | kind::INT64 | kind::TIMESTAMP => fixed(8),
            kind::INT32 => fixed(4),
            kind::OBJECT_ID => fixed(12),
            kind::DECIMAL128 => fixed(16),
            kind::BOOLEAN => {
                fixed(1)?;
                if self.bytes[at] > 1 {
                    return err(at, "boolean is neither 0 nor 1");
                }
                Ok(1)
            }
            kind::NULL | kind::UNDEFINED | kind::MIN_KEY | kind::MAX_KEY => Ok(0),
            kind::STRING | kind::JAVASCRIPT | kind::SYMBOL => {
                let n = prefix(at)?;
                if n < 1 {
                    return err(at, "string length below 1");
                }
                let total = fixed(4usize.saturating_add(n))?;
                if self.bytes[at + total - 1] != 0 {
                    return err(at + total - 1, "string not NUL-terminated");
                }
                Ok(total)
            }
            kind::DOCUMENT | kind::ARRAY | kind::JAVASCRIPT_WITH_SCOPE => {
                let n = prefix(at)?;
                if n < 5 {
                    return err(at, "embedded document shorter than 5 bytes");
                }
                let total = fixed(n)?;
                if self.bytes[at + total - 1] != 0 {
                    return err(at + total - 1, "embedded document not NUL-terminated");
                }
                Ok(total)
            }
            kind::BINARY => {
                let n = prefix(at)?;
                fixed(5usize.saturating_add(n))
            }
            kind::REGEX => {
                let first = cstring_len(&self.bytes[at..end]).ok_or(ScanError {
                    offset: at,
                    message: "regex pattern not NUL-terminated",
                })? + 1;
                let second = cstring_len(&self.bytes[at + first..end]).ok_or(ScanError {
                    offset: at + first,
                    message: "regex options not NUL-terminated",
                })? + 1;
                Ok(first + second)
            }
            kind::DB_POINTER => {
                let n = prefix(at)?;
                if n < 1 {
                    return err(at, "string length below 1");
                }
                let total = fixed(4usize.saturating_add(n).saturating_add(12))?;
                if self.bytes[at + 4 + n - 1] != 0 {
                    return err(at + 4 + n - 1, "string not NUL-terminated");
                }
                Ok(total)
            }
            _ => err(at, "unknown element type"),
        }
    }
}

/// The length of the C string at the start of `bytes`, without its NUL; `None`
/// when there is no NUL.
#[inline]
fn cstring_len(bytes: &[u8]) -> Option<usize> {
    // Field names are short: a plain loop beats memchr's setup here.
    bytes.iter().position(|&b| b == 0)
}

impl<'a> Elements<'a> {
    /// The next element, trying `expected` as its name first: the flag is true
    /// when the name is `expected`, found with one comparison instead of a
    /// search for the NUL and a lookup (documents of a collection mostly share
    /// their field order).
    #[inline]
    pub fn next_named(
        &mut self,
        expected: Option<&[u8]>,
    ) -> Option<Result<(Element<'a>, bool), ScanError>> {
        if self.done {
            return None;
        }
        let end = self.bytes.len() - 1;
        let kind = self.bytes[self.at];
        if kind == 0 {
            self.done = true;
            if self.at != end {
                return Some(err(self.at, "document ends before its length"));
            }
            return None;
        }
        let name_at = self.at + 1;
        let guess = expected.filter(|name| {
            // The name and its NUL, before the document's own NUL.
            name_at + name.len() < end
                && self.bytes[name_at..name_at + name.len()] == **name
                && self.bytes[name_at + name.len()] == 0
        });
        let name_len = match guess {
            Some(name) => name.len(),
            // The name's NUL must come before the document's own.
            None => match cstring_len(&self.bytes[name_at.min(end)..end]) {
                Some(n) => n,
                None => return self.fail(name_at, "field name not NUL-terminated"),
            },
        };
        let value_at = name_at + name_len + 1;
        let len = match self.value_len(kind, value_at) {
            Ok(n) => n,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        self.at = value_at + len;
        Some(Ok((
            Element {
                kind,
                name: &self.bytes[name_at..name_at + name_len],
                value: &self.bytes[value_at..value_at + len],
            },
            guess.is_some(),
        )))
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Element<'a>, ScanError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_named(None).map(|r| r.map(|(e, _)| e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{rawdoc, Binary, Regex};

    /// Type byte, name and value bytes of one element.
    type Owned = (u8, Vec<u8>, Vec<u8>);

    fn all(bytes: &[u8]) -> Result<Vec<Owned>, ScanError> {
        Elements::new(bytes)?
            .map(|e| e.map(|e| (e.kind, e.name.to_vec(), e.value.to_vec())))
            .collect()
    }

    #[test]
    fn scans_every_element_type_like_the_bson_crate() {
        let doc = rawdoc! {
            "d": 1.5, "s": "héllo", "doc": { "a": 1i32 }, "arr": [1i32, "x"],
            "bin": Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "oid": mongodb::bson::oid::ObjectId::new(), "b": true, "t": mongodb::bson::DateTime::now(),
            "n": null, "re": Regex { pattern: "a.*".into(), options: "i".into() },
            "i": 7i32, "ts": mongodb::bson::Timestamp { time: 1, increment: 2 }, "l": 8i64,
            "dec": "1.5".parse::<mongodb::bson::Decimal128>().unwrap(),
            "min": mongodb::bson::RawBson::MinKey, "max": mongodb::bson::RawBson::MaxKey,
            "code": mongodb::bson::RawBson::JavaScriptCode("f()".into()),
        };
        let ours = all(doc.as_bytes()).unwrap();
        let theirs: Vec<_> = doc.iter_elements().map(|e| e.unwrap()).collect();
        assert_eq!(ours.len(), theirs.len());
        for (o, t) in ours.iter().zip(&theirs) {
            assert_eq!(o.0, t.element_type() as u8, "{}", t.key());
            assert_eq!(o.1, t.key().as_bytes());
            assert_eq!(o.2.len(), t.len(), "{}", t.key());
        }
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        let good = rawdoc! { "a": "xyz", "b": { "c": 1i32 }, "d": 5i64 };
        let bytes = good.as_bytes().to_vec();
        assert!(all(&bytes).is_ok());

        // Truncated at every length: the outer length no longer matches.
        for n in 0..bytes.len() {
            assert!(all(&bytes[..n]).is_err(), "truncated to {n}");
        }
        // Truncated, with the outer length (and final NUL) patched to match: the
        // inner lengths now lie.
        for n in 5..bytes.len() - 1 {
            let mut cut = bytes[..n].to_vec();
            cut.push(0);
            let len = cut.len() as i32;
            cut[..4].copy_from_slice(&len.to_le_bytes());
            let _ = all(&cut); // must not panic; may be ok when cut between elements
        }
        // Every single byte changed to every interesting value: never a panic.
        for i in 0..bytes.len() {
            for v in [0u8, 1, 2, 3, 4, 5, 0x7f, 0x80, 0xff, 0x13, 0x0b] {
                let mut bad = bytes.clone();
                bad[i] = v;
                let _ = all(&bad);
            }
        }
    }

    #[test]
    fn expected_names_match_only_whole_names() {
        let doc = rawdoc! { "abc": 1i32, "x": 2i32 };
        let mut e = Elements::new(doc.as_bytes()).unwrap();
        let (first, matched) = e.next_named(Some(b"ab")).unwrap().unwrap();
        assert_eq!((first.name, matched), (&b"abc"[..], false));
        let (second, matched) = e.next_named(Some(b"x")).unwrap().unwrap();
        assert_eq!((second.name, second.i32(), matched), (&b"x"[..], 2, true));
        assert!(e.next_named(Some(b"x")).is_none());

        let doc = rawdoc! { "a": 1i32 };
        for expected in [&b"abcdefghijklmnop"[..], b"a\0\x10", b""] {
            let mut e = Elements::new(doc.as_bytes()).unwrap();
            let (el, matched) = e.next_named(Some(expected)).unwrap().unwrap();
            assert_eq!((el.name, matched), (&b"a"[..], false), "{expected:?}");
        }
    }

    #[test]
    fn lying_lengths_and_missing_nuls() {
        // {"a": "xyz"} = 13 00 00 00 | 02 'a' 00 | 04 00 00 00 'x' 'y' 'z' 00 | 00
        let ok: Vec<u8> = vec![
            0x12, 0, 0, 0, 0x02, b'a', 0, 4, 0, 0, 0, b'x', b'y', b'z', 0, 0,
        ];
        let mut ok = ok;
        ok[0] = ok.len() as u8;
        assert_eq!(all(&ok).unwrap().len(), 1);

        let mut long_string = ok.clone();
        long_string[7] = 40; // the string claims 40 bytes
        assert!(all(&long_string).is_err());

        let mut negative = ok.clone();
        negative[7..11].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(all(&negative).is_err());

        let mut unterminated = ok.clone();
        unterminated[14] = b'!'; // the string's NUL
        assert!(all(&unterminated).is_err());

        let mut name_no_nul = ok.clone();
        name_no_nul[6] = b'b'; // the name's NUL: the name runs into the value
        assert!(all(&name_no_nul).is_err());

        let mut outer_long = ok.clone();
        outer_long[0] += 1;
        assert!(all(&outer_long).is_err());

        let mut no_final_nul = ok.clone();
        *no_final_nul.last_mut().unwrap() = 1;
        assert!(all(&no_final_nul).is_err());

        let mut unknown_type = ok.clone();
        unknown_type[4] = 0x42;
        assert!(all(&unknown_type).is_err());

        // An embedded document whose length points past its parent.
        let mut nested = rawdoc! { "d": { "x": 1i32 } }.as_bytes().to_vec();
        nested[8] = 0x7f;
        assert!(all(&nested).is_err());

        // Elements end before the declared end (a NUL in the middle).
        let mut early_end = ok.clone();
        early_end[4] = 0;
        assert!(all(&early_end).is_err());

        // Booleans other than 0 and 1.
        let mut b = rawdoc! { "b": true }.as_bytes().to_vec();
        b[7] = 2;
        assert!(all(&b).is_err());
    }
}
