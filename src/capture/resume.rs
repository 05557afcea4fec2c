//! MongoDB change-stream resume tokens: how the stored position becomes a token
//! again, the cluster time a MongoDB token carries, and the driver errors that
//! mean the stored position can no longer be resumed from.

use mongodb::bson::Bson;
use mongodb::change_stream::event::ResumeToken;

use super::position::{ClusterTime, StreamPosition};
use crate::error::{chain, Error, Result};

/// The stored resume token of `position`, as the driver takes it.
pub(super) fn stored_token(position: &StreamPosition, table: &str) -> Result<Option<ResumeToken>> {
    let Some(json) = &position.resume_token else {
        return Ok(None);
    };
    let bson = Bson::try_from(json.clone()).map_err(|e| {
        Error::capture(
            table,
            format!("the stored resume token is not Extended JSON: {e}"),
        )
    })?;
    mongodb::bson::from_bson(bson).map(Some).map_err(|e| {
        Error::capture(
            table,
            format!("the stored resume token is not a resume token: {e}"),
        )
    })
}

/// The cluster time in a MongoDB resume token: its `_data` is a KeyString that
/// starts with type byte 0x82 and the timestamp (seconds, then increment, both
/// big-endian). `None` for tokens of another shape (SecantusDB's are hex BSON,
/// whose time is minted when the token is, not the oplog position's).
pub(super) fn token_time(token: &ResumeToken) -> Option<ClusterTime> {
    let bson = mongodb::bson::to_bson(token).ok()?;
    let data = bson.as_document()?.get_str("_data").ok()?;
    let hex = data.get(..18)?;
    if !hex.is_ascii() || !hex[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    let t = u32::from_str_radix(&hex[2..10], 16).ok()?;
    let i = u32::from_str_radix(&hex[10..18], 16).ok()?;
    Some(ClusterTime { t, i })
}

pub(super) fn token_json(token: &ResumeToken) -> Result<serde_json::Value> {
    let bson = mongodb::bson::to_bson(token)
        .map_err(|e| Error::lake(format!("encoding a resume token: {e}")))?;
    Ok(bson.into_relaxed_extjson())
}

/// The advice given whenever the stored position cannot be used.
pub(super) fn reset_advice(table: &str) -> String {
    format!(
        "re-snapshot the collection with `sluice state reset --table {table}` then `sluice run`, or `sluice run --full-refresh --table {table}`"
    )
}

/// A driver error, made actionable when it means the stored position is gone.
pub(super) fn stream_error(
    table: &str,
    position: &StreamPosition,
    e: mongodb::error::Error,
) -> Error {
    if let mongodb::error::ErrorKind::Command(c) = e.kind.as_ref() {
        // 286 ChangeStreamHistoryLost, 280 ChangeStreamFatalError (older servers),
        // 260 InvalidResumeToken; 9 FailedToParse about the token.
        let lost = matches!(c.code, 280 | 286 | 260)
            || (c.code == 9 && c.message.to_lowercase().contains("resume token"));
        if lost {
            return Error::capture(
                table,
                format!(
                    "the change stream cannot resume from the stored position ({}): {} (code {} {}). The oplog no longer holds the changes since then: its retention must be longer than the time between runs (and than a first snapshot). To start over, {}.",
                    position.covered_until,
                    c.message,
                    c.code,
                    c.code_name,
                    reset_advice(table)
                ),
            );
        }
        // 40573: "The $changeStream stage is only supported on replica sets".
        if c.code == 40573 {
            return Error::source(
                table,
                format!(
                    "change streams need a replica set or a sharded cluster (a single server can run as a one-member replica set): {}",
                    c.message
                ),
            );
        }
    }
    Error::source(table, chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn resume_token(data: &str) -> ResumeToken {
        mongodb::bson::from_bson(Bson::Document(doc! { "_data": data })).unwrap()
    }

    #[test]
    fn token_time_reads_mongodb_keystrings_only() {
        // MongoDB's shape: 0x82, Timestamp(0x6B1E6C10, 2), then the rest of the key.
        let mongo = resume_token("826B1E6C10000000022B042C0100296E5A1004");
        assert_eq!(
            token_time(&mongo),
            Some(ClusterTime {
                t: 0x6B1E6C10,
                i: 2
            })
        );
        // SecantusDB's hex BSON (starts with the document length), too short,
        // not hex, not ASCII: no time, so the caller goes by token changes.
        for data in [
            "3d000000127300",
            "82",
            "82ZZZZZZZZ00000002",
            "82é000000000000000000",
        ] {
            assert_eq!(token_time(&resume_token(data)), None, "{data}");
        }
    }

    #[test]
    fn positions_round_trip_through_json() {
        let p = StreamPosition {
            resume_token: Some(serde_json::json!({ "_data": "826500" })),
            snapshot_time: ClusterTime { t: 5, i: 1 },
            covered_until: ClusterTime { t: 6, i: 2 },
            events: 3,
        };
        let text = serde_json::to_string(&p).unwrap();
        let back: StreamPosition = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        let token = stored_token(&back, "t").unwrap().unwrap();
        assert_eq!(
            token_json(&token).unwrap(),
            serde_json::json!({ "_data": "826500" })
        );
    }
}
