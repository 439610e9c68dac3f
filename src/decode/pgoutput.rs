//! pgoutput output: to be written.

use super::{Catalog, DecodeError, Decoder, Event};
use crate::lsn::Lsn;

#[derive(Default)]
pub struct PgoutputDecoder {}

impl Decoder for PgoutputDecoder {
    fn decode(
        &mut self,
        _lsn: Lsn,
        _data: &[u8],
        _catalog: &Catalog,
        _out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        Err(DecodeError::Malformed { at: 0, expected: "an implementation" })
    }
}
