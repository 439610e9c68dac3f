//! The harness itself: a cluster with logical decoding and a database per test.

mod support;

#[test]
fn each_test_gets_a_fresh_database_with_logical_decoding() {
    let a = support::TestDb::new();
    let b = support::TestDb::new();
    assert_ne!(a.name, b.name);
    assert_eq!(a.sql("SHOW wal_level"), "logical");
    a.sql("CREATE TABLE t (id int primary key)");
    a.sql(&format!("SELECT pg_create_logical_replication_slot('{}', 'test_decoding')", a.slot("s")));
    assert_eq!(b.sql("SELECT count(*) FROM pg_tables WHERE tablename = 't'"), "0");
}
