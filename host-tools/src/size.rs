//! Sizes as people type them (`100` is MiB, `4G`, `512K`) and as they are shown back.

use crate::error::{Error, Result};
use shared_abi::SECTOR_SIZE;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Parse a size into bytes. A bare integer is MiB, the seed's unit; a suffix `K`, `M`, `G`
/// or `T` (binary, optionally followed by `iB` or `B`) picks another unit. Zero, negative,
/// fractional and overflowing values are refused, so the result is always a positive
/// multiple of the 512-byte sector.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = |reason: &str| Error::Usage(format!("size {text:?}: {reason}"));
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad(
            "not a size (expected a whole number of MiB, or a number with K, M, G or T)",
        ));
    }
    let multiplier = match unit.to_ascii_uppercase().as_str() {
        "" => MIB,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => MIB * 1024,
        "T" | "TB" | "TIB" => MIB * 1024 * 1024,
        _ => return Err(bad("unknown unit (use K, M, G or T)")),
    };
    let number: u64 = digits.parse().map_err(|_| bad("too large"))?;
    if number == 0 {
        return Err(bad("must be greater than zero"));
    }
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| bad("too large"))?;
    // Sector counts are stored as SQLite integers, which are signed.
    if bytes / SECTOR_SIZE > i64::MAX as u64 {
        return Err(bad("too large"));
    }
    Ok(bytes)
}

/// Parse a size and return it in sectors.
pub fn parse_size_sectors(text: &str) -> Result<u64> {
    Ok(parse_size(text)? / SECTOR_SIZE)
}

/// Show a sector count in the largest binary unit that keeps one decimal of precision:
/// `64M`, `1.5G`, `512K`, `3s` for a few odd sectors.
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
    format!("{sectors}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse_size(text).unwrap_err().to_string()
    }

    #[test]
    fn bare_integers_are_mebibytes() {
        assert_eq!(parse_size("100").unwrap(), 100 * MIB);
        assert_eq!(parse_size(" 1 ").unwrap(), MIB);
    }

    #[test]
    fn suffixes_are_binary() {
        assert_eq!(parse_size("512K").unwrap(), 512 * KIB);
        assert_eq!(parse_size("64m").unwrap(), 64 * MIB);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("3GiB").unwrap(), 3 << 30);
        assert_eq!(parse_size_sectors("1M").unwrap(), 2048);
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        assert_eq!(error("0"), "size \"0\": must be greater than zero");
        assert_eq!(error("0G"), "size \"0G\": must be greater than zero");
        assert_eq!(
            error("-5"),
            "size \"-5\": not a size (expected a whole number of MiB, or a number with K, M, G or T)"
        );
        assert_eq!(
            error("1.5G"),
            "size \"1.5G\": unknown unit (use K, M, G or T)"
        );
        assert_eq!(
            error("12X"),
            "size \"12X\": unknown unit (use K, M, G or T)"
        );
        assert_eq!(
            error(""),
            "size \"\": not a size (expected a whole number of MiB, or a number with K, M, G or T)"
        );
        assert_eq!(
            error("99999999999999999999"),
            "size \"99999999999999999999\": too large"
        );
        assert_eq!(error("16777216T"), "size \"16777216T\": too large");
        assert_eq!(parse_size("0").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn sizes_show_in_human_units() {
        assert_eq!(format_sectors(2048), "1M");
        assert_eq!(format_sectors(131072), "64M");
        assert_eq!(format_sectors(3 * 1024 * 1024), "1.5G");
        assert_eq!(format_sectors(3), "1.5K");
        assert_eq!(format_sectors(1), "1s");
    }
}
