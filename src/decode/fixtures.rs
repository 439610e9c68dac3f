//! Golden fixtures for the decoders' tests: `tests/fixtures/workload.sql` run once through three
//! slots (pgoutput, wal2json, test_decoding) by `scripts/capture-fixtures`, with the capture
//! database's own types and table keys.

use super::catalog::{parse_type_row, Catalog, KeyColumns, TableInfo};
use super::{Change, DecodeError, Decoder, Event, Plugin, TableName};
use crate::lsn::Lsn;

const TYPES: &str = include_str!("../../tests/fixtures/capture/types.tsv");
const TABLES: &str = include_str!("../../tests/fixtures/capture/tables.tsv");

/// Cases per property test: 2000 in the suite, `PROPTEST_CASES` for a longer run.
pub fn proptest_config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(2000);
    proptest::test_runner::Config { cases, ..Default::default() }
}

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

/// Every event the workload's messages from `plugin` decode to.
pub fn decode_all(plugin: Plugin) -> Vec<Event> {
    let catalog = catalog();
    let mut decoder = plugin.decoder();
    let mut events = Vec::new();
    for (lsn, data) in messages(plugin) {
        decoder.decode(lsn, &data, &catalog, &mut events).unwrap_or_else(|e| panic!("message at {lsn}: {e}"));
    }
    events
}

/// The changes of `schema.table` among `events`.
pub fn changes_of<'a>(events: &'a [Event], schema: &str, table: &str) -> Vec<&'a Change> {
    let name = TableName::new(schema, table);
    events
        .iter()
        .filter_map(|event| match event {
            Event::Change(change) if *change.table == name => Some(change),
            _ => None,
        })
        .collect()
}

/// Decodes `data` after a sentinel event, asserting that an error leaves the output as it was.
pub fn decode_one(
    decoder: &mut dyn Decoder,
    data: &[u8],
    catalog: &Catalog,
) -> Result<Vec<Event>, DecodeError> {
    let sentinel = Event::StreamStop;
    let mut out = vec![sentinel.clone()];
    match decoder.decode(Lsn(1), data, catalog, &mut out) {
        Ok(()) => Ok(out.split_off(1)),
        Err(e) => {
            assert_eq!(out, [sentinel], "error {e} after appending events");
            Err(e)
        }
    }
}

/// The captured messages of `plugin` (those under 4 KiB), each with one to three random edits:
/// a byte replaced, inserted or removed.
pub fn corrupted_messages(plugin: Plugin) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let messages: Vec<Vec<u8>> =
        messages(plugin).into_iter().map(|(_, data)| data).filter(|d| d.len() < 4096).collect();
    let edits = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4);
    (proptest::sample::select(messages), edits).prop_map(|(mut data, edits)| {
        for (at, byte, how) in edits {
            let at = at.index(data.len() + 1);
            match how {
                0 if at < data.len() => data[at] = byte,
                1 => data.insert(at, byte),
                _ if at < data.len() => {
                    data.remove(at);
                }
                _ => data.push(byte),
            }
        }
        data
    })
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

pub mod golden {
    use serde::Serialize;

    use crate::decode::{Event, Op, Row, Timestamp, Value, Xid};
    use crate::lsn::Lsn;

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Line<'a> {
        Begin {
            xid: Option<u32>,
            final_lsn: Option<Lsn>,
            committed_at: Option<String>,
        },
        Commit {
            end_lsn: Lsn,
            committed_at: Option<String>,
        },
        Change {
            lsn: Lsn,
            table: String,
            op: Op,
            key: Option<Row>,
            new: Option<Row>,
            old: Option<Row>,
            unchanged: Vec<&'a str>,
        },
        Message {
            lsn: Lsn,
            transactional: bool,
            prefix: &'a str,
            content: String,
        },
        StreamStart {
            xid: Xid,
            first_segment: bool,
        },
        StreamStop {},
        StreamCommit {
            xid: Xid,
            end_lsn: Lsn,
            committed_at: Option<String>,
        },
        StreamAbort {
            xid: Xid,
            subxid: Xid,
        },
    }

    fn time(time: &Option<Timestamp>) -> Option<String> {
        time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }

    fn abbreviate_row(row: &Option<Row>) -> Option<Row> {
        row.as_ref()
            .map(|row| Row(row.0.iter().map(|(name, value)| (name.clone(), abbreviate(value))).collect()))
    }

    fn abbreviate(value: &Value) -> Value {
        match value {
            Value::Text(text) if text.len() > 120 => {
                let checksum = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                });
                let start: String = text.chars().take(32).collect();
                Value::Text(format!("{start}... ({} bytes, fnv1a {checksum:016x})", text.len()))
            }
            Value::Array(items) => Value::Array(items.iter().map(abbreviate).collect()),
            other => other.clone(),
        }
    }

    /// One event as a line of the golden file.
    pub fn line(event: &Event) -> String {
        let line = match event {
            Event::Begin(begin) => Line::Begin {
                xid: begin.xid,
                final_lsn: begin.final_lsn,
                committed_at: time(&begin.committed_at),
            },
            Event::Commit(commit) => {
                Line::Commit { end_lsn: commit.end_lsn, committed_at: time(&commit.committed_at) }
            }
            Event::Change(change) => Line::Change {
                lsn: change.lsn,
                table: change.table.to_string(),
                op: change.op,
                key: abbreviate_row(&change.key),
                new: abbreviate_row(&change.new),
                old: abbreviate_row(&change.old),
                unchanged: change.unchanged.iter().map(|name| &**name).collect(),
            },
            Event::Message(message) => Line::Message {
                lsn: message.lsn,
                transactional: message.transactional,
                prefix: &message.prefix,
                content: String::from_utf8_lossy(&message.content).into_owned(),
            },
            Event::StreamStart { xid, first_segment } => {
                Line::StreamStart { xid: *xid, first_segment: *first_segment }
            }
            Event::StreamStop => Line::StreamStop {},
            Event::StreamCommit { xid, commit } => Line::StreamCommit {
                xid: *xid,
                end_lsn: commit.end_lsn,
                committed_at: time(&commit.committed_at),
            },
            Event::StreamAbort { xid, subxid } => Line::StreamAbort { xid: *xid, subxid: *subxid },
        };
        serde_json::to_string(&line).expect("events serialize")
    }

    /// Compares `events` with `tests/fixtures/capture/{file}`, or rewrites it when `UPDATE_GOLDEN=1`.
    pub fn check(file: &str, events: &[Event]) {
        let path = format!("{}/tests/fixtures/capture/{file}", env!("CARGO_MANIFEST_DIR"));
        let actual: String = events.iter().map(|event| line(event) + "\n").collect();
        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|update| update == "1") {
            std::fs::write(&path, &actual).expect("golden file written");
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (UPDATE_GOLDEN=1 writes it)"));
        for (number, (actual, expected)) in actual.lines().zip(expected.lines()).enumerate() {
            assert_eq!(actual, expected, "{file} line {} (UPDATE_GOLDEN=1 rewrites the file)", number + 1);
        }
        assert_eq!(actual.lines().count(), expected.lines().count(), "{file}: number of events");
    }
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

/// The three plugins' captures of one workload decode to the same changes, but for what a plugin
/// cannot know: wal2json prints NaN and ±Infinity as null and leaves unchanged TOAST columns out
/// without a word; test_decoding leaves NULL columns out of old images.
#[test]
fn the_three_plugins_decode_to_the_same_changes() {
    fn changes(plugin: Plugin) -> Vec<serde_json::Value> {
        let events = decode_all(plugin);
        let lines = events.iter().filter(|e| matches!(e, Event::Change(_) | Event::Message(_)));
        let lines = lines.map(golden::line);
        lines.map(|line| serde_json::from_str(&line).expect("golden lines are JSON")).collect()
    }
    fn without_unknowable(mut event: serde_json::Value) -> serde_json::Value {
        if event.get("message").is_some() {
            return event;
        }
        let change = &mut event["change"];
        change.as_object_mut().expect("change").remove("unchanged");
        for image in ["key", "new", "old"] {
            if let Some(row) = change[image].as_object_mut() {
                row.retain(|_, v| {
                    !v.is_null() && !matches!(v.as_str(), Some("NaN" | "Infinity" | "-Infinity"))
                });
            }
        }
        change.clone()
    }
    let reference = changes(Plugin::Pgoutput);
    assert_eq!(reference.len(), 45, "44 changes and a message");
    for plugin in [Plugin::Wal2json, Plugin::TestDecoding] {
        let other = changes(plugin);
        assert_eq!(other.len(), reference.len(), "{plugin:?}");
        for (a, b) in reference.iter().zip(&other) {
            if plugin == Plugin::TestDecoding {
                // test_decoding knows unchanged TOAST columns as well as pgoutput does.
                assert_eq!(a["change"]["unchanged"], b["change"]["unchanged"], "{plugin:?}");
            }
            assert_eq!(without_unknowable(a.clone()), without_unknowable(b.clone()), "{plugin:?}");
        }
    }
}
