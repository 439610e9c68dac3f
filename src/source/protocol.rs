//! The replication stream's wire framing: bytes in, structs out, no I/O.
//!
//! Splits backend messages out of a read buffer without copying them, parses the CopyData payloads
//! of a logical replication stream (XLogData `w`, primary keepalive `k`) and the CopyBothResponse
//! that opens it, and encodes the standby status update `r` that reports the *written*, *flushed*
//! and *applied* LSNs back to the server (the slot's confirmed position follows *flushed*).
//!
//! Every length is checked before it is used: malformed input is a [`ProtocolError`] that says what
//! was expected and at which byte, never a panic. All integers are big-endian; times are
//! microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;

/// Tag of a backend CopyData message.
pub const COPY_DATA_TAG: u8 = b'd';
/// Tag of a backend CopyDone message.
pub const COPY_DONE_TAG: u8 = b'c';
/// Tag of CopyBothResponse, which `backend::Message::parse` does not know.
pub const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// The most [`split_frame`] reserves ahead for the rest of an incomplete message.
const MAX_RESERVE: usize = 1 << 20;
/// Tag byte + Int32 length.
const HEADER_LEN: usize = 5;
/// XLogData: tag + dataStart + walEnd + sendTime.
const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Keepalive: tag + walEnd + sendTime + replyRequested.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Standby status update: tag + written + flushed + applied + clientTime + replyRequested.
const STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// Input that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{what} truncated at byte {at}: {needed} more bytes expected")]
    Truncated { what: &'static str, at: usize, needed: usize },
    #[error("invalid length {len} at byte {at} in {what}")]
    InvalidLength { what: &'static str, at: usize, len: i64 },
    #[error("unknown {what} tag {tag:?} at byte {at}")]
    UnknownTag { what: &'static str, at: usize, tag: char },
    #[error("unexpected {what} at byte {at}: expected {expected}")]
    Unexpected { what: &'static str, at: usize, expected: &'static str },
}

/// WAL data: one message of the output plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    /// Where the data starts in the WAL (0/0 for some BEGIN messages of test_decoding).
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// Server clock at transmission, in microseconds since 2000-01-01.
    pub send_time: i64,
    /// The plugin's message: a slice of the received frame, not a copy.
    pub data: Bytes,
}

/// A primary keepalive: the server is alive, and its WAL ends at `wal_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub wal_end: Lsn,
    /// Server clock at transmission, in microseconds since 2000-01-01.
    pub send_time: i64,
    /// The server wants a status update now; it disconnects after `wal_sender_timeout` without one.
    pub reply_requested: bool,
}

/// What a CopyData message of a replication stream holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData(XLogData),
    Keepalive(Keepalive),
}

/// A standby status update: how far the client has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyStatus {
    /// Received and written out (not necessarily durably).
    pub written: Lsn,
    /// Durably stored; the slot's confirmed position follows this one.
    pub flushed: Lsn,
    /// Applied; for a change streamer the same as flushed.
    pub applied: Lsn,
    /// Client clock, in microseconds since 2000-01-01.
    pub client_time: i64,
    /// Ask the server to answer with a keepalive at once.
    pub reply_requested: bool,
}

/// Splits one whole backend message (tag, length and body) off the front of `buf`, without copying;
/// `None` when `buf` does not hold a whole message yet.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    // The length counts itself but not the tag.
    let body_len = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_sub(4))
        .ok_or(ProtocolError::InvalidLength { what: "message header", at: 1, len: len.into() })?;
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        // Make room for (much of) the rest now, so that few reads complete a large message; but not
        // all of a length nobody has sent yet, which could be anything up to 2 GiB.
        buf.reserve((total - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    Ok(Some(buf.split_to(total)))
}

/// The body of a frame that [`split_frame`] returned.
pub fn frame_body(frame: Bytes) -> Bytes {
    frame.slice(HEADER_LEN.min(frame.len())..)
}

/// Parses the payload of a CopyData message of a logical replication stream.
pub fn parse_copy_data(payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    let Some(&tag) = payload.first() else {
        return Err(ProtocolError::Truncated { what: "CopyData payload", at: 0, needed: 1 });
    };
    match tag {
        b'w' => {
            let header = need(&payload, XLOG_DATA_HEADER_LEN, "XLogData header")?;
            Ok(ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(read_u64(header, 1)),
                wal_end: Lsn(read_u64(header, 9)),
                send_time: read_u64(header, 17) as i64,
                data: payload.slice(XLOG_DATA_HEADER_LEN..),
            }))
        }
        b'k' => {
            let body = need(&payload, KEEPALIVE_LEN, "keepalive")?;
            if payload.len() > KEEPALIVE_LEN {
                return Err(ProtocolError::InvalidLength {
                    what: "keepalive",
                    at: 0,
                    len: payload.len() as i64,
                });
            }
            Ok(ReplicationMessage::Keepalive(Keepalive {
                wal_end: Lsn(read_u64(body, 1)),
                send_time: read_u64(body, 9) as i64,
                reply_requested: parse_flag(body[17], 17, "keepalive reply flag")?,
            }))
        }
        _ => Err(ProtocolError::UnknownTag { what: "CopyData payload", at: 0, tag: char::from(tag) }),
    }
}

/// Checks the body of a CopyBothResponse: Int8 overall format, Int16 column count, Int16 format per
/// column. A logical stream is textual (format 0) with no columns.
pub fn parse_copy_both_response(body: &[u8]) -> Result<(), ProtocolError> {
    let what = "CopyBothResponse";
    let header = need(body, 3, what)?;
    if header[0] > 1 {
        return Err(ProtocolError::Unexpected { what: "copy format", at: 0, expected: "0 or 1" });
    }
    let columns = i16::from_be_bytes([header[1], header[2]]);
    let expected_len = usize::try_from(columns)
        .map(|n| 3 + 2 * n)
        .map_err(|_| ProtocolError::InvalidLength { what, at: 1, len: columns.into() })?;
    need(body, expected_len, what)?;
    if body.len() != expected_len {
        return Err(ProtocolError::InvalidLength { what, at: 0, len: body.len() as i64 });
    }
    Ok(())
}

/// Appends a CopyData message holding the standby status update `status` to `buf`.
pub fn encode_standby_status(status: &StandbyStatus, buf: &mut BytesMut) {
    buf.reserve(HEADER_LEN + STATUS_UPDATE_LEN);
    buf.put_u8(COPY_DATA_TAG);
    buf.put_i32((4 + STATUS_UPDATE_LEN) as i32);
    buf.put_u8(b'r');
    buf.put_u64(status.written.0);
    buf.put_u64(status.flushed.0);
    buf.put_u64(status.applied.0);
    buf.put_i64(status.client_time);
    buf.put_u8(u8::from(status.reply_requested));
}

/// `time` in microseconds since 2000-01-01, the clock unit of the replication protocol.
pub fn pg_epoch_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since_unix) => {
            let micros = i128::try_from(since_unix.as_micros()).unwrap_or(i128::MAX);
            let since_pg = micros - i128::from(PG_EPOCH_UNIX_SECS) * 1_000_000;
            i64::try_from(since_pg).unwrap_or(i64::MAX)
        }
        // A clock before 1970 is broken; the server only uses this time for statistics.
        Err(_) => 0,
    }
}

/// The first `len` bytes of `buf`, or where and how much is missing.
fn need<'a>(buf: &'a [u8], len: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
    buf.get(..len).ok_or_else(|| ProtocolError::Truncated { what, at: buf.len(), needed: len - buf.len() })
}

/// Big-endian u64 at `at`; the caller has checked the length.
fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(bytes)
}

fn parse_flag(byte: u8, at: usize, what: &'static str) -> Result<bool, ProtocolError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(ProtocolError::Unexpected { what, at, expected: "0 or 1" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An XLogData payload as the server sends it: test_decoding's `BEGIN 730`.
    fn xlog_data_fixture() -> Vec<u8> {
        let mut payload = vec![b'w'];
        payload.extend_from_slice(&0x0000_0001_6B37_4D48u64.to_be_bytes());
        payload.extend_from_slice(&0x0000_0001_6B37_5000u64.to_be_bytes());
        payload.extend_from_slice(&849_000_000_123_456i64.to_be_bytes());
        payload.extend_from_slice(b"BEGIN 730");
        payload
    }

    fn keepalive_fixture(reply: u8) -> Vec<u8> {
        let mut payload = vec![b'k'];
        payload.extend_from_slice(&0x0000_0000_0300_0060u64.to_be_bytes());
        payload.extend_from_slice(&849_000_000_000_001i64.to_be_bytes());
        payload.push(reply);
        payload
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut frame = vec![tag];
        frame.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn parses_xlog_data_without_copying_the_payload() {
        let payload = Bytes::from(xlog_data_fixture());
        let ReplicationMessage::XLogData(data) = parse_copy_data(payload.clone()).unwrap() else {
            panic!("not XLogData");
        };
        assert_eq!(data.wal_start.to_string(), "1/6B374D48");
        assert_eq!(data.wal_end.to_string(), "1/6B375000");
        assert_eq!(data.send_time, 849_000_000_123_456);
        assert_eq!(&data.data[..], b"BEGIN 730");
        assert_eq!(data.data.as_ptr(), payload[25..].as_ptr(), "data must point into the frame");
    }

    #[test]
    fn parses_xlog_data_with_an_empty_message() {
        let payload = Bytes::from(xlog_data_fixture()[..25].to_vec());
        let ReplicationMessage::XLogData(data) = parse_copy_data(payload).unwrap() else {
            panic!("not XLogData");
        };
        assert!(data.data.is_empty());
    }

    #[test]
    fn parses_keepalives() {
        let parsed = parse_copy_data(Bytes::from(keepalive_fixture(1))).unwrap();
        assert_eq!(
            parsed,
            ReplicationMessage::Keepalive(Keepalive {
                wal_end: "0/3000060".parse().unwrap(),
                send_time: 849_000_000_000_001,
                reply_requested: true,
            })
        );
        let quiet = parse_copy_data(Bytes::from(keepalive_fixture(0))).unwrap();
        assert!(matches!(quiet, ReplicationMessage::Keepalive(k) if !k.reply_requested));
    }

    #[test]
    fn rejects_truncated_empty_and_unknown_payloads() {
        assert_eq!(
            parse_copy_data(Bytes::new()),
            Err(ProtocolError::Truncated { what: "CopyData payload", at: 0, needed: 1 })
        );
        let xlog = xlog_data_fixture();
        for len in 1..25 {
            let err = parse_copy_data(Bytes::from(xlog[..len].to_vec())).unwrap_err();
            assert_eq!(err, ProtocolError::Truncated { what: "XLogData header", at: len, needed: 25 - len });
        }
        let keepalive = keepalive_fixture(0);
        for len in 1..18 {
            assert!(matches!(
                parse_copy_data(Bytes::from(keepalive[..len].to_vec())),
                Err(ProtocolError::Truncated { what: "keepalive", .. })
            ));
        }
        let mut long = keepalive.clone();
        long.push(0);
        assert!(matches!(parse_copy_data(Bytes::from(long)), Err(ProtocolError::InvalidLength { .. })));
        assert!(matches!(
            parse_copy_data(Bytes::from(keepalive_fixture(7))),
            Err(ProtocolError::Unexpected { at: 17, .. })
        ));
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"x123")),
            Err(ProtocolError::UnknownTag { what: "CopyData payload", at: 0, tag: 'x' })
        );
    }

    #[test]
    fn splits_frames_only_when_whole() {
        let mut wire = frame(b'd', &xlog_data_fixture());
        wire.extend(frame(b'Z', b"I"));
        let mut buf = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            buf.put_u8(*byte);
            let split = split_frame(&mut buf).unwrap();
            if i + 1 == 5 + 4 + 30 {
                let frame = split.expect("first frame complete").freeze();
                assert_eq!(frame[0], b'd');
                assert_eq!(frame_body(frame).len(), 34);
            } else if i + 1 == wire.len() {
                assert_eq!(&split.expect("second frame complete")[..], &frame(b'Z', b"I")[..]);
            } else {
                assert!(split.is_none(), "split early at byte {i}");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_frame_lengths_below_four_and_negative() {
        for len in [-1i32, 0, 3, i32::MIN] {
            let mut buf = BytesMut::from(&[b'd'][..]);
            buf.put_i32(len);
            assert_eq!(
                split_frame(&mut buf),
                Err(ProtocolError::InvalidLength { what: "message header", at: 1, len: len.into() })
            );
        }
    }

    #[test]
    fn checks_copy_both_responses() {
        assert_eq!(parse_copy_both_response(&[0, 0, 0]), Ok(()));
        assert_eq!(parse_copy_both_response(&[0, 0, 1, 0, 0]), Ok(()));
        assert!(matches!(parse_copy_both_response(&[]), Err(ProtocolError::Truncated { .. })));
        assert!(matches!(parse_copy_both_response(&[0, 0, 2, 0, 0]), Err(ProtocolError::Truncated { .. })));
        assert!(matches!(
            parse_copy_both_response(&[0, 0xFF, 0xFF]),
            Err(ProtocolError::InvalidLength { .. })
        ));
        assert!(matches!(parse_copy_both_response(&[0, 0, 0, 9]), Err(ProtocolError::InvalidLength { .. })));
        assert!(matches!(parse_copy_both_response(&[2, 0, 0]), Err(ProtocolError::Unexpected { .. })));
    }

    #[test]
    fn encodes_standby_status_updates() {
        let mut buf = BytesMut::new();
        encode_standby_status(
            &StandbyStatus {
                written: Lsn(0x1_0000_0002),
                flushed: Lsn(0x1_0000_0001),
                applied: Lsn(0x1_0000_0001),
                client_time: 0x0102_0304_0506_0708,
                reply_requested: true,
            },
            &mut buf,
        );
        let mut expected = vec![b'd', 0, 0, 0, 38, b'r'];
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.push(1);
        assert_eq!(&buf[..], &expected[..]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = parse_copy_data(Bytes::from(bytes.clone()));
            let _ = parse_copy_both_response(&bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = split_frame(&mut buf) {
                let _ = frame_body(frame.freeze());
            }
            proptest::prop_assert!(buf.capacity() <= bytes.len() + MAX_RESERVE);
        }
    }

    #[test]
    fn converts_times_to_the_postgres_epoch() {
        let pg_epoch = UNIX_EPOCH + std::time::Duration::from_secs(PG_EPOCH_UNIX_SECS);
        assert_eq!(pg_epoch_micros(pg_epoch), 0);
        assert_eq!(pg_epoch_micros(pg_epoch + std::time::Duration::from_micros(1_500_001)), 1_500_001);
        assert_eq!(pg_epoch_micros(UNIX_EPOCH), -946_684_800_000_000);
    }
}
