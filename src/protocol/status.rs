//! [`TxStatus`]: the transaction status a ReadyForQuery reports.

/// The transaction status byte of a ReadyForQuery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries are rejected until it ends).
    Failed,
}

impl TxStatus {
    /// The status of a ReadyForQuery body's byte; None for any other byte.
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    /// The byte sent on the wire.
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    /// Whether a transaction block is open (`T` or `E`).
    pub fn in_transaction(self) -> bool {
        self != TxStatus::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::TxStatus;

    #[test]
    fn bytes_round_trip_and_others_are_rejected() {
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert_eq!(TxStatus::from_byte(s.byte()), Some(s));
        }
        assert_eq!(TxStatus::from_byte(b'X'), None);
        assert!(!TxStatus::Idle.in_transaction());
        assert!(TxStatus::Failed.in_transaction());
    }
}
