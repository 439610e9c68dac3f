//! Golden fixtures for the decoders' tests: `tests/fixtures/workload.sql` run once through three
//! slots (pgoutput, wal2json, test_decoding) by `scripts/capture-fixtures`, with the capture
//! database's own types and table keys.

use super::catalog::{parse_type_row, Catalog, KeyColumns, TableInfo};
use super::{Plugin, TableName};
use crate::lsn::Lsn;

const TYPES: &str = include_str!("../../tests/fixtures/capture/types.tsv");
const TABLES: &str = include_str!("../../tests/fixtures/capture/tables.tsv");

/// The catalog of the capture database.
pub fn catalog() -> Catalog {
    let mut catalog = Catalog::builtin();
    catalog.add_types(TYPES.lines().map(|line| parse_type_row(line).expect("types.tsv row")));
    for line in TABLES.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [schema, table, identity, key] = fields[..] else { panic!("tables.tsv row {line:?}") };
        let key = match (key, identity) {
            ("", "f") => KeyColumns::All,
            ("", _) => KeyColumns::None,
            (columns, _) => KeyColumns::Columns(columns.split(',').map(str::to_owned).collect()),
        };
        catalog.set_table(TableName::new(schema, table), TableInfo { key, full_identity: identity == "f" });
    }
    catalog
}

/// The messages `plugin` sent for the workload: (XLogData start LSN, message bytes).
pub fn messages(plugin: Plugin) -> Vec<(Lsn, Vec<u8>)> {
    let text = match plugin {
        Plugin::Pgoutput => include_str!("../../tests/fixtures/capture/pgoutput.txt"),
        Plugin::Wal2json => include_str!("../../tests/fixtures/capture/wal2json.txt"),
        Plugin::TestDecoding => include_str!("../../tests/fixtures/capture/test_decoding.txt"),
    };
    text.lines()
        .map(|line| {
            let (lsn, hex) = line.split_once('\t').expect("LSN<TAB>HEX");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (lsn.parse().expect("LSN"), bytes)
        })
        .collect()
}

#[test]
fn fixtures_load() {
    let catalog = catalog();
    assert!(catalog.table(&TableName::new("Odd Schema", "Tab\"le é")).is_some());
    assert_eq!(catalog.table(&TableName::new("public", "nokey")).map(|t| &t.key), Some(&KeyColumns::All));
    for plugin in [Plugin::Pgoutput, Plugin::Wal2json, Plugin::TestDecoding] {
        assert!(messages(plugin).len() > 100);
    }
}
