//! What decoders need to know of the database's catalog that plugin output does not say: how each
//! type maps to JSON (domains resolve to their base type) and which columns identify a table's rows.
//!
//! Pure data: the built-in types are compiled in (`builtin_types.tsv`, read from PostgreSQL 15's
//! `pg_type`), the database's own types and tables are added by the source stage
//! (`crate::source::catalog`). A decoder that meets a type or table missing here returns a
//! [`DecodeError`](super::DecodeError) for which `is_catalog_miss()` holds; the caller refreshes the
//! catalog and decodes the message again.

use std::collections::HashMap;

use super::value::{Scalar, TypeKind};
use super::{TableName, TypeRef};

/// One row of `pg_type`, as much as the mapping needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeRow {
    pub oid: u32,
    /// `format_type(oid, NULL)`: the name test_decoding prints (`integer`, `text[]`, `public.mood`).
    pub name: String,
    /// `typtype`: `b` base, `d` domain, `e` enum, `c` composite, `r` range, `m` multirange, `p` pseudo.
    pub typtype: u8,
    /// `typbasetype`: the type a domain is over.
    pub base_type: u32,
    /// `typelem`: an array's element type.
    pub element: u32,
    /// A true varlena array (not `int2vector` and the like, which print without braces).
    pub is_array: bool,
    /// `typdelim`: the element delimiter in array text.
    pub delimiter: u8,
}

/// Which columns identify a table's rows: the primary key, else the replica identity index, else all
/// columns when the replica identity is FULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyColumns {
    Columns(Vec<String>),
    All,
    None,
}

/// What the catalog knows of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    pub key: KeyColumns,
    /// REPLICA IDENTITY FULL: updates and deletes log the whole old row.
    pub full_identity: bool,
}

impl KeyColumns {
    /// Whether `column` is part of the key.
    pub fn contains(&self, column: &str) -> bool {
        match self {
            KeyColumns::Columns(columns) => columns.iter().any(|c| c == column),
            KeyColumns::All => true,
            KeyColumns::None => false,
        }
    }
}

/// Types and tables, by the names and numbers plugins use for them.
#[derive(Clone, Debug)]
pub struct Catalog {
    rows: HashMap<u32, TypeRow>,
    by_oid: HashMap<u32, TypeKind>,
    by_name: HashMap<String, TypeKind>,
    tables: HashMap<TableName, TableInfo>,
}

const BUILTIN_TYPES: &str = include_str!("builtin_types.tsv");

/// Domains over domains nest at most this deep before we call the catalog corrupt.
const MAX_DOMAIN_DEPTH: usize = 32;

impl Catalog {
    /// PostgreSQL's built-in types and no tables.
    pub fn builtin() -> Catalog {
        let rows =
            BUILTIN_TYPES.lines().map(|line| parse_type_row(line).expect("builtin_types.tsv is well formed"));
        let mut catalog = Catalog {
            rows: HashMap::new(),
            by_oid: HashMap::new(),
            by_name: HashMap::new(),
            tables: HashMap::new(),
        };
        catalog.add_types(rows);
        catalog
    }

    /// Adds or replaces types and recomputes every mapping (a domain's base may be among them).
    pub fn add_types(&mut self, rows: impl IntoIterator<Item = TypeRow>) {
        for row in rows {
            self.rows.insert(row.oid, row);
        }
        self.by_oid.clear();
        self.by_name.clear();
        for row in self.rows.values() {
            let kind = self.resolve(row.oid);
            self.by_oid.insert(row.oid, kind);
            self.by_name.insert(row.name.clone(), kind);
        }
    }

    /// Records what identifies `table`'s rows.
    pub fn set_table(&mut self, table: TableName, info: TableInfo) {
        self.tables.insert(table, info);
    }

    /// Maps a type the database no longer knows (dropped since the WAL was written) as text.
    pub fn assume_text(&mut self, ty: &TypeRef) {
        match ty {
            TypeRef::Oid(oid) => self.by_oid.insert(*oid, TypeKind::TEXT),
            TypeRef::Name(name) => self.by_name.insert(name.clone(), TypeKind::TEXT),
        };
    }

    /// Records a table the database no longer knows (dropped since) as having no key.
    pub fn assume_keyless(&mut self, table: TableName) {
        self.tables.entry(table).or_insert(TableInfo { key: KeyColumns::None, full_identity: false });
    }

    /// The mapping of type `oid`, if known.
    pub fn type_by_oid(&self, oid: u32) -> Option<TypeKind> {
        self.by_oid.get(&oid).copied()
    }

    /// The mapping of a type named as `format_type_be` names it (test_decoding's bracketed names).
    pub fn type_by_name(&self, name: &str) -> Option<TypeKind> {
        self.by_name.get(name).copied()
    }

    /// What identifies `table`'s rows, if the table is known.
    pub fn table(&self, table: &TableName) -> Option<&TableInfo> {
        self.tables.get(table)
    }

    fn resolve(&self, oid: u32) -> TypeKind {
        let base = self.base_of(oid);
        match self.rows.get(&base) {
            Some(row) if row.is_array => {
                let element = self.base_of(row.element);
                let delimiter = self.rows.get(&row.element).map_or(b',', |e| e.delimiter);
                TypeKind { scalar: scalar_of(element), array: true, delimiter }
            }
            _ => TypeKind::scalar(scalar_of(base)),
        }
    }

    /// Follows a domain to the type it is ultimately over.
    fn base_of(&self, mut oid: u32) -> u32 {
        for _ in 0..MAX_DOMAIN_DEPTH {
            match self.rows.get(&oid) {
                Some(row) if row.typtype == b'd' => oid = row.base_type,
                _ => return oid,
            }
        }
        oid
    }
}

/// The JSON mapping of a non-domain, non-array type.
fn scalar_of(oid: u32) -> Scalar {
    match oid {
        16 => Scalar::Bool,
        20 | 21 | 23 => Scalar::Int,
        700 | 701 => Scalar::Float,
        1700 => Scalar::Numeric,
        114 | 3802 => Scalar::Json,
        _ => Scalar::Text,
    }
}

/// Parses one line in the columns of `builtin_types.tsv`.
pub fn parse_type_row(line: &str) -> Option<TypeRow> {
    let mut fields = line.split('\t');
    let mut next = || fields.next();
    Some(TypeRow {
        oid: next()?.parse().ok()?,
        name: next()?.to_owned(),
        typtype: *next()?.as_bytes().first()?,
        base_type: next()?.parse().ok()?,
        element: next()?.parse().ok()?,
        is_array: next()? == "1",
        delimiter: *next()?.as_bytes().first()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_builtin_types_by_oid_and_name() {
        let catalog = Catalog::builtin();
        assert_eq!(catalog.type_by_oid(20), Some(TypeKind::scalar(Scalar::Int)));
        assert_eq!(catalog.type_by_name("double precision"), Some(TypeKind::scalar(Scalar::Float)));
        assert_eq!(
            catalog.type_by_name("numeric[]"),
            Some(TypeKind { scalar: Scalar::Numeric, array: true, delimiter: b',' })
        );
        assert_eq!(catalog.type_by_name("jsonb"), Some(TypeKind::scalar(Scalar::Json)));
        assert_eq!(catalog.type_by_name("timestamp with time zone"), Some(TypeKind::TEXT));
        assert_eq!(catalog.type_by_name("box[]").map(|k| k.delimiter), Some(b';'));
        assert_eq!(catalog.type_by_name("int2vector"), Some(TypeKind::TEXT));
        assert_eq!(catalog.type_by_name("no such type"), None);
    }

    #[test]
    fn resolves_domains_and_arrays_of_domains() {
        let mut catalog = Catalog::builtin();
        let row = |oid, name: &str, typtype, base_type, element, is_array| TypeRow {
            oid,
            name: name.into(),
            typtype,
            base_type,
            element,
            is_array,
            delimiter: b',',
        };
        catalog.add_types([
            row(16400, "positive", b'd', 20, 0, false),
            row(16401, "small_positive", b'd', 16400, 0, false),
            row(16402, "small_positive[]", b'b', 0, 16401, true),
            row(16403, "mood", b'e', 0, 0, false),
        ]);
        assert_eq!(catalog.type_by_oid(16401), Some(TypeKind::scalar(Scalar::Int)));
        assert_eq!(
            catalog.type_by_name("small_positive[]"),
            Some(TypeKind { scalar: Scalar::Int, array: true, delimiter: b',' })
        );
        assert_eq!(catalog.type_by_name("mood"), Some(TypeKind::TEXT));
    }
}
