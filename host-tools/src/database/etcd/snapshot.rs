//! A pool's tables as etcd values and back: the schema (its SQL, version and application
//! id) under one key and each table's rows under one key of its own, as JSON arrays, so
//! that a write puts only the tables it changed and `etcdctl get` shows readable rows.

use std::collections::BTreeMap;

use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The key, under the pool's prefix, that holds the schema.
pub const SCHEMA_KEY: &str = "schema";

/// The key, under the pool's prefix, of table `name`'s rows.
pub fn table_key(name: &str) -> String {
    format!("table/{name}")
}

#[derive(Serialize, Deserialize)]
struct Schema {
    application_id: i32,
    user_version: i64,
    /// `CREATE` statements in the order SQLite made them: tables before their indexes.
    statements: Vec<String>,
}

fn bad(reason: String) -> Error {
    Error::Refused(format!("the pool's stored tables: {reason}"))
}

/// Every table's rows and the schema, keyed as stored: what a write compares with what it
/// read to know which keys it changed.
pub fn dump(connection: &Connection) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    let statements: Vec<(String, String, String)> = connection
        .prepare(
            "SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let schema = Schema {
        application_id: connection.query_row("PRAGMA application_id", [], |row| row.get(0))?,
        user_version: connection.query_row("PRAGMA user_version", [], |row| row.get(0))?,
        statements: statements.iter().map(|(_, _, sql)| sql.clone()).collect(),
    };
    values.insert(SCHEMA_KEY.to_string(), to_json(&schema)?);
    let mut tables: Vec<&str> = statements
        .iter()
        .filter(|(kind, _, _)| kind == "table")
        .map(|(_, name, _)| name.as_str())
        .collect();
    // AUTOINCREMENT's counters: ids only grow, even across hosts, which `undelete` relies on.
    let sequence_exists: bool = connection.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'",
        [],
        |row| row.get(0),
    )?;
    if sequence_exists {
        tables.push("sqlite_sequence");
    }
    for table in tables {
        let mut statement =
            connection.prepare(&format!("SELECT * FROM \"{table}\" ORDER BY rowid"))?;
        let columns = statement.column_count();
        let mut rows = statement.query([])?;
        let mut dumped: Vec<Vec<serde_json::Value>> = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for column in 0..columns {
                values.push(match row.get_ref(column)? {
                    ValueRef::Null => serde_json::Value::Null,
                    ValueRef::Integer(integer) => integer.into(),
                    ValueRef::Text(text) => String::from_utf8_lossy(text).into_owned().into(),
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(bad(format!(
                            "table {table} holds a value of a type no vdisk table has"
                        )));
                    }
                });
            }
            dumped.push(values);
        }
        values.insert(table_key(table), to_json(&dumped)?);
    }
    Ok(values)
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|error| bad(error.to_string()))
}

/// An in-memory database holding what `values` (keyed as [`dump`] keys them) stored; an
/// empty one for a pool never written.
pub fn load(values: &BTreeMap<String, String>) -> Result<Connection> {
    let connection = Connection::open_in_memory()?;
    // Tables are loaded one after another, so references are whole only at the end
    // (SQLite as built here enforces foreign keys from the start).
    connection.execute_batch("PRAGMA foreign_keys = OFF;")?;
    let Some(schema) = values.get(SCHEMA_KEY) else {
        if values.is_empty() {
            return Ok(connection);
        }
        return Err(bad("tables without a schema".into()));
    };
    let schema: Schema =
        serde_json::from_str(schema).map_err(|error| bad(format!("schema: {error}")))?;
    for statement in &schema.statements {
        connection.execute_batch(statement)?;
    }
    // PRAGMA arguments cannot be bound; these are integers just parsed.
    connection.execute_batch(&format!(
        "PRAGMA application_id = {}; PRAGMA user_version = {};",
        schema.application_id, schema.user_version
    ))?;
    // AUTOINCREMENT's counters first: a row inserted with its id raises a counter, never
    // lowers it, so the stored counter (past the ids of disks since forgotten) survives.
    let mut tables: Vec<(&String, &String)> = values
        .iter()
        .filter(|(key, _)| key.starts_with("table/"))
        .collect();
    tables.sort_by_key(|(key, _)| key.as_str() != table_key("sqlite_sequence"));
    for (key, rows) in tables {
        let table = &key["table/".len()..];
        let rows: Vec<Vec<serde_json::Value>> =
            serde_json::from_str(rows).map_err(|error| bad(format!("{key}: {error}")))?;
        for row in rows {
            let placeholders = vec!["?"; row.len()].join(", ");
            let mut insert = connection
                .prepare_cached(&format!("INSERT INTO \"{table}\" VALUES ({placeholders})"))?;
            let values: Vec<Value> = row
                .into_iter()
                .map(|value| match value {
                    serde_json::Value::Null => Ok(Value::Null),
                    serde_json::Value::Number(number) => number
                        .as_i64()
                        .map(Value::Integer)
                        .ok_or_else(|| bad(format!("{key}: {number} is not an integer"))),
                    serde_json::Value::String(text) => Ok(Value::Text(text)),
                    other => Err(bad(format!("{key}: {other} is not a column value"))),
                })
                .collect::<Result<_>>()?;
            insert.execute(rusqlite::params_from_iter(values))?;
        }
    }
    let broken: i64 =
        connection.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
            row.get(0)
        })?;
    if broken > 0 {
        return Err(bad(format!(
            "{broken} rows refer to rows that are not there"
        )));
    }
    connection.execute_batch("PRAGMA foreign_keys = ON;")?;
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::migrate;

    #[test]
    fn a_dump_loads_back_to_the_same_dump() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection).unwrap();
        connection
            .execute_batch(
                "INSERT INTO virtual_disks (state, size_sectors, created_at, expires_at) VALUES ('ready', 8, 1, NULL);
                 INSERT INTO pool_disks VALUES (768, 'file 1:2', 'it''s \"quoted\".img');",
            )
            .unwrap();
        let dumped = dump(&connection).unwrap();
        let loaded = load(&dumped).unwrap();
        assert_eq!(dump(&loaded).unwrap(), dumped);
        let next: i64 = loaded
            .query_row("INSERT INTO virtual_disks (state, size_sectors, created_at) VALUES ('ready', 8, 1) RETURNING id", [], |row| row.get(0))
            .unwrap();
        assert_eq!(next, 2, "the AUTOINCREMENT counter came along");
    }

    #[test]
    fn a_row_that_breaks_a_constraint_is_refused() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection).unwrap();
        let mut dumped = dump(&connection).unwrap();
        dumped.insert(
            table_key("virtual_disks"),
            "[[1, \"zombie\", 8, 1, null]]".into(),
        );
        assert_eq!(
            load(&dumped).unwrap_err().to_string(),
            "database: CHECK constraint failed: state IN ('creating', 'ready')"
        );
    }
}
