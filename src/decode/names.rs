//! Names interned per decoder, so that a transaction of a million rows does not allocate its table
//! and column names a million times.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::TableName;

/// The interned names of one decoder. Bounded: past [`MAX_NAMES`] they start over.
#[derive(Default)]
pub(super) struct Names {
    tables: HashMap<String, HashMap<String, Arc<TableName>>>,
    table_count: usize,
    columns: HashSet<Arc<str>>,
}

/// How many table and column names [`Names`] keeps before it starts over.
const MAX_NAMES: usize = 1 << 16;

impl Names {
    /// The shared name of `schema.name`.
    pub(super) fn table(&mut self, schema: &str, name: &str) -> Arc<TableName> {
        if let Some(table) = self.tables.get(schema).and_then(|tables| tables.get(name)) {
            return Arc::clone(table);
        }
        if self.table_count >= MAX_NAMES {
            self.tables.clear();
            self.table_count = 0;
        }
        let table = Arc::new(TableName::new(schema, name));
        self.tables.entry(schema.to_owned()).or_default().insert(name.to_owned(), Arc::clone(&table));
        self.table_count += 1;
        table
    }

    /// The shared column name `name`.
    pub(super) fn column(&mut self, name: &str) -> Arc<str> {
        if let Some(column) = self.columns.get(name) {
            return Arc::clone(column);
        }
        if self.columns.len() >= MAX_NAMES {
            self.columns.clear();
        }
        let column: Arc<str> = Arc::from(name);
        self.columns.insert(Arc::clone(&column));
        column
    }
}
