//! A subscription as the delivery workers see it: its definition, validated, and the statements
//! that move its durable cursor and record its failures. Every write names the generation it was
//! started with: once a subscription is replaced or deleted, an older worker changes nothing.

use std::sync::Arc;

use reqwest::Url;
use tokio_postgres::{Client, Row};

use super::sign::Secret;

/// Longest subscription name.
pub const MAX_NAME: usize = 100;
/// Batch sizes a subscription may ask for, and the default.
pub const BATCH_SIZES: std::ops::RangeInclusive<i32> = 1..=1000;
pub const DEFAULT_BATCH_SIZE: i32 = 100;

/// Whether `name` is a subscription name: 1 to 100 of `A-Z a-z 0-9 _ . -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An endpoint URL a subscription may deliver to: absolute `http` or `https` with a host.
pub fn parse_url(text: &str) -> Result<Url, &'static str> {
    let url = Url::parse(text).map_err(|_| "not an absolute URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme is not http or https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host");
    }
    Ok(url)
}

/// The change operations a subscription receives, as a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operations(u8);

/// Every operation, in the order they are listed.
pub const OPERATION_NAMES: [&str; 4] = ["insert", "update", "delete", "truncate"];

impl Operations {
    pub const ALL: Operations = Operations(0b1111);

    /// The bit of one operation name, as the change objects write it.
    pub fn bit(name: &str) -> Option<u8> {
        OPERATION_NAMES.iter().position(|op| *op == name).map(|index| 1 << index)
    }

    /// The set of `names`; the first unknown name is the error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Operations, &'a str> {
        let mut set = 0;
        for name in names {
            set |= Operations::bit(name).ok_or(name)?;
        }
        Ok(Operations(set))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether a change whose operation has bit `op` is wanted (0, an operation not known, is:
    /// a change is never dropped for a reason the subscriber did not give).
    pub fn contains(self, op: u8) -> bool {
        op == 0 || self.0 & op != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        OPERATION_NAMES.iter().enumerate().filter(|(i, _)| self.0 & (1 << i) != 0).map(|(_, n)| *n).collect()
    }
}

/// One subscription as stored.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub name: Arc<str>,
    pub url: Url,
    /// Table names as the change objects write them.
    pub tables: Vec<String>,
    pub operations: Operations,
    pub batch_size: usize,
    pub secret: Option<Secret>,
    pub paused: bool,
    /// Changes with every replacement.
    pub generation: i64,
    /// The last position acknowledged (or passed over): delivery resumes after it.
    pub cursor: i64,
}

/// A stored row that is not a valid subscription (written by hand, or by a later version).
#[derive(Debug, thiserror::Error)]
#[error("subscription {name:?} is invalid: {reason}")]
pub struct Invalid {
    pub name: String,
    pub reason: String,
}

pub const SELECT: &str =
    "SELECT name, url, tables, operations, batch_size, secret, paused, generation, cursor \
     FROM pubsubpull.subscription";

impl Subscription {
    /// A row of [`SELECT`].
    pub fn from_row(row: &Row) -> Result<Subscription, Invalid> {
        let name: String = row.get(0);
        let invalid = |reason: String| Invalid { name: name.clone(), reason };
        let url = parse_url(row.get(1)).map_err(|e| invalid(e.to_owned()))?;
        let operations: Vec<String> = row.get(3);
        let operations = Operations::parse(operations.iter().map(String::as_str))
            .map_err(|op| invalid(format!("unknown operation {op:?}")))?;
        let batch_size = usize::try_from(row.get::<_, i32>(4))
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid("batch_size below 1".to_owned()))?;
        let secret = row
            .get::<_, Option<&str>>(5)
            .map(Secret::parse)
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Subscription {
            name: name.as_str().into(),
            url,
            tables: row.get(2),
            operations,
            batch_size,
            secret,
            paused: row.get(6),
            generation: row.get(7),
            cursor: row.get(8),
        })
    }

    /// Whether a change of `table` with operation bit `op` is for this subscription.
    pub fn wants(&self, table: &str, op: u8) -> bool {
        self.operations.contains(op) && self.tables.iter().any(|t| t == table)
    }

    /// Records an acknowledged batch: the cursor moves to `cursor`, the retries are over. False
    /// when the subscription was replaced or deleted meanwhile.
    pub async fn acknowledged(&self, client: &Client, cursor: i64) -> Result<bool, tokio_postgres::Error> {
        let updated = client
            .execute(
                "UPDATE pubsubpull.subscription SET cursor = $3, delivered_at = now(), attempts = 0, \
                 next_attempt_at = NULL WHERE name = $1 AND generation = $2",
                &[&&*self.name, &self.generation, &cursor],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records that the changes up to `cursor` were passed over (none was for this subscription).
    pub async fn passed_over(&self, client: &Client, cursor: i64) -> Result<bool, tokio_postgres::Error> {
        let updated = client
            .execute(
                "UPDATE pubsubpull.subscription SET cursor = greatest(cursor, $3) \
                 WHERE name = $1 AND generation = $2",
                &[&&*self.name, &self.generation, &cursor],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records a failed attempt and when the next one is due.
    pub async fn failed(
        &self,
        client: &Client,
        attempts: i32,
        error: &str,
        retry_in: std::time::Duration,
    ) -> Result<bool, tokio_postgres::Error> {
        let retry_in_ms = i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX);
        let updated = client
            .execute(
                "UPDATE pubsubpull.subscription SET attempts = $3, last_error = $4, last_error_at = now(), \
                 next_attempt_at = now() + $5::bigint * interval '1 millisecond' \
                 WHERE name = $1 AND generation = $2",
                &[&&*self.name, &self.generation, &attempts, &error, &retry_in_ms],
            )
            .await?;
        Ok(updated == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        for good in ["billing", "a", "mail-service_2.prod", &"x".repeat(100)] {
            assert!(is_valid_name(good), "{good:?}");
        }
        for bad in ["", "a b", "a/b", "é", "a%20", &"x".repeat(101)] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        assert!(parse_url("http://127.0.0.1:8000/hook?x=1").is_ok());
        assert!(parse_url("https://example.com").is_ok());
        for bad in ["ftp://example.com/", "example.com/hook", "/hook", "http://", "file:///etc/passwd", ""] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn operations_are_a_set() {
        let ops = Operations::parse(["delete", "insert", "insert"]).unwrap();
        assert_eq!(ops.names(), ["insert", "delete"]);
        assert!(ops.contains(Operations::bit("insert").unwrap()));
        assert!(!ops.contains(Operations::bit("update").unwrap()));
        assert!(ops.contains(0), "an unknown operation is delivered");
        assert_eq!(Operations::parse(["insert", "upsert"]), Err("upsert"));
        assert_eq!(Operations::ALL.names(), OPERATION_NAMES);
    }
}
