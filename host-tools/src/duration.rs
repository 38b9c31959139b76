//! Expiry durations as people type them: seconds, `0` or `never`, or `30s`, `10m`, `2h`,
//! `7d`, `2w`, `1h 30m` (humantime's units).

use std::time::Duration;

use crate::error::{Error, Result};

/// When a virtual disk expires, relative to the moment the operation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The disk lives until it is deleted.
    Never,
    /// The disk expires this many seconds from now.
    After(u64),
}

/// The longest expiry accepted. Far beyond any real use, and it keeps every expiry time a
/// four-digit year in RFC 3339.
pub const LONGEST_EXPIRY_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// Parse an expiry. A bare number is seconds, and zero (`0`, `00`) means never, as in the
/// seed; `0s` and the like are refused because a disk that expires at once is almost
/// certainly a typo.
pub fn parse_expiry(text: &str) -> Result<Expiry> {
    let bad = |reason: &str| Error::Usage(format!("expiry {text:?}: {reason}"));
    let too_long = || bad("too long (at most 100 years)");
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    let seconds = if !trimmed.is_empty() && trimmed.bytes().all(|byte| byte.is_ascii_digit()) {
        match trimmed.parse::<u64>().map_err(|_| too_long())? {
            0 => return Ok(Expiry::Never),
            seconds => Duration::from_secs(seconds),
        }
    } else {
        let duration = humantime::parse_duration(trimmed).map_err(|error| match error {
            humantime::DurationError::NumberOverflow => too_long(),
            humantime::DurationError::UnknownUnit { .. } => {
                bad("unknown unit (use s, m, h, d or w)")
            }
            _ => bad(
                "not a duration (expected seconds, 0 or never, or a number with s, m, h, d or w)",
            ),
        })?;
        if duration.is_zero() {
            return Err(bad(
                "must be greater than zero (use 0 or never for no expiry)",
            ));
        }
        if duration.subsec_nanos() != 0 {
            return Err(bad("not a whole number of seconds"));
        }
        duration
    };
    match seconds.as_secs() {
        seconds if seconds <= LONGEST_EXPIRY_SECONDS => Ok(Expiry::After(seconds)),
        _ => Err(too_long()),
    }
}

impl Expiry {
    /// The absolute expiry time for an operation running at `now` (Unix seconds), or `None`
    /// for a disk that never expires.
    pub fn expires_at(self, now: i64) -> Option<i64> {
        match self {
            Expiry::Never => None,
            // Cannot overflow: LONGEST_EXPIRY_SECONDS is far below i64::MAX - now.
            Expiry::After(seconds) => Some(now.saturating_add(seconds as i64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse_expiry(text).unwrap_err().to_string()
    }

    #[test]
    fn units_multiply() {
        assert_eq!(parse_expiry("45").unwrap(), Expiry::After(45));
        assert_eq!(parse_expiry("30s").unwrap(), Expiry::After(30));
        assert_eq!(parse_expiry("10m").unwrap(), Expiry::After(600));
        assert_eq!(parse_expiry("2h").unwrap(), Expiry::After(7200));
        assert_eq!(parse_expiry("7d").unwrap(), Expiry::After(604800));
        assert_eq!(parse_expiry("1h 30m").unwrap(), Expiry::After(5400));
        assert_eq!(parse_expiry("1.5h").unwrap(), Expiry::After(5400));
    }

    #[test]
    fn zero_and_never_mean_never() {
        assert_eq!(parse_expiry("0").unwrap(), Expiry::Never);
        assert_eq!(parse_expiry("00").unwrap(), Expiry::Never);
        assert_eq!(parse_expiry("never").unwrap(), Expiry::Never);
        assert_eq!(Expiry::Never.expires_at(100), None);
        assert_eq!(Expiry::After(5).expires_at(100), Some(105));
    }

    #[test]
    fn bad_durations_are_refused_with_the_reason() {
        assert_eq!(
            error("0s"),
            "expiry \"0s\": must be greater than zero (use 0 or never for no expiry)"
        );
        assert_eq!(
            error("-1"),
            "expiry \"-1\": not a duration (expected seconds, 0 or never, or a number with s, m, h, d or w)"
        );
        assert_eq!(
            error("5x"),
            "expiry \"5x\": unknown unit (use s, m, h, d or w)"
        );
        assert_eq!(
            error("1,5h"),
            "expiry \"1,5h\": not a duration (expected seconds, 0 or never, or a number with s, m, h, d or w)"
        );
        assert_eq!(
            error("1500ms"),
            "expiry \"1500ms\": not a whole number of seconds"
        );
        assert_eq!(
            error("36600d"),
            "expiry \"36600d\": too long (at most 100 years)"
        );
        assert_eq!(
            error("99999999999999999999999"),
            "expiry \"99999999999999999999999\": too long (at most 100 years)"
        );
        assert_eq!(parse_expiry("x").unwrap_err().exit_code(), 2);
    }
}
