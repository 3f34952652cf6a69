//! The messages the proxy sends on a client's server connection of its own accord (their
//! answers are not the client's): a query for session state, a DEALLOCATE, the Close of an
//! evicted pooled statement.

use bytes::BytesMut;

use crate::protocol::encode_target;
use crate::session::relay::{Expect, Relay};
use crate::sql::scan::quote_ident;

/// Sends a DEALLOCATE of the SQL-level prepared statement `name` (see [`inject_query`]).
pub(super) fn inject_deallocate(name: &str, relay: &mut Relay, to_server: &mut BytesMut) {
    inject_query(
        &format!("DEALLOCATE {}", quote_ident(name)),
        relay,
        to_server,
    );
}

/// Sends a query of the proxy's own whose results nobody sees.
pub(in crate::session::query_loop) fn inject_query(
    sql: &str,
    relay: &mut Relay,
    to_server: &mut BytesMut,
) {
    let _ = postgres_protocol::message::frontend::query(sql, to_server);
    relay.push(Expect::InjectedQuery("session state"));
}

/// Closes on the server the pooled statement evicted to make room for another.
pub(super) fn close_evicted(evicted: Option<u64>, relay: &mut Relay, to_server: &mut BytesMut) {
    if let Some(id) = evicted {
        to_server.extend_from_slice(&encode_target(b'C', b'S', &format!("sg_{id}")));
        relay.push(Expect::InjectedClose);
    }
}
