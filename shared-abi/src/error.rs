//! The one error type of the ABI, carried on the wire as a negative errno value.

/// Every failure a block hypercall or block request can report. Values are Linux errno
/// numbers, negated on the wire, as in Xen 1.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// EPERM: the caller may not do this (a guest changing VBDs, or reading another's).
    PermissionDenied,
    /// ENOENT: no such VBD or domain.
    NotFound,
    /// EFAULT: a guest address or length lies outside the caller's memory.
    BadAddress,
    /// EBUSY: the extents would be shared in a way the sharing level forbids.
    Busy,
    /// EEXIST: a VBD with this device number already exists for the domain.
    AlreadyExists,
    /// ENODEV: the physical device is not registered with the hypervisor.
    NoDevice,
    /// EINVAL: a malformed argument (zero length, unknown flag bits, overlapping extents).
    InvalidArgument,
    /// ENOSPC: a fixed-capacity table is full.
    NoSpace,
    /// EROFS: a write to a read-only VBD.
    ReadOnly,
    /// ERANGE: a sector range past the end of a VBD or a physical device, or overflowing.
    OutOfRange,
    /// E2BIG: the caller's buffer is too small; the count needed has been written back.
    TooBig,
    /// EACCES: the VBD was not opened for this kind of access.
    AccessDenied,
    /// ENOSYS: an unknown operation number.
    NotImplemented,
    /// EIO: the physical disk failed the transfer.
    Io,
    /// ESTALE: a piece of a multi-call set-extents names a pending list that another call
    /// has since replaced or discarded; start again from index 0.
    Stale,
}

impl Error {
    /// Every error, for exhaustive tests.
    pub const ALL: [Error; 15] = [
        Error::PermissionDenied,
        Error::NotFound,
        Error::BadAddress,
        Error::Busy,
        Error::AlreadyExists,
        Error::NoDevice,
        Error::InvalidArgument,
        Error::NoSpace,
        Error::ReadOnly,
        Error::OutOfRange,
        Error::TooBig,
        Error::AccessDenied,
        Error::NotImplemented,
        Error::Io,
        Error::Stale,
    ];

    /// The positive Linux errno value. Exhaustive on purpose: a new variant must be given
    /// its own number here, it cannot silently become `EINVAL`.
    pub const fn errno(self) -> i32 {
        match self {
            Error::PermissionDenied => 1,
            Error::NotFound => 2,
            Error::Io => 5,
            Error::TooBig => 7,
            Error::AccessDenied => 13,
            Error::BadAddress => 14,
            Error::Busy => 16,
            Error::AlreadyExists => 17,
            Error::NoDevice => 19,
            Error::InvalidArgument => 22,
            Error::NoSpace => 28,
            Error::ReadOnly => 30,
            Error::OutOfRange => 34,
            Error::NotImplemented => 38,
            Error::Stale => 116,
        }
    }

    /// The symbolic errno name, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Error::PermissionDenied => "EPERM",
            Error::NotFound => "ENOENT",
            Error::Io => "EIO",
            Error::TooBig => "E2BIG",
            Error::AccessDenied => "EACCES",
            Error::BadAddress => "EFAULT",
            Error::Busy => "EBUSY",
            Error::AlreadyExists => "EEXIST",
            Error::NoDevice => "ENODEV",
            Error::InvalidArgument => "EINVAL",
            Error::NoSpace => "ENOSPC",
            Error::ReadOnly => "EROFS",
            Error::OutOfRange => "ERANGE",
            Error::NotImplemented => "ENOSYS",
            Error::Stale => "ESTALE",
        }
    }

    /// The wire form: the negated errno.
    pub const fn to_wire(self) -> i64 {
        -(self.errno() as i64)
    }

    /// Decode a wire result: non-negative values are success, known negative errno values are
    /// errors, anything else is `None` (a peer speaking another ABI).
    pub fn from_wire(value: i64) -> Option<Result<u64, Error>> {
        if value >= 0 {
            return Some(Ok(value as u64));
        }
        Error::ALL
            .into_iter()
            .find(|error| error.to_wire() == value)
            .map(Err)
    }

    /// The wire form of a result.
    pub fn result_to_wire(result: Result<u64, Error>) -> i64 {
        match result {
            // Results are counts and versions; anything past i64::MAX is a caller bug, so it
            // is clamped rather than allowed to look like an error code.
            Ok(value) => i64::try_from(value).unwrap_or(i64::MAX),
            Err(error) => error.to_wire(),
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self {
            Error::PermissionDenied => "operation not permitted",
            Error::NotFound => "no such virtual block device",
            Error::BadAddress => "bad address",
            Error::Busy => "extents already in use (sharing refused)",
            Error::AlreadyExists => "virtual block device already exists",
            Error::NoDevice => "no such physical device",
            Error::InvalidArgument => "invalid argument",
            Error::NoSpace => "no space left in the VBD table",
            Error::ReadOnly => "virtual block device is read-only",
            Error::OutOfRange => "sector range out of bounds",
            Error::TooBig => "buffer too small",
            Error::AccessDenied => "access denied",
            Error::NotImplemented => "operation not implemented",
            Error::Io => "physical I/O error",
            Error::Stale => "pending extent list replaced (start again)",
        };
        write!(formatter, "{} ({})", text, self.name())
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_round_trips_through_the_wire() {
        for error in Error::ALL {
            assert!(error.to_wire() < 0);
            assert_eq!(Error::from_wire(error.to_wire()), Some(Err(error)));
        }
    }

    #[test]
    fn errno_values_are_distinct() {
        for (index, error) in Error::ALL.iter().enumerate() {
            for other in &Error::ALL[index + 1..] {
                assert_ne!(error.errno(), other.errno(), "{error:?} and {other:?}");
            }
        }
    }

    #[test]
    fn xen_values_are_kept() {
        assert_eq!(Error::PermissionDenied.to_wire(), -1);
        assert_eq!(Error::InvalidArgument.to_wire(), -22);
        assert_eq!(Error::NoDevice.to_wire(), -19);
        assert_eq!(Error::NotImplemented.to_wire(), -38);
    }

    #[test]
    fn success_and_unknown_codes_decode() {
        assert_eq!(Error::from_wire(0), Some(Ok(0)));
        assert_eq!(Error::from_wire(42), Some(Ok(42)));
        assert_eq!(Error::from_wire(-4), None);
        assert_eq!(Error::result_to_wire(Ok(u64::MAX)), i64::MAX);
    }
}
