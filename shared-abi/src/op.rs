//! Hypercall operation numbers, kept from Xen 1.2's block-io multiplexer where they exist.

use crate::Error;

/// One block hypercall. Numbers 3..=9 are Xen 1.2's `BLOCK_IO_OP_VBD_*`; 0..=2 were its ring
/// signalling and stay unused so the lineage remains readable.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Create an empty VBD: [`crate::wire::CreateArgs`].
    Create = 3,
    /// Append one extent: [`crate::wire::GrowArgs`].
    Grow = 4,
    /// Remove the last extent: [`crate::wire::VbdHandle`].
    Shrink = 5,
    /// Replace the whole extent list atomically: [`crate::wire::SetExtentsArgs`].
    SetExtents = 6,
    /// Delete a VBD: [`crate::wire::VbdHandle`].
    Delete = 7,
    /// List the VBDs of one domain or of all: [`crate::wire::ProbeArgs`].
    Probe = 8,
    /// One VBD's mode, size and extents: [`crate::wire::InfoArgs`].
    Info = 9,
    /// The ABI version, returned as the result; takes no argument.
    Version = 10,
    /// Release everything a domain had: [`crate::wire::DomainArgs`].
    DestroyDomain = 11,
    /// The table's limits and the sharing ceiling: [`crate::wire::LimitsArgs`].
    Limits = 12,
}

impl Op {
    /// Every operation, in number order.
    pub const ALL: [Op; 10] = [
        Op::Create,
        Op::Grow,
        Op::Shrink,
        Op::SetExtents,
        Op::Delete,
        Op::Probe,
        Op::Info,
        Op::Version,
        Op::DestroyDomain,
        Op::Limits,
    ];

    /// Whether only dom0 may issue this operation for another domain's VBDs.
    pub const fn changes_vbds(self) -> bool {
        matches!(
            self,
            Op::Create | Op::Grow | Op::Shrink | Op::SetExtents | Op::Delete | Op::DestroyDomain
        )
    }
}

impl TryFrom<u32> for Op {
    type Error = Error;

    /// Unknown numbers are `ENOSYS`, never a default operation.
    fn try_from(raw: u32) -> Result<Self, Error> {
        Ok(match raw {
            3 => Op::Create,
            4 => Op::Grow,
            5 => Op::Shrink,
            6 => Op::SetExtents,
            7 => Op::Delete,
            8 => Op::Probe,
            9 => Op::Info,
            10 => Op::Version,
            11 => Op::DestroyDomain,
            12 => Op::Limits,
            _ => return Err(Error::NotImplemented),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_through_its_number() {
        for op in Op::ALL {
            assert_eq!(Op::try_from(op as u32), Ok(op));
        }
    }

    #[test]
    fn unknown_numbers_are_enosys() {
        for raw in [0, 1, 2, 13, 0xFFFF_FFFF] {
            assert_eq!(Op::try_from(raw), Err(Error::NotImplemented));
        }
    }
}
