//! A client's unnamed statement on its server connection: under transaction pooling the
//! connection may have served another client since the client's Parse, and that client's
//! statement must never run for this one (`ServerConn::unnamed_owner`). The client's own is
//! parsed again there, unseen, as Postgres would still hold it.

use super::super::Loop;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::{sqlstate, Frame, PgError};
use crate::session::relay::Expect;

/// The number of the next client Parse of the unnamed statement (0 is none).
static NEXT_UNNAMED: AtomicU64 = AtomicU64::new(1);

impl Loop<'_> {
    /// The client's Parse of the unnamed statement `frame` goes to the current server
    /// connection: it becomes the client's unnamed statement, held there.
    pub(super) fn parsed_unnamed(&mut self, frame: &Frame) {
        let number = NEXT_UNNAMED.fetch_add(1, Ordering::Relaxed);
        if let Some(conn) = self.server.as_deref_mut() {
            conn.unnamed_owner = number;
        }
        self.client.unnamed_parse = Some((number, frame.bytes.clone()));
    }

    /// Makes the unnamed statement of the current server connection this client's before a
    /// Bind or Describe of it: nothing if its last Parse went there, else that Parse is sent
    /// again (its ParseComplete unseen). False (after a made-up 26000, as Postgres answers
    /// where there is none) if the client has no unnamed statement.
    pub(super) fn ensure_unnamed(&mut self) -> bool {
        let Some((number, parse)) = self.client.unnamed_parse.clone() else {
            self.synthetic_error(PgError::error(
                sqlstate::INVALID_SQL_STATEMENT_NAME,
                "unnamed prepared statement does not exist",
            ));
            return false;
        };
        let Some(conn) = self.server.as_deref_mut() else {
            return true;
        };
        if conn.unnamed_owner == number {
            return true;
        }
        conn.unnamed_owner = number;
        self.to_server.extend_from_slice(&parse);
        self.relay.push(Expect::Parse {
            stmt: None,
            visible: false,
            client_name: None,
        });
        true
    }
}
