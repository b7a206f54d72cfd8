//! A PostgreSQL WAL position: how far the primary had written when a write committed, and how
//! far a read replica must have replayed before it may answer a read that follows that write.

/// A WAL position as a byte offset (`pg_lsn - '0/0'`), so it orders and stores as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(i64);

impl Lsn {
    pub fn new(offset: i64) -> Self {
        Self(offset)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}
