//! Helpers for tests of the replication connection.

use std::time::Duration;

use pubsubpull::source::{ReplicationMessage, ReplicationStream, XLogData};

/// Reads the stream up to test_decoding's next `COMMIT` line; returns the transaction's lines and
/// the XLogData that carried the commit. Fails the test after 30 s.
pub async fn read_transaction(stream: &mut ReplicationStream) -> (Vec<String>, XLogData) {
    let mut lines = Vec::new();
    let read = async {
        loop {
            match stream.next().await.expect("stream error").expect("stream ended") {
                ReplicationMessage::XLogData(data) => {
                    let line = String::from_utf8(data.data.to_vec()).expect("UTF-8");
                    let commit = line.starts_with("COMMIT");
                    lines.push(line);
                    if commit {
                        return data;
                    }
                }
                ReplicationMessage::Keepalive(_) => {}
            }
        }
    };
    let commit = tokio::time::timeout(Duration::from_secs(30), read).await.expect("no COMMIT within 30 s");
    (lines, commit)
}

/// Creates a test_decoding slot `slot` through SQL.
pub fn create_test_decoding_slot(db: &super::TestDb, slot: &str) {
    db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"));
}
