//! A VBD's label: a short name dom0 gives a VBD when it creates it, such as `vd:3`.
//!
//! The hypervisor keeps it and reports it, so every tool can say where a VBD came from
//! without a database, and a virtio-blk backend serves it as the disk's serial number
//! (`VIRTIO_BLK_T_GET_ID`), which is why it is exactly as long as that serial.

use core::fmt;

use crate::Error;

/// Bytes in a label on the wire: the length of a virtio-blk serial.
pub const LABEL_BYTES: usize = 20;

/// A validated label: printable ASCII (space to `~`) padded with zero bytes. Empty is
/// allowed; a zero byte followed by anything else is not.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Label {
    bytes: [u8; LABEL_BYTES],
}

impl Label {
    /// The empty label.
    pub const EMPTY: Label = Label {
        bytes: [0; LABEL_BYTES],
    };

    /// `EINVAL` for text longer than [`LABEL_BYTES`] or with a byte outside printable ASCII.
    pub fn new(text: &str) -> Result<Label, Error> {
        let source = text.as_bytes();
        if source.len() > LABEL_BYTES {
            return Err(Error::InvalidArgument);
        }
        let mut bytes = [0; LABEL_BYTES];
        bytes[..source.len()].copy_from_slice(source);
        Label::from_wire(bytes)
    }

    /// Check a wire label.
    pub fn from_wire(bytes: [u8; LABEL_BYTES]) -> Result<Label, Error> {
        let length = bytes
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(LABEL_BYTES);
        let (text, padding) = bytes.split_at(length);
        if !text.iter().all(|byte| (b' '..=b'~').contains(byte)) || padding.iter().any(|&b| b != 0)
        {
            return Err(Error::InvalidArgument);
        }
        Ok(Label { bytes })
    }

    /// The wire form: the text, then zero bytes.
    pub const fn to_wire(&self) -> [u8; LABEL_BYTES] {
        self.bytes
    }

    /// The text, without padding.
    pub fn as_str(&self) -> &str {
        let length = self
            .bytes
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(LABEL_BYTES);
        // Checked printable ASCII at construction, so always UTF-8; never panics.
        core::str::from_utf8(&self.bytes[..length]).unwrap_or("")
    }

    pub fn is_empty(&self) -> bool {
        self.bytes[0] == 0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Label({:?})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for text in ["", "vd:3", "phy:hda3", "01234567890123456789", "a b~"] {
            let label = Label::new(text).unwrap();
            assert_eq!(label.as_str(), text);
            assert_eq!(Label::from_wire(label.to_wire()), Ok(label));
        }
        assert!(Label::EMPTY.is_empty());
    }

    #[test]
    fn malformed_labels_are_einval() {
        assert_eq!(
            Label::new("012345678901234567890"),
            Err(Error::InvalidArgument)
        );
        assert_eq!(Label::new("tab\there"), Err(Error::InvalidArgument));
        assert_eq!(Label::new("é"), Err(Error::InvalidArgument));
        let mut hole = [0u8; LABEL_BYTES];
        hole[0] = b'a';
        hole[2] = b'b';
        assert_eq!(Label::from_wire(hole), Err(Error::InvalidArgument));
        let mut high = [0u8; LABEL_BYTES];
        high[0] = 0x80;
        assert_eq!(Label::from_wire(high), Err(Error::InvalidArgument));
    }
}
