//! Conversions at the SQLite edge: rusqlite errors into [`StoreError`]s (sorting a sick disk
//! from a bug), times into integer microseconds, and status words into enums.
//!
//! Statuses are stored as their words (`queued`, `in_flight`, ...) rather than integers so the
//! database reads plainly in the `sqlite3` shell during an incident.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::ErrorCode;
use rusqlite::types::Type;

use crate::error::{StoreError, UnavailableCause};
use crate::types::{DeliveryStatus, MessageStatus, StepOutcome};

/// An operation's failure before it is named: a SQLite error or a domain error.
#[derive(Debug)]
pub(crate) enum OpError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sql(e)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

impl OpError {
    pub(crate) fn into_store(self, operation: &'static str) -> StoreError {
        match self {
            OpError::Sql(e) => classify(operation, &e),
            OpError::Store(e) => e,
        }
    }
}

pub(crate) type OpResult<T> = Result<T, OpError>;

/// Names a SQLite error: a full, failing, read-only or locked disk is `Unavailable`.
pub(crate) fn classify(operation: &'static str, e: &rusqlite::Error) -> StoreError {
    let detail = e.to_string();
    let Some(code) = e.sqlite_error_code() else {
        return StoreError::Backend { operation, detail };
    };
    let cause = match code {
        ErrorCode::DiskFull => UnavailableCause::Full,
        ErrorCode::SystemIoFailure | ErrorCode::CannotOpen | ErrorCode::NoLargeFileSupport => {
            UnavailableCause::Io
        }
        ErrorCode::ReadOnly | ErrorCode::PermissionDenied => UnavailableCause::ReadOnly,
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => UnavailableCause::Busy,
        ErrorCode::OutOfMemory => UnavailableCause::OutOfMemory,
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
            return StoreError::Corrupt { operation, detail };
        }
        _ => return StoreError::Backend { operation, detail },
    };
    StoreError::Unavailable {
        operation,
        cause,
        detail,
    }
}

/// Microseconds since the Unix epoch (negative before it; saturating far out).
pub(crate) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// The inverse of [`micros`].
pub(crate) fn time(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

pub(crate) fn now_micros() -> i64 {
    micros(SystemTime::now())
}

fn bad_word(column: usize, kind: &str, word: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        Type::Text,
        format!("unknown {kind} `{word}` in the database").into(),
    )
}

pub(crate) fn message_status(column: usize, word: &str) -> rusqlite::Result<MessageStatus> {
    word.parse()
        .map_err(|_| bad_word(column, "message status", word))
}

pub(crate) fn delivery_status(column: usize, word: &str) -> rusqlite::Result<DeliveryStatus> {
    word.parse()
        .map_err(|_| bad_word(column, "delivery status", word))
}

pub(crate) fn step_outcome(
    column: usize,
    word: &str,
    output: Option<Vec<u8>>,
) -> rusqlite::Result<StepOutcome> {
    Ok(match (word, output) {
        ("kept", _) => StepOutcome::Kept,
        ("changed", out) => StepOutcome::Changed(out.unwrap_or_default().into()),
        ("dropped", _) => StepOutcome::Dropped,
        ("error", _) => StepOutcome::Error,
        _ => return Err(bad_word(column, "step outcome", word)),
    })
}

/// A count from SQLite (an i64 that is never negative) as the u32 the API uses.
pub(crate) fn count_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_at_microsecond_precision() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(time(micros(t)), t);
        let before = UNIX_EPOCH - Duration::from_micros(5);
        assert_eq!(micros(before), -5);
        assert_eq!(time(-5), before);
    }
}
