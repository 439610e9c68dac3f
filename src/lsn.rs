//! Write-ahead log positions.
//!
//! The LSN kinds used across the pipeline: *received* (the server sent WAL up to here), *written* and
//! *flushed* (our output or feed holds it durably), *confirmed* (what we reported to the slot as
//! flushed; the server may recycle WAL before it). Confirmed never passes flushed.

use std::fmt;
use std::str::FromStr;

/// A log sequence number, printed the PostgreSQL way (`16/B374D848`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid LSN `0/0`, which `START_REPLICATION` reads as "the slot's confirmed position".
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text is not an LSN of the form `X/X` (hexadecimal halves).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 0/16B3748")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(err)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(part, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(half(high)?) << 32) | u64::from(half(low)?)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for text in ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(text.parse::<Lsn>().unwrap().to_string(), text);
        }
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
    }

    #[test]
    fn rejects_malformed_text() {
        for text in ["", "/", "0/", "/0", "0x0/0", "0/0/0", "G/0", "123456789/0", "0 /0", "-1/0", "+1/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} parsed");
        }
    }
}
