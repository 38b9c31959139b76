//! Queries: probe, info, limits and generations, read under the writer mutex in short
//! batches and handed out after it is released.

use super::*;

/// Probe entries and info extents copied out per batch, after the writer mutex is released.
const OUT_BATCH: usize = 64;

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    VbdTable<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// The table's capacities and what it enforces.
    pub fn limits(&self) -> Limits {
        let writer = self.writer.lock();
        Limits {
            sharing_ceiling: writer.ceiling,
            domains: DOMAINS,
            vbds_per_domain: VBDS,
            extents: EXTENTS,
            extents_free: EXTENTS - writer.layout.used(),
            disks: DISKS,
        }
    }

    /// List the VBDs of `domain`, or of every domain for [`PROBE_ALL`] (dom0 only). The sink
    /// is called for each entry only when all `count` of them fit in `capacity`, in batches
    /// after the writer mutex is released; `EBUSY` when the table kept changing between
    /// batches.
    pub fn probe(
        &self,
        caller: u32,
        domain: u32,
        capacity: usize,
        mut sink: impl FnMut(usize, ProbeEntry) -> Result<(), Error>,
    ) -> Result<ProbeSummary, Error> {
        if domain == PROBE_ALL {
            require_dom0(caller)?;
        } else {
            require_visible(caller, domain)?;
        }
        'restart: for _ in 0..QUERY_RESTARTS {
            let mut delivered = 0;
            let mut summary = None;
            loop {
                let mut batch: Vec<ProbeEntry, OUT_BATCH> = Vec::new();
                {
                    let writer = self.writer.lock();
                    let generation = if domain == PROBE_ALL {
                        writer.generation
                    } else {
                        writer
                            .domain_index(domain)
                            .map_or(0, |index| writer.domains[index].generation)
                    };
                    let selected =
                        writer
                            .domains
                            .iter()
                            .zip(writer.vbds.iter())
                            .filter(|(slot, _)| {
                                slot.id != FREE_DOMAIN && (domain == PROBE_ALL || slot.id == domain)
                            });
                    let count = selected.clone().map(|(slot, _)| slot.vbds).sum();
                    let now = ProbeSummary {
                        count,
                        generation,
                        complete: count <= capacity,
                    };
                    match summary {
                        None => summary = Some(now),
                        Some(before) if before != now => continue 'restart,
                        Some(_) => {}
                    }
                    if !now.complete {
                        return Ok(now);
                    }
                    let entries = selected.flat_map(|(slot, records)| {
                        records
                            .iter()
                            .filter(|record| record.present)
                            .map(move |record| (slot.id, record))
                    });
                    for (domain_id, record) in entries.skip(delivered).take(OUT_BATCH) {
                        // Cannot fail: `take` stops at the batch's capacity.
                        let _ = batch.push(ProbeEntry {
                            device: record.vdevice.raw(),
                            info: ProbeInfo::for_mode(record.mode).bits(),
                            capacity_sectors: self.shared.extents.run_sectors(record.run),
                            domain: domain_id,
                            nr_extents: record.run.count,
                        });
                    }
                }
                for entry in &batch {
                    sink(delivered, *entry)?;
                    delivered += 1;
                }
                if !batch.is_full() {
                    return summary.ok_or(Error::Busy);
                }
            }
        }
        Err(Error::Busy)
    }

    /// One VBD's mode, size and label, and up to `capacity` of its extents from
    /// `first_index` on, passed to the sink in virtual order, in batches after the writer
    /// mutex is released. `ERANGE` when `first_index` is past the last extent (it may
    /// equal the count), `EBUSY` when the VBD kept changing between batches.
    pub fn info(
        &self,
        caller: u32,
        id: VbdId,
        first_index: usize,
        capacity: usize,
        mut sink: impl FnMut(usize, Extent) -> Result<(), Error>,
    ) -> Result<VbdInfo, Error> {
        require_visible(caller, id.domain)?;
        'restart: for _ in 0..QUERY_RESTARTS {
            let mut delivered = 0;
            let mut info: Option<VbdInfo> = None;
            loop {
                let mut batch: Vec<Extent, OUT_BATCH> = Vec::new();
                {
                    let writer = self.writer.lock();
                    let (domain, vbd) = writer.find(id)?;
                    let record = &writer.vbds[domain][vbd];
                    let nr_extents = record.run.count as usize;
                    if first_index > nr_extents {
                        return Err(Error::OutOfRange);
                    }
                    let written = capacity.min(nr_extents - first_index);
                    let now = VbdInfo {
                        mode: record.mode,
                        nr_extents,
                        size_sectors: self.shared.extents.run_sectors(record.run),
                        label: record.label,
                        generation: record.version,
                        incarnation: record.incarnation,
                        written,
                    };
                    match info {
                        None => info = Some(now),
                        Some(before) if before != now => continue 'restart,
                        Some(_) => {}
                    }
                    let from = first_index + delivered;
                    let until = (first_index + written).min(from + OUT_BATCH);
                    for index in from..until {
                        let extent = self.shared.extents.extent(
                            record.run,
                            index,
                            &self.shared.disk_devices,
                        )?;
                        // Cannot fail: at most `OUT_BATCH` indices.
                        let _ = batch.push(extent);
                    }
                }
                for extent in &batch {
                    sink(first_index + delivered, *extent)?;
                    delivered += 1;
                }
                if let Some(info) = info.filter(|info| delivered >= info.written) {
                    return Ok(info);
                }
            }
        }
        Err(Error::Busy)
    }

    /// The generation of a domain: changes whenever its VBDs do.
    pub fn generation(&self, domain: u32) -> u64 {
        let writer = self.writer.lock();
        writer
            .domain_index(domain)
            .map_or(0, |index| writer.domains[index].generation)
    }

    /// Extents stored in the arena, pending lists included, for accounting checks.
    pub fn extents_in_use(&self) -> usize {
        self.writer.lock().layout.used()
    }
}
