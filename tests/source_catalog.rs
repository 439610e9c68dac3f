//! The catalog loaded from a real database: its own types map like their base types, and every
//! table's key is the one a consumer expects (primary key, else replica identity, else FULL/none).

mod support;

use pubsubpull::decode::value::{Scalar, TypeKind};
use pubsubpull::decode::{KeyColumns, TableName};
use pubsubpull::source::{load_catalog, ConnInfo};
use support::TestDb;

const SCHEMA: &str = r#"
CREATE DOMAIN positive AS bigint CHECK (VALUE > 0);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE SCHEMA "My Schema";
CREATE DOMAIN "My Schema".cents AS numeric(10, 2);
CREATE TABLE pk (b int, a int, c text, PRIMARY KEY (a, b));
CREATE TABLE ident (id int NOT NULL, x int);
CREATE UNIQUE INDEX ident_id ON ident (id) INCLUDE (x);
ALTER TABLE ident REPLICA IDENTITY USING INDEX ident_id;
CREATE TABLE both_keys (id int PRIMARY KEY, code int NOT NULL);
CREATE UNIQUE INDEX both_keys_code ON both_keys (code);
ALTER TABLE both_keys REPLICA IDENTITY USING INDEX both_keys_code;
CREATE TABLE full_row (v text);
ALTER TABLE full_row REPLICA IDENTITY FULL;
CREATE TABLE no_key (v text);
CREATE TABLE "My Schema"."Odd" (id positive PRIMARY KEY, m mood, ms mood[], ps positive[], c "My Schema".cents);
CREATE TABLE parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
"#;

fn columns(names: &[&str]) -> KeyColumns {
    KeyColumns::Columns(names.iter().map(|n| n.to_string()).collect())
}

#[tokio::test]
async fn loads_user_types_and_every_tables_key() {
    let db = TestDb::new();
    db.sql(SCHEMA);
    let client = ConnInfo::parse(&db.url()).unwrap().connect_sql().await.expect("SQL connection");
    let catalog = load_catalog(&client).await.expect("catalog");

    let key = |schema: &str, name: &str| catalog.table(&TableName::new(schema, name)).map(|t| t.key.clone());
    assert_eq!(key("public", "pk"), Some(columns(&["a", "b"])), "primary key in key order");
    assert_eq!(key("public", "ident"), Some(columns(&["id"])), "replica identity index, without INCLUDE");
    assert_eq!(key("public", "both_keys"), Some(columns(&["code"])), "the identity index the WAL carries");
    assert_eq!(key("public", "full_row"), Some(KeyColumns::All));
    assert_eq!(key("public", "no_key"), Some(KeyColumns::None));
    assert_eq!(key("My Schema", "Odd"), Some(columns(&["id"])));
    assert_eq!(key("public", "parted"), Some(columns(&["id", "region"])));
    assert_eq!(key("public", "parted_eu"), Some(columns(&["id", "region"])));
    assert_eq!(key("pg_catalog", "pg_class"), None, "system tables are left out");
    let full =
        |schema: &str, name: &str| catalog.table(&TableName::new(schema, name)).map(|t| t.full_identity);
    assert_eq!((full("public", "full_row"), full("public", "pk")), (Some(true), Some(false)));

    let int = TypeKind::scalar(Scalar::Int);
    assert_eq!(catalog.type_by_name("positive"), Some(int), "a domain maps as its base type");
    assert_eq!(catalog.type_by_name("positive[]"), Some(TypeKind { array: true, ..int }));
    assert_eq!(catalog.type_by_name("mood"), Some(TypeKind::TEXT));
    assert_eq!(catalog.type_by_name("mood[]"), Some(TypeKind { array: true, ..TypeKind::TEXT }));
    assert_eq!(catalog.type_by_name("\"My Schema\".cents"), Some(TypeKind::scalar(Scalar::Numeric)));
    let oid: u32 = db.sql("SELECT 'positive'::regtype::oid").parse().unwrap();
    assert_eq!(catalog.type_by_oid(oid), Some(int));
    assert_eq!(catalog.type_by_name("integer"), Some(int), "built-in types are still there");
}
