//! A small reader of MBR (with extended partitions) and GPT partition tables, so that
//! `phy:hda2` can be found inside a raw disk image without asking the kernel.
//!
//! Kept rather than the `gpt` and `mbrman` crates: together they would replace about 200
//! lines with two dependencies that each want a `Read + Seek` device of their own and their
//! own error types, and neither numbers logical partitions the way Linux names them
//! (`hda5` on); this reader takes any [`SectorSource`], bounds every loop over the disk's
//! bytes, and falls back to the backup GPT header as Linux and sfdisk do.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use shared_abi::SECTOR_SIZE;

const SECTOR: usize = SECTOR_SIZE as usize;
/// Linux numbers logical partitions from 5 and stops following a chain of extended boot
/// records long before this; the bound protects us from a chain that loops.
const MAX_LOGICAL_PARTITIONS: u32 = 256;
/// The GPT standard reserves at least 16 KiB of entries; real tables use 128 of 128 bytes.
/// Anything past this bound is a corrupt header, not a disk we should trust.
const MAX_GPT_ENTRY_BYTES: u64 = 4 << 20;

/// What kind of partition table a whole disk carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Mbr,
    Gpt,
    /// The kernel lists partitions of it (sysfs), whatever their table.
    Some,
    /// Sector 0 has an MBR signature, but the table does not make sense.
    Damaged,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            TableKind::Mbr => "an MBR",
            TableKind::Gpt => "a GPT",
            TableKind::Some => "a",
            TableKind::Damaged => "a damaged",
        })
    }
}

/// One partition: its Linux number and where it lies, in sectors of the whole disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub start_sector: u64,
    pub nr_sectors: u64,
}

/// A disk's partition table as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
    /// What was found damaged and worked around.
    pub warnings: Vec<String>,
}

/// Something whose sectors can be read: an image file, a block device, or bytes in a test.
pub trait SectorSource {
    /// Fill `buffer` (a whole number of sectors) from sector `first_sector` on.
    fn read_sectors(&self, first_sector: u64, buffer: &mut [u8]) -> io::Result<()>;
}

impl SectorSource for File {
    fn read_sectors(&self, first_sector: u64, buffer: &mut [u8]) -> io::Result<()> {
        let offset = first_sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows"))?;
        self.read_exact_at(buffer, offset)
    }
}

impl SectorSource for [u8] {
    fn read_sectors(&self, first_sector: u64, buffer: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(first_sector)
            .ok()
            .and_then(|sector| sector.checked_mul(SECTOR))
            .filter(|&start| {
                start
                    .checked_add(buffer.len())
                    .is_some_and(|end| end <= self.len())
            })
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buffer.copy_from_slice(&self[start..start + buffer.len()]);
        Ok(())
    }
}

/// Why a partition table could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum TableError {
    /// Reading the disk failed.
    Io(String),
    /// Sector 0 carries no MBR signature: the disk is not partitioned.
    NoTable,
    /// The table is there but does not make sense.
    Corrupt(String),
}

impl std::fmt::Display for TableError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::Io(reason) => write!(formatter, "reading the partition table: {reason}"),
            TableError::NoTable => write!(formatter, "no partition table"),
            TableError::Corrupt(reason) => write!(formatter, "corrupt partition table: {reason}"),
        }
    }
}

fn read(
    source: &(impl SectorSource + ?Sized),
    sector: u64,
    buffer: &mut [u8],
) -> Result<(), TableError> {
    source
        .read_sectors(sector, buffer)
        .map_err(|error| TableError::Io(format!("sector {sector}: {error}")))
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// The partitions of a disk of `disk_sectors` sectors, in Linux numbering: MBR primaries 1-4,
/// logical partitions from 5, GPT entries by their slot. Extended-partition containers are
/// left out since they hold no data of their own. Every partition is checked to lie inside
/// the disk.
pub fn read_partition_table(
    source: &(impl SectorSource + ?Sized),
    disk_sectors: u64,
) -> Result<PartitionTable, TableError> {
    let mut mbr = [0u8; SECTOR];
    read(source, 0, &mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Err(TableError::NoTable);
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|index| {
            let entry = &mbr[446 + 16 * index..446 + 16 * (index + 1)];
            (
                entry[4],
                u64::from(u32_at(entry, 8)),
                u64::from(u32_at(entry, 12)),
            )
        })
        .collect();
    let mut warnings = Vec::new();
    let gpt = entries.iter().any(|&(kind, _, _)| kind == 0xEE);
    let partitions = if gpt {
        read_gpt(source, disk_sectors, &mut warnings)?
    } else {
        let mut partitions = Vec::new();
        let mut next_logical = 5;
        for (index, &(kind, start_sector, nr_sectors)) in entries.iter().enumerate() {
            if kind == 0 || nr_sectors == 0 {
                continue;
            }
            if matches!(kind, 0x05 | 0x0F | 0x85) {
                read_logical(source, start_sector, &mut next_logical, &mut partitions)?;
            } else {
                partitions.push(Partition {
                    number: index as u32 + 1,
                    start_sector,
                    nr_sectors,
                });
            }
        }
        partitions
    };
    for partition in &partitions {
        let inside = partition.start_sector > 0
            && partition
                .start_sector
                .checked_add(partition.nr_sectors)
                .is_some_and(|end| end <= disk_sectors);
        if !inside {
            return Err(TableError::Corrupt(format!(
                "partition {} (sectors {}+{}) lies outside the disk of {disk_sectors} sectors",
                partition.number, partition.start_sector, partition.nr_sectors
            )));
        }
    }
    Ok(PartitionTable {
        kind: if gpt { TableKind::Gpt } else { TableKind::Mbr },
        partitions,
        warnings,
    })
}

/// Follow the chain of extended boot records that starts at `extended_start`.
fn read_logical(
    source: &(impl SectorSource + ?Sized),
    extended_start: u64,
    next_number: &mut u32,
    partitions: &mut Vec<Partition>,
) -> Result<(), TableError> {
    let mut record_sector = extended_start;
    for _ in 0..MAX_LOGICAL_PARTITIONS {
        let mut record = [0u8; SECTOR];
        read(source, record_sector, &mut record)?;
        if record[510..512] != [0x55, 0xAA] {
            return Err(TableError::Corrupt(format!(
                "extended boot record at sector {record_sector} has no signature"
            )));
        }
        let data = &record[446..462];
        let link = &record[462..478];
        if data[4] != 0 && u32_at(data, 12) != 0 {
            partitions.push(Partition {
                number: *next_number,
                start_sector: record_sector + u64::from(u32_at(data, 8)),
                nr_sectors: u64::from(u32_at(data, 12)),
            });
            *next_number += 1;
        }
        if link[4] == 0 || u32_at(link, 8) == 0 {
            return Ok(());
        }
        record_sector = extended_start + u64::from(u32_at(link, 8));
    }
    Err(TableError::Corrupt(format!(
        "more than {MAX_LOGICAL_PARTITIONS} logical partitions (a loop in the chain?)"
    )))
}

/// The GPT of a disk: from the primary header at sector 1, or, when that is damaged, from
/// the backup header in the last sector, saying so in `warnings`.
fn read_gpt(
    source: &(impl SectorSource + ?Sized),
    disk_sectors: u64,
    warnings: &mut Vec<String>,
) -> Result<Vec<Partition>, TableError> {
    let primary = match read_gpt_at(source, 1, disk_sectors)? {
        Ok(partitions) => return Ok(partitions),
        Err(reason) => reason,
    };
    let backup_sector = disk_sectors.saturating_sub(1);
    match read_gpt_at(source, backup_sector, disk_sectors)? {
        Ok(partitions) => {
            warnings.push(format!(
                "the primary GPT header is damaged ({primary}); using the backup at sector {backup_sector}"
            ));
            Ok(partitions)
        }
        Err(backup) => Err(TableError::Corrupt(format!(
            "{primary}; the backup: {backup}"
        ))),
    }
}

/// The partitions of the GPT whose header is at `header_sector`, or why that header or its
/// entry array is damaged. Reading errors are the outer `Err`.
fn read_gpt_at(
    source: &(impl SectorSource + ?Sized),
    header_sector: u64,
    disk_sectors: u64,
) -> Result<Result<Vec<Partition>, String>, TableError> {
    let mut header = [0u8; SECTOR];
    read(source, header_sector, &mut header)?;
    if &header[0..8] != b"EFI PART" {
        return Ok(Err("protective MBR but no GPT header".into()));
    }
    let header_size = u32_at(&header, 12) as usize;
    if !(92..=SECTOR).contains(&header_size) {
        return Ok(Err(format!("GPT header size {header_size}")));
    }
    let mut checked = header[..header_size].to_vec();
    checked[16..20].fill(0);
    if crc32(&checked) != u32_at(&header, 16) {
        return Ok(Err("GPT header checksum mismatch".into()));
    }
    if u64_at(&header, 24) != header_sector {
        return Ok(Err(format!(
            "GPT header at sector {header_sector} says it is at sector {}",
            u64_at(&header, 24)
        )));
    }
    let entries_lba = u64_at(&header, 72);
    let entry_count = u64::from(u32_at(&header, 80));
    let entry_size = u64::from(u32_at(&header, 84));
    let entry_bytes = entry_count * entry_size;
    if entry_size < 128 || entry_bytes > MAX_GPT_ENTRY_BYTES {
        return Ok(Err(format!(
            "GPT entry array of {entry_count} entries of {entry_size} bytes"
        )));
    }
    let mut entries = vec![0u8; entry_bytes.div_ceil(SECTOR_SIZE) as usize * SECTOR];
    read(source, entries_lba, &mut entries)?;
    if crc32(&entries[..entry_bytes as usize]) != u32_at(&header, 88) {
        return Ok(Err("GPT entry array checksum mismatch".into()));
    }
    let mut partitions = Vec::new();
    for index in 0..entry_count as usize {
        let entry = &entries[index * entry_size as usize..][..entry_size as usize];
        if entry[0..16].iter().all(|&byte| byte == 0) {
            continue;
        }
        let first = u64_at(entry, 32);
        let last = u64_at(entry, 40);
        if last < first || last >= disk_sectors {
            return Ok(Err(format!(
                "GPT entry {} spans sectors {first}..={last} of a disk of {disk_sectors}",
                index + 1
            )));
        }
        partitions.push(Partition {
            number: index as u32 + 1,
            start_sector: first,
            nr_sectors: last - first + 1,
        });
    }
    Ok(Ok(partitions))
}

/// The CRC-32 (IEEE 802.3) that GPT uses for its header and entry array.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The Linux name of partition `number` of `disk`: `hda2`, `sda1`, but `nvme0n1p3` and
/// `mmcblk0p1` when the disk name ends in a digit.
pub fn partition_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|character: char| character.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// The partition number `name` denotes on `disk`, if it names one.
pub fn partition_number(disk: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(disk)?;
    let digits = if disk.ends_with(|character: char| character.is_ascii_digit()) {
        rest.strip_prefix('p')?
    } else {
        rest
    };
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
        bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
        bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn mbr_entry(sector: &mut [u8], slot: usize, kind: u8, start: u32, size: u32) {
        let base = 446 + 16 * slot;
        sector[base + 4] = kind;
        put_u32(sector, base + 8, start);
        put_u32(sector, base + 12, size);
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }

    #[test]
    fn mbr_primaries_and_logicals() {
        let mut disk = vec![0u8; 4096 * SECTOR];
        mbr_entry(&mut disk[..SECTOR], 0, 0x83, 2048, 1024);
        mbr_entry(&mut disk[..SECTOR], 1, 0x05, 3072, 1024);
        // First logical at 3072+1 .. link to the next record at extended start + 512.
        mbr_entry(&mut disk[3072 * SECTOR..3073 * SECTOR], 0, 0x83, 1, 100);
        mbr_entry(&mut disk[3072 * SECTOR..3073 * SECTOR], 1, 0x05, 512, 200);
        mbr_entry(&mut disk[3584 * SECTOR..3585 * SECTOR], 0, 0x83, 2, 50);
        let partitions = read_partition_table(disk.as_slice(), 4096)
            .unwrap()
            .partitions;
        assert_eq!(
            partitions,
            vec![
                Partition {
                    number: 1,
                    start_sector: 2048,
                    nr_sectors: 1024
                },
                Partition {
                    number: 5,
                    start_sector: 3073,
                    nr_sectors: 100
                },
                Partition {
                    number: 6,
                    start_sector: 3586,
                    nr_sectors: 50
                },
            ]
        );
    }

    #[test]
    fn a_looping_extended_chain_is_corrupt() {
        let mut disk = vec![0u8; 4096 * SECTOR];
        mbr_entry(&mut disk[..SECTOR], 0, 0x05, 1000, 1000);
        // Two records whose links point at each other.
        mbr_entry(&mut disk[1000 * SECTOR..1001 * SECTOR], 1, 0x05, 1000, 5);
        mbr_entry(&mut disk[2000 * SECTOR..2001 * SECTOR], 1, 0x05, 1000, 5);
        assert_eq!(
            read_partition_table(disk.as_slice(), 4096),
            Err(TableError::Corrupt(
                "more than 256 logical partitions (a loop in the chain?)".into()
            ))
        );
    }

    #[test]
    fn unpartitioned_and_out_of_range() {
        let disk = vec![0u8; 8 * SECTOR];
        assert_eq!(
            read_partition_table(disk.as_slice(), 8),
            Err(TableError::NoTable)
        );
        let mut disk = vec![0u8; 8 * SECTOR];
        mbr_entry(&mut disk[..SECTOR], 0, 0x83, 4, 8);
        assert_eq!(
            read_partition_table(disk.as_slice(), 8),
            Err(TableError::Corrupt(
                "partition 1 (sectors 4+8) lies outside the disk of 8 sectors".into()
            ))
        );
    }

    fn gpt_disk(corrupt_entries: bool) -> Vec<u8> {
        let mut disk = vec![0u8; 64 * SECTOR];
        mbr_entry(&mut disk[..SECTOR], 0, 0xEE, 1, 63);
        let mut entries = vec![0u8; 128 * 4];
        entries[0] = 1; // a non-zero type GUID
        put_u64(&mut entries, 32, 34);
        put_u64(&mut entries, 40, 39);
        entries[256] = 1;
        put_u64(&mut entries, 256 + 32, 40);
        put_u64(&mut entries, 256 + 40, 60);
        let entries_crc = crc32(&entries);
        if corrupt_entries {
            entries[33] ^= 1;
        }
        disk[2 * SECTOR..2 * SECTOR + entries.len()].copy_from_slice(&entries);
        let header = &mut disk[SECTOR..2 * SECTOR];
        header[0..8].copy_from_slice(b"EFI PART");
        put_u32(header, 12, 92);
        put_u64(header, 24, 1);
        put_u64(header, 72, 2);
        put_u32(header, 80, 4);
        put_u32(header, 84, 128);
        put_u32(header, 88, entries_crc);
        let header_crc = crc32(&header[..92]);
        put_u32(header, 16, header_crc);
        disk
    }

    #[test]
    fn gpt_entries_keep_their_slot_numbers() {
        let disk = gpt_disk(false);
        assert_eq!(
            read_partition_table(disk.as_slice(), 64)
                .unwrap()
                .partitions,
            vec![
                Partition {
                    number: 1,
                    start_sector: 34,
                    nr_sectors: 6
                },
                Partition {
                    number: 3,
                    start_sector: 40,
                    nr_sectors: 21
                },
            ]
        );
    }

    #[test]
    fn gpt_checksums_are_checked() {
        let disk = gpt_disk(true);
        assert_eq!(
            read_partition_table(disk.as_slice(), 64),
            Err(TableError::Corrupt(
                "GPT entry array checksum mismatch; the backup: protective MBR but no GPT header"
                    .into()
            ))
        );
        let mut disk = gpt_disk(false);
        disk[SECTOR + 72] ^= 1;
        assert_eq!(
            read_partition_table(disk.as_slice(), 64),
            Err(TableError::Corrupt(
                "GPT header checksum mismatch; the backup: protective MBR but no GPT header".into()
            ))
        );
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn linux_partition_names() {
        assert_eq!(partition_name("hda", 2), "hda2");
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("nvme0n1", 3), "nvme0n1p3");
        assert_eq!(partition_number("nvme0n1", "nvme0n1p3"), Some(3));
        assert_eq!(partition_number("hda", "hda12"), Some(12));
        assert_eq!(partition_number("hda", "hda"), None);
        assert_eq!(partition_number("hda", "hda0"), None);
        assert_eq!(partition_number("hda", "hdb1"), None);
        assert_eq!(partition_number("nvme0n1", "nvme0n13"), None);
    }
}
