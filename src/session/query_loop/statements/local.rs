//! What a client message gets without a server connection: Sync, Flush, Close of a named
//! statement, and Parse of a statement some server already accepted.

use super::super::Loop;
use crate::protocol::{self, empty_message, parse_body, Frame};
use crate::sql::scan::{session_command, SessionCommand};

impl Loop<'_> {
    /// Without a server connection (so outside a transaction), answers what needs no server:
    /// Sync, Flush, Close of a named statement, and Parse of a statement some server already
    /// accepted. Drivers that prepare synchronously (pgbench -M prepared) then never wait for
    /// a server connection just to prepare, which could otherwise deadlock a small pool.
    pub(in crate::session::query_loop) fn answer_locally(&mut self, frame: &Frame) -> bool {
        match frame.tag {
            b'S' => {
                self.ready_for_client(self.txn.status());
                true
            }
            b'H' => true,
            b'C' => match protocol::target(frame.body()) {
                Some((b'S', name)) if !name.is_empty() => {
                    self.client.named.remove(name);
                    self.to_client.extend_from_slice(&empty_message(b'3'));
                    true
                }
                _ => false,
            },
            b'P' => {
                let Some(p) = parse_body(frame.body()) else {
                    return false;
                };
                if p.name.is_empty()
                    || self.client.named.contains_key(p.name)
                    || self.client.sql_prepared.contains_key(p.name)
                {
                    return false;
                }
                if !matches!(session_command(p.query), SessionCommand::None) {
                    return false;
                }
                match self.state.statements.get_validated(p.rest) {
                    Some(stmt) => {
                        self.client.named.insert(p.name.to_string(), stmt);
                        self.to_client.extend_from_slice(&empty_message(b'1'));
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }
}
