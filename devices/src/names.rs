//! Device names and numbers as people write them: `hda2`, `nvme0n1p3`, `3:64`.

use shared_abi::DeviceNumber;

/// A device number as written in a devices file or on the command line: `major:minor` in
/// decimal digits only (`+3:+0` is no number), or a classic name such as `hda` or `xvdb`.
pub fn parse_device_number(text: &str) -> Option<DeviceNumber> {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    match text.split_once(':') {
        Some((major, minor)) if !(digits(major) && digits(minor)) => None,
        _ => text.parse().ok(),
    }
}

/// Whether `name` could be a Linux block device name. Keeping to this alphabet means a name
/// can never reach a path as `..` or `/`.
pub fn is_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
        && name.as_bytes()[0].is_ascii_alphabetic()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_are_digits_or_names() {
        assert_eq!(parse_device_number("3:64"), DeviceNumber::new(3, 64));
        assert_eq!(parse_device_number("xvdb"), DeviceNumber::from_name("xvdb"));
        for bad in ["+3:+0", "3:", ":0", " 3:0", "3:0x1", "-1:0", "xvq"] {
            assert_eq!(parse_device_number(bad), None, "{bad}");
        }
    }
}
