//! A client's unnamed statement on its server connection: under transaction pooling the
//! connection may have served another client since the client's Parse, and that client's
//! statement must never run for this one (`ServerConn::unnamed_owner`).

use super::super::Loop;
use crate::protocol::{sqlstate, PgError};

impl Loop<'_> {
    /// Whether the unnamed statement of the current server connection is this client's (its
    /// last Parse of it went there): under transaction pooling the connection may have served
    /// another client since, whose statement must never run for this one.
    pub(super) fn owns_unnamed(&self) -> bool {
        self.server
            .as_deref()
            .is_some_and(|c| c.unnamed_owner == self.session)
    }

    /// The answer to a Bind or Describe of an unnamed statement this client has not prepared
    /// on its connection (as Postgres answers where there is none).
    pub(super) fn no_unnamed_statement(&mut self) {
        self.synthetic_error(PgError::error(
            sqlstate::INVALID_SQL_STATEMENT_NAME,
            "unnamed prepared statement does not exist",
        ));
    }
}
