//! The sharing check: one sweep over the physical index that finds every overlap between a
//! VBD's new extents and everything else, in `O(n)` for `n` extents in the table.
//!
//! Extents arrive in `(device, start)` order. For each kind of extent the sweep keeps only
//! the furthest end seen so far on the current device, so a new extent overlaps an earlier
//! one of a kind exactly when that kind's furthest end lies past its start; an extent seen
//! after a new one overlaps it when the new ones' furthest end lies past its start. Every
//! overlap with another VBD is judged at the level the request asked for: what the caller
//! accepts is what the hypervisor enforces.

use shared_abi::{Error, SharingLevel};

/// Where an extent in the sweep comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    /// Part of the change.
    New,
    /// Kept by the same VBD (a grow): any overlap with a new extent is a malformed VBD.
    Kept,
    /// Another VBD's visible extent, of either mode.
    Other { writable: bool },
}

/// Sweep state over one device at a time.
pub(crate) struct Sweep {
    level: SharingLevel,
    new_writable: bool,
    device: Option<u32>,
    new_end: u64,
    kept_end: u64,
    other_reader_end: u64,
    other_writer_end: u64,
}

impl Sweep {
    pub(crate) fn new(level: SharingLevel, new_writable: bool) -> Sweep {
        Sweep {
            level,
            new_writable,
            device: None,
            new_end: 0,
            kept_end: 0,
            other_reader_end: 0,
            other_writer_end: 0,
        }
    }

    /// Visit one extent `[start, end)`, in `(device, start)` order. `EINVAL` when a new
    /// extent overlaps another of the same VBD, `EBUSY` when sharing forbids an overlap.
    #[inline]
    pub(crate) fn visit(
        &mut self,
        device: u32,
        start: u64,
        end: u64,
        source: Source,
    ) -> Result<(), Error> {
        if self.device != Some(device) {
            *self = Sweep::new(self.level, self.new_writable);
            self.device = Some(device);
        }
        let allows = |other_writable| self.level.allows(self.new_writable, other_writable);
        match source {
            Source::New => {
                if self.new_end > start || self.kept_end > start {
                    return Err(Error::InvalidArgument);
                }
                if (self.other_writer_end > start && !allows(true))
                    || (self.other_reader_end > start && !allows(false))
                {
                    return Err(Error::Busy);
                }
                self.new_end = self.new_end.max(end);
            }
            Source::Kept => {
                if self.new_end > start {
                    return Err(Error::InvalidArgument);
                }
                self.kept_end = self.kept_end.max(end);
            }
            Source::Other { writable } => {
                if self.new_end > start && !allows(writable) {
                    return Err(Error::Busy);
                }
                let furthest = if writable {
                    &mut self.other_writer_end
                } else {
                    &mut self.other_reader_end
                };
                *furthest = (*furthest).max(end);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SharingLevel::*;

    fn other(writable: bool) -> Source {
        Source::Other { writable }
    }

    #[test]
    fn a_new_extent_strictly_containing_an_old_one_is_seen() {
        // Seed defect 4: the old check missed an extent that strictly contains an old one.
        let mut sweep = Sweep::new(ReadersOnly, true);
        sweep.visit(1, 0, 100, Source::New).unwrap();
        assert_eq!(sweep.visit(1, 10, 20, other(false)), Err(Error::Busy));
    }

    #[test]
    fn adjacent_extents_and_other_devices_do_not_overlap() {
        let mut sweep = Sweep::new(ReadersOnly, true);
        sweep.visit(1, 0, 10, other(true)).unwrap();
        sweep.visit(1, 10, 20, Source::New).unwrap();
        sweep.visit(2, 0, 10, other(true)).unwrap();
        sweep.visit(2, 10, 20, Source::New).unwrap();
    }

    #[test]
    fn the_requests_level_decides() {
        let mut sweep = Sweep::new(SingleWriter, false);
        sweep.visit(1, 0, 10, other(true)).unwrap();
        assert_eq!(sweep.visit(1, 5, 15, Source::New), Ok(()));
        let mut sweep = Sweep::new(SingleWriter, true);
        sweep.visit(1, 0, 10, other(true)).unwrap();
        assert_eq!(sweep.visit(1, 5, 15, Source::New), Err(Error::Busy));
        let mut sweep = Sweep::new(Unrestricted, true);
        sweep.visit(1, 0, 10, Source::New).unwrap();
        assert_eq!(sweep.visit(1, 5, 15, other(true)), Ok(()));
    }

    #[test]
    fn a_vbd_overlapping_itself_is_einval() {
        let mut sweep = Sweep::new(Unrestricted, true);
        sweep.visit(1, 0, 10, Source::New).unwrap();
        assert_eq!(
            sweep.visit(1, 9, 12, Source::New),
            Err(Error::InvalidArgument)
        );
        let mut sweep = Sweep::new(Unrestricted, true);
        sweep.visit(1, 0, 10, Source::Kept).unwrap();
        assert_eq!(
            sweep.visit(1, 9, 12, Source::New),
            Err(Error::InvalidArgument)
        );
        let mut sweep = Sweep::new(Unrestricted, true);
        sweep.visit(1, 0, 10, Source::New).unwrap();
        assert_eq!(
            sweep.visit(1, 9, 12, Source::Kept),
            Err(Error::InvalidArgument)
        );
    }
}
