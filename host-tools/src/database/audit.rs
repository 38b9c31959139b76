//! The audit: SQLite's own integrity check, its foreign keys, and the pool's invariants.

use rusqlite::params;

use super::Database;
use crate::error::Result;

impl Database {
    /// Check the database against SQLite's own integrity check, its foreign keys and the
    /// pool's invariants now. Returns every problem found; empty means consistent.
    pub fn consistency_problems(&self) -> Result<Vec<String>> {
        self.read(|connection, now| {
            let mut problems: Vec<String> = connection
                .prepare("PRAGMA integrity_check")?
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter(|line| line != "ok")
                .collect();
            let foreign_key_violations: i64 = connection.query_row(
                "SELECT count(*) FROM pragma_foreign_key_check",
                [],
                |row| row.get(0),
            )?;
            if foreign_key_violations > 0 {
                problems.push(format!("{foreign_key_violations} foreign key violations"));
            }
            for (problem, query) in INVARIANTS {
                let count: i64 = connection.query_row(query, params![now], |row| row.get(0))?;
                if count > 0 {
                    problems.push(format!("{count} {problem}"));
                }
            }
            Ok(problems)
        })
    }
}

/// Each invariant as a query counting the rows that break it at `?1` (now).
const INVARIANTS: [(&str, &str); 4] = [
    (
        "extent held by more than one live virtual disk or claim",
        "SELECT count(*) FROM (SELECT extent_id FROM (
             SELECT m.extent_id FROM virtual_disk_extents m
               JOIN virtual_disks v ON v.id = m.virtual_disk_id
               WHERE v.expires_at IS NULL OR v.expires_at > ?1
             UNION ALL
             SELECT c.extent_id FROM claim_extents c
               JOIN claims ON claims.id = c.claim_id WHERE claims.expires_at > ?1)
           GROUP BY extent_id HAVING count(*) > 1)",
    ),
    (
        "virtual disk whose size is not the sum of its extents",
        "SELECT count(*) FROM virtual_disks v WHERE v.size_sectors !=
           (SELECT coalesce(sum(e.nr_sectors), 0) FROM virtual_disk_extents m
            JOIN extents e ON e.id = m.extent_id WHERE m.virtual_disk_id = v.id) AND ?1 = ?1",
    ),
    (
        "virtual disk whose layout positions have gaps",
        "SELECT count(*) FROM virtual_disks v WHERE (SELECT coalesce(max(position) + 1, 0)
           FROM virtual_disk_extents m WHERE m.virtual_disk_id = v.id) !=
           (SELECT count(*) FROM virtual_disk_extents m WHERE m.virtual_disk_id = v.id) AND ?1 = ?1",
    ),
    (
        "extent outside its partition or overlapping another",
        "SELECT (SELECT count(*) FROM extents e JOIN pool_partitions p ON p.id = e.partition_id
                 WHERE e.device != p.device OR e.start_sector < p.start_sector
                    OR e.start_sector + e.nr_sectors > p.start_sector + p.nr_sectors)
              + (SELECT count(*) FROM extents a JOIN extents b ON a.device = b.device AND a.id < b.id
                 AND a.start_sector < b.start_sector + b.nr_sectors
                 AND b.start_sector < a.start_sector + a.nr_sectors) + 0 * ?1",
    ),
];
