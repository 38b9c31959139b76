//! Guest memory as the hypervisor sees it: addresses that must be checked before use.
//!
//! An address a guest passes is an allegation. [`GuestAddress`] has no `+`: offsets go
//! through [`GuestAddress::checked_offset`] and array elements through
//! [`GuestAddress::element`], which fail on wrap-around instead of aliasing low memory.

use shared_abi::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// An address in the calling domain's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestAddress(pub u64);

impl GuestAddress {
    /// `self + bytes`, or `EFAULT` when it wraps.
    pub fn checked_offset(self, bytes: u64) -> Result<GuestAddress, Error> {
        self.0
            .checked_add(bytes)
            .map(GuestAddress)
            .ok_or(Error::BadAddress)
    }

    /// The address of element `index` of an array of `element_size`-byte elements starting
    /// here, or `EFAULT` when the multiplication or the addition wraps.
    pub fn element(self, index: u64, element_size: usize) -> Result<GuestAddress, Error> {
        let offset = index
            .checked_mul(element_size as u64)
            .ok_or(Error::BadAddress)?;
        self.checked_offset(offset)
    }
}

/// Copy-in and copy-out of the calling domain's memory, implemented by the hypervisor.
/// Both must check the whole range `[address, address + len)` and fail with `EFAULT`
/// without touching anything when any of it is outside the domain's memory.
pub trait GuestMemory {
    fn read(&self, address: GuestAddress, out: &mut [u8]) -> Result<(), Error>;
    fn write(&mut self, address: GuestAddress, data: &[u8]) -> Result<(), Error>;

    /// The most bytes of argument struct and array one call can carry through this memory,
    /// reported by [`shared_abi::Op::Limits`] so callers size their pieces: a hypervisor
    /// that maps the caller's memory has no limit of its own; a channel that carries an
    /// image of it in a frame has the frame's.
    fn max_call_bytes(&self) -> u64 {
        u64::MAX
    }
}

/// Guest memory held in one byte slice, addressed from zero: how a frame channel models
/// the memory image a remote caller sends, and how host tests model a guest.
pub struct SliceMemory<'a> {
    bytes: &'a mut [u8],
    max_call_bytes: u64,
    /// One past the last byte any write reached: a channel replies with the image up to
    /// here, since the caller still holds the rest as it sent it.
    written_end: usize,
}

impl<'a> SliceMemory<'a> {
    pub fn new(bytes: &'a mut [u8]) -> SliceMemory<'a> {
        SliceMemory {
            bytes,
            max_call_bytes: u64::MAX,
            written_end: 0,
        }
    }

    /// An image carried by a channel whose calls hold at most `max_call_bytes`.
    pub fn with_call_limit(bytes: &'a mut [u8], max_call_bytes: u64) -> SliceMemory<'a> {
        SliceMemory {
            bytes,
            max_call_bytes,
            written_end: 0,
        }
    }

    /// One past the last byte written so far (0 when nothing was).
    pub fn written_end(&self) -> usize {
        self.written_end
    }

    /// The checked byte range `[address, address + len)` inside the slice.
    fn range(&self, address: GuestAddress, len: usize) -> Result<core::ops::Range<usize>, Error> {
        let start = usize::try_from(address.0).map_err(|_| Error::BadAddress)?;
        let end = start.checked_add(len).ok_or(Error::BadAddress)?;
        if end > self.bytes.len() {
            return Err(Error::BadAddress);
        }
        Ok(start..end)
    }
}

impl GuestMemory for SliceMemory<'_> {
    fn read(&self, address: GuestAddress, out: &mut [u8]) -> Result<(), Error> {
        let range = self.range(address, out.len())?;
        out.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write(&mut self, address: GuestAddress, data: &[u8]) -> Result<(), Error> {
        let range = self.range(address, data.len())?;
        self.written_end = self.written_end.max(range.end);
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn max_call_bytes(&self) -> u64 {
        self.max_call_bytes
    }
}

/// Copy one wire struct in. The result is a local copy: nothing keeps pointing into guest
/// memory, so the guest cannot change it after it is validated.
pub(crate) fn read_struct<T, M>(memory: &M, address: GuestAddress) -> Result<T, Error>
where
    T: FromBytes + IntoBytes + KnownLayout + Immutable,
    M: GuestMemory + ?Sized,
{
    let mut value = T::new_zeroed();
    memory.read(address, value.as_mut_bytes())?;
    Ok(value)
}

/// Copy one wire struct out.
pub(crate) fn write_struct<T, M>(
    memory: &mut M,
    address: GuestAddress,
    value: &T,
) -> Result<(), Error>
where
    T: IntoBytes + Immutable,
    M: GuestMemory + ?Sized,
{
    memory.write(address, value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_memory_checks_every_byte_of_the_range() {
        let mut bytes = [0u8; 16];
        let mut memory = SliceMemory::new(&mut bytes);
        let mut out = [0u8; 4];
        assert_eq!(memory.read(GuestAddress(12), &mut out), Ok(()));
        assert_eq!(
            memory.read(GuestAddress(13), &mut out),
            Err(Error::BadAddress)
        );
        assert_eq!(
            memory.read(GuestAddress(u64::MAX), &mut out),
            Err(Error::BadAddress)
        );
        assert_eq!(memory.write(GuestAddress(16), &[1]), Err(Error::BadAddress));
        assert_eq!(memory.written_end(), 0, "refused writes change nothing");
        assert_eq!(memory.write(GuestAddress(3), &[1, 2]), Ok(()));
        assert_eq!(memory.write(GuestAddress(15), &[7]), Ok(()));
        assert_eq!(memory.write(GuestAddress(8), &[9]), Ok(()));
        assert_eq!(memory.written_end(), 16);
        assert_eq!(bytes[15], 7);
    }

    #[test]
    fn address_arithmetic_refuses_wrap_around() {
        assert_eq!(
            GuestAddress(u64::MAX).checked_offset(1),
            Err(Error::BadAddress)
        );
        assert_eq!(GuestAddress(8).element(2, 24), Ok(GuestAddress(56)));
        assert_eq!(
            GuestAddress(0).element(u64::MAX / 2, 24),
            Err(Error::BadAddress)
        );
        assert_eq!(
            GuestAddress(u64::MAX - 10).element(1, 24),
            Err(Error::BadAddress)
        );
    }
}
