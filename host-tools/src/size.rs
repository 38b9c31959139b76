//! Sizes as people type them (`100` is MiB, `4G`, `1.5M`, `512K`) and as they are shown
//! back. One parser for every size and byte count; only what a bare number means differs.

use crate::error::{Error, Result};
use shared_abi::SECTOR_SIZE;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// How a size is read: what a bare number counts, and what it is called in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRule {
    /// What `what` is called in a message: `size`, `offset`.
    pub what: &'static str,
    /// The bytes a bare number stands for, and its name for the messages.
    pub bare_unit: (u64, &'static str),
    /// Whether zero is a size (an offset may be 0, a disk may not).
    pub zero: bool,
    /// Whether the size must be whole 512-byte sectors.
    pub whole_sectors: bool,
}

/// A disk's size: a bare number is MiB, the seed's unit.
pub const DISK_SIZE: SizeRule = SizeRule {
    what: "size",
    bare_unit: (MIB, "MiB"),
    zero: false,
    whole_sectors: true,
};

/// A byte count or offset into a VBD: a bare number is bytes.
pub const BYTE_COUNT: SizeRule = SizeRule {
    what: "byte count",
    bare_unit: (1, "bytes"),
    zero: true,
    whole_sectors: false,
};

/// Parse a size into bytes under `rule`. A suffix `K`, `M`, `G` or `T` (binary, optionally
/// followed by `iB` or `B`) picks a unit; fractions of a unit are fine (`1.5G`). Negative,
/// overflowing and (unless the rule allows them) zero values are refused.
pub fn parse_size(text: &str, rule: SizeRule) -> Result<u64> {
    let bad = |reason: String| Error::Usage(format!("{} {text:?}: {reason}", rule.what));
    let (bare_factor, bare_name) = rule.bare_unit;
    let trimmed = text.trim();
    let bytes = parse_size::Config::new()
        .with_binary()
        .with_default_factor(bare_factor)
        .parse_size(trimmed)
        .map_err(|error| match error {
            parse_size::Error::PosOverflow => bad("too large".into()),
            _ if trimmed.starts_with(|character: char| character.is_ascii_digit()) => {
                bad("unknown unit (use K, M, G or T)".into())
            }
            _ => bad(format!(
                "not a size (expected a number of {bare_name}, or a number with K, M, G or T)"
            )),
        })?;
    if bytes == 0 && !rule.zero {
        return Err(bad("must be greater than zero".into()));
    }
    if rule.whole_sectors && bytes % SECTOR_SIZE != 0 {
        return Err(bad("not a whole number of 512-byte sectors".into()));
    }
    // Sector counts and offsets are stored as SQLite integers, which are signed.
    if bytes > i64::MAX as u64 {
        return Err(bad("too large".into()));
    }
    Ok(bytes)
}

/// Parse a disk size and return it in sectors.
pub fn parse_size_sectors(text: &str) -> Result<u64> {
    Ok(parse_size(text, DISK_SIZE)? / SECTOR_SIZE)
}

/// Show a sector count in the largest binary unit that keeps one decimal of precision:
/// `64M`, `1.5G`, `512K`, and below a KiB in bytes (`512B`, `0B`). Written here rather than
/// taken from a size crate: those print `64 MiB` or `64.0M`, and the tables and messages
/// use the same short form that the parser reads back.
pub fn format_sectors(sectors: u64) -> String {
    let bytes = u128::from(sectors) * u128::from(SECTOR_SIZE);
    let units = [
        ("T", 1u128 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (suffix, unit) in units {
        if bytes >= unit {
            let tenths = bytes * 10 / unit;
            return if tenths % 10 == 0 {
                format!("{}{suffix}", tenths / 10)
            } else {
                format!("{}.{}{suffix}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse_size(text, DISK_SIZE).unwrap_err().to_string()
    }

    #[test]
    fn bare_numbers_follow_the_rule() {
        assert_eq!(parse_size("100", DISK_SIZE).unwrap(), 100 * MIB);
        assert_eq!(parse_size(" 1 ", DISK_SIZE).unwrap(), MIB);
        assert_eq!(parse_size("4096", BYTE_COUNT).unwrap(), 4096);
        assert_eq!(parse_size("0", BYTE_COUNT).unwrap(), 0);
    }

    #[test]
    fn suffixes_are_binary_and_may_have_fractions() {
        assert_eq!(parse_size("512K", DISK_SIZE).unwrap(), 512 * KIB);
        assert_eq!(parse_size("64m", DISK_SIZE).unwrap(), 64 * MIB);
        assert_eq!(parse_size("2G", DISK_SIZE).unwrap(), 2 << 30);
        assert_eq!(parse_size("1T", DISK_SIZE).unwrap(), 1 << 40);
        assert_eq!(parse_size("3GiB", DISK_SIZE).unwrap(), 3 << 30);
        assert_eq!(parse_size("1.5G", DISK_SIZE).unwrap(), 3 << 29);
        assert_eq!(parse_size("1M", BYTE_COUNT).unwrap(), MIB);
        assert_eq!(parse_size_sectors("1M").unwrap(), 2048);
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        assert_eq!(error("0"), "size \"0\": must be greater than zero");
        assert_eq!(error("0G"), "size \"0G\": must be greater than zero");
        assert_eq!(
            error("-5"),
            "size \"-5\": not a size (expected a number of MiB, or a number with K, M, G or T)"
        );
        assert_eq!(
            error("12X"),
            "size \"12X\": unknown unit (use K, M, G or T)"
        );
        assert_eq!(
            error(""),
            "size \"\": not a size (expected a number of MiB, or a number with K, M, G or T)"
        );
        assert_eq!(
            error("99999999999999999999"),
            "size \"99999999999999999999\": too large"
        );
        assert_eq!(error("16777216T"), "size \"16777216T\": too large");
        assert_eq!(
            error("1.3K"),
            "size \"1.3K\": not a whole number of 512-byte sectors"
        );
        assert_eq!(
            parse_size("x", BYTE_COUNT).unwrap_err().to_string(),
            "byte count \"x\": not a size (expected a number of bytes, or a number with K, M, G or T)"
        );
        assert_eq!(parse_size("0", DISK_SIZE).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn sizes_show_in_human_units() {
        assert_eq!(format_sectors(2048), "1M");
        assert_eq!(format_sectors(131072), "64M");
        assert_eq!(format_sectors(3 * 1024 * 1024), "1.5G");
        assert_eq!(format_sectors(3), "1.5K");
        assert_eq!(format_sectors(1), "512B");
        assert_eq!(format_sectors(0), "0B");
    }
}
