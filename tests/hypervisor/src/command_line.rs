//! The kernel command line (QEMU's `-append`), read from the PVH start info, and the one
//! option it carries: `sharing=0|1|2`, the sharing ceiling: the most permissive level any
//! request may ask for (default 2, so the tools' requests rule unless an administrator
//! lowers it).
//!
//! QEMU's PVH loader leaves the physical address of a `struct hvm_start_info` in %ebx at
//! entry; its `cmdline_paddr` points at a NUL-terminated string. The string is input: it is
//! copied once into a bounded buffer, and every loop over it is bounded by that buffer.

use core::fmt;

use hv_vbd::SharingLevel;

/// `XEN_HVM_START_MAGIC_VALUE`, the first field of `struct hvm_start_info`.
const START_INFO_MAGIC: u32 = 0x336E_C578;
/// The fields read here: magic at 0, `cmdline_paddr` at 24.
const START_INFO_BYTES: usize = 32;
const COMMAND_LINE_ADDRESS_OFFSET: usize = 24;
/// The longest command line accepted, terminator excluded; QEMU's own limit for PVH
/// kernels is lower.
const MAX_COMMAND_LINE: usize = 4096;
/// The entry code identity-maps the first 4 GiB; nothing above can be read.
const MAPPED_BYTES: u64 = 1 << 32;

/// The command line as copied out of the boot loader's memory.
pub struct CommandLine {
    bytes: [u8; MAX_COMMAND_LINE],
    length: usize,
}

/// What the hypervisor takes from its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The sharing ceiling.
    pub sharing: SharingLevel,
}

/// Why the command line cannot be used; each is a fatal boot error.
#[derive(Clone, Copy, Debug)]
pub enum CommandLineError {
    /// The start info points at a string outside the mapped memory.
    Unmapped { address: u64 },
    /// No NUL within [`MAX_COMMAND_LINE`] bytes.
    TooLong,
    /// `sharing=` with a value other than 0, 1 or 2: its first bytes and its length.
    InvalidSharing { value: [u8; 16], length: usize },
    /// `sharing=` given more than once.
    RepeatedSharing,
}

impl fmt::Display for CommandLineError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandLineError::Unmapped { address } => write!(
                formatter,
                "the command line at {address:#x} lies outside the first 4 GiB"
            ),
            CommandLineError::TooLong => write!(
                formatter,
                "the command line is longer than {MAX_COMMAND_LINE} bytes"
            ),
            CommandLineError::InvalidSharing { value, length } => write!(
                formatter,
                "invalid sharing level `{}{}` on the command line: expected sharing=0, 1 or 2",
                value[..(*length).min(value.len())].escape_ascii(),
                if *length > value.len() { "..." } else { "" }
            ),
            CommandLineError::RepeatedSharing => {
                write!(
                    formatter,
                    "sharing= appears more than once on the command line"
                )
            }
        }
    }
}

/// Fill `out` from physical memory at `address`, which must lie in the identity map.
fn read_physical(address: u64, out: &mut [u8]) -> Result<(), CommandLineError> {
    let mapped = address != 0
        && address
            .checked_add(out.len() as u64)
            .is_some_and(|end| end <= MAPPED_BYTES);
    if !mapped {
        return Err(CommandLineError::Unmapped { address });
    }
    for (offset, byte) in out.iter_mut().enumerate() {
        let pointer = (address as usize + offset) as *const u8;
        // SAFETY: the address is non-zero and below 4 GiB, which the entry code maps 1:1
        // with present, writable pages, so the read cannot fault. It is the boot loader's
        // memory (the start info and the string it points to, in RAM), which nothing else
        // accesses: a volatile byte read copies it out without creating a reference to it.
        *byte = unsafe { pointer.read_volatile() };
    }
    Ok(())
}

impl CommandLine {
    /// Copy the command line out of the start info at `start_info` (the entry %ebx). A
    /// missing start info or command line reads as an empty command line.
    pub fn read(start_info: u32) -> Result<CommandLine, CommandLineError> {
        let mut command_line = CommandLine {
            bytes: [0; MAX_COMMAND_LINE],
            length: 0,
        };
        let mut info = [0u8; START_INFO_BYTES];
        if start_info == 0 || read_physical(u64::from(start_info), &mut info).is_err() {
            return Ok(command_line);
        }
        let field = |offset: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&info[offset..offset + 8]);
            u64::from_le_bytes(bytes)
        };
        let magic = field(0) as u32;
        let address = field(COMMAND_LINE_ADDRESS_OFFSET);
        if magic != START_INFO_MAGIC || address == 0 {
            return Ok(command_line);
        }
        // Read up to the terminator, at most MAX_COMMAND_LINE + 1 bytes, one at a time so
        // that nothing is read past the NUL.
        for length in 0..=MAX_COMMAND_LINE {
            let mut byte = [0u8; 1];
            let byte_address = address
                .checked_add(length as u64)
                .ok_or(CommandLineError::Unmapped { address })?;
            read_physical(byte_address, &mut byte)?;
            if byte[0] == 0 {
                command_line.length = length;
                return Ok(command_line);
            }
            if length == MAX_COMMAND_LINE {
                break;
            }
            command_line.bytes[length] = byte[0];
        }
        Err(CommandLineError::TooLong)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.length]
    }

    /// The options, from whitespace-separated words; words other than `sharing=` are
    /// passed to `ignored` (so the console can name them) and otherwise ignored.
    pub fn options(&self, mut ignored: impl FnMut(&[u8])) -> Result<Options, CommandLineError> {
        let mut sharing = None;
        let words = self
            .as_bytes()
            .split(|byte| byte.is_ascii_whitespace())
            .filter(|word| !word.is_empty());
        for word in words {
            let Some(value) = word.strip_prefix(b"sharing=") else {
                ignored(word);
                continue;
            };
            if sharing.is_some() {
                return Err(CommandLineError::RepeatedSharing);
            }
            let parsed = core::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse::<SharingLevel>().ok());
            sharing = Some(match parsed {
                Some(level) => level,
                None => {
                    let mut shown = [0u8; 16];
                    let kept = value.len().min(shown.len());
                    shown[..kept].copy_from_slice(&value[..kept]);
                    return Err(CommandLineError::InvalidSharing {
                        value: shown,
                        length: value.len(),
                    });
                }
            });
        }
        Ok(Options {
            sharing: sharing.unwrap_or(SharingLevel::Unrestricted),
        })
    }
}
