//! WAL positions (`Lsn`) and the one piece of WAL page geometry the monitor
//! needs to compare a primary's insert position with a replica's replay
//! position.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::types::PgLsn;

/// A WAL position ("log sequence number"), printed like Postgres prints it:
/// `16/B374D848` (high and low 32 bits in upper-case hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `older` to `self`, 0 if `older` is ahead (a replica that
    /// reports a position past the last primary sample is simply not behind).
    pub fn bytes_since(self, older: Lsn) -> u64 {
        self.0.saturating_sub(older.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an LSN (expected two hex numbers like `16/B374D848`)")]
pub struct LsnParseError {
    pub input: String,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError {
            input: s.to_string(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        // from_str_radix accepts a leading '+', Postgres does not.
        let hex = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(part, 16).ok()
        };
        let (hi, lo) = (hex(hi).ok_or_else(err)?, hex(lo).ok_or_else(err)?);
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<PgLsn> for Lsn {
    fn from(lsn: PgLsn) -> Self {
        Lsn(u64::from(lsn))
    }
}

impl From<Lsn> for PgLsn {
    fn from(lsn: Lsn) -> Self {
        PgLsn::from(lsn.0)
    }
}

/// Size of a WAL page header (`SizeOfXLogShortPHD`) on 64-bit servers.
const SHORT_PAGE_HEADER: u64 = 24;
/// Size of the header of a segment's first page (`SizeOfXLogLongPHD`).
const LONG_PAGE_HEADER: u64 = 40;

/// WAL page and segment sizes of a server (`wal_block_size`,
/// `wal_segment_size`), read once per monitor connection.
///
/// Why it matters: `pg_current_wal_insert_lsn()` reports a position that
/// sits exactly on a page boundary as the first byte *after* that page's
/// header, while a replica's `pg_last_wal_replay_lsn()` (the end of the last
/// record replayed) reports the boundary itself. Without correcting for it, a
/// fully caught-up replica of an idle primary would look a header's worth of
/// bytes behind, forever, and be refused reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalGeometry {
    block: u64,
    segment: u64,
}

impl Default for WalGeometry {
    /// Postgres' compiled-in defaults: 8 kB pages, 16 MB segments.
    fn default() -> Self {
        WalGeometry {
            block: 8192,
            segment: 16 * 1024 * 1024,
        }
    }
}

impl WalGeometry {
    /// Checks sizes reported by a server; `None` if they cannot be real
    /// (not powers of two, or a segment that is not whole pages).
    pub fn new(block: i64, segment: i64) -> Option<Self> {
        let block = u64::try_from(block).ok()?;
        let segment = u64::try_from(segment).ok()?;
        let sane = block.is_power_of_two()
            && segment.is_power_of_two()
            && block > LONG_PAGE_HEADER
            && segment >= block;
        sane.then_some(WalGeometry { block, segment })
    }

    /// The insert position `lsn` in the form replay positions use: a
    /// position just past a page header becomes the page boundary. No
    /// record can end inside a header, so both denote the same WAL.
    pub fn record_end(self, lsn: Lsn) -> Lsn {
        let header = if lsn.0 % self.segment == LONG_PAGE_HEADER {
            LONG_PAGE_HEADER
        } else if lsn.0 % self.block == SHORT_PAGE_HEADER && lsn.0 % self.segment >= self.block {
            SHORT_PAGE_HEADER
        } else {
            0
        };
        Lsn(lsn.0 - header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert_eq!("ffffffff/ffffffff".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!(
            "0/1A".parse::<Lsn>().unwrap().to_string(),
            "0/1A",
            "round trip keeps no leading zeros"
        );
    }

    #[test]
    fn refuses_malformed_text() {
        for bad in [
            "",
            "16",
            "16/",
            "/1",
            "1/2/3",
            "g/1",
            "+1/2",
            "1/ 2",
            "123456789/0",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains("not an LSN"), "{err}");
        }
    }

    #[test]
    fn converts_to_and_from_tokio_postgres() {
        let pg = PgLsn::from(0x1_0000_0010);
        let lsn = Lsn::from(pg);
        assert_eq!(lsn, Lsn(0x1_0000_0010));
        assert_eq!(PgLsn::from(lsn), pg);
    }

    #[test]
    fn bytes_since_never_goes_negative() {
        assert_eq!(Lsn(100).bytes_since(Lsn(40)), 60);
        assert_eq!(Lsn(40).bytes_since(Lsn(100)), 0);
    }

    #[test]
    fn insert_positions_past_a_page_header_map_to_the_boundary() {
        let g = WalGeometry::default();
        let seg = 16 * 1024 * 1024;
        // Just past a short header in the middle of a segment.
        assert_eq!(g.record_end(Lsn(3 * 8192 + 24)), Lsn(3 * 8192));
        // Just past the long header of a segment's first page.
        assert_eq!(g.record_end(Lsn(5 * seg + 40)), Lsn(5 * seg));
        // Ordinary positions are left alone, including offset 40 of a page
        // that is not a segment's first (a continuation may end there).
        for lsn in [
            3 * 8192,
            3 * 8192 + 40,
            3 * 8192 + 100,
            5 * seg,
            5 * seg + 24,
        ] {
            assert_eq!(g.record_end(Lsn(lsn)), Lsn(lsn));
        }
    }

    #[test]
    fn geometry_refuses_impossible_sizes() {
        assert!(WalGeometry::new(8192, 16 * 1024 * 1024).is_some());
        assert!(WalGeometry::new(8192, 1 << 30).is_some());
        assert!(WalGeometry::new(0, 16).is_none());
        assert!(WalGeometry::new(-8192, 16 * 1024 * 1024).is_none());
        assert!(WalGeometry::new(8000, 16 * 1024 * 1024).is_none());
        assert!(WalGeometry::new(8192, 4096).is_none());
    }
}
