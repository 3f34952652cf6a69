//! The message-by-message half of the query loop: routing each client message to the server
//! connection, renaming statements to pooled names, answering what needs no server, and tracking
//! what simple queries do to the client's session (settings, SQL-level prepared statements,
//! state that pins the client).

use bytes::BytesMut;
use std::sync::Arc;

use super::{End, Loop};
use crate::config::{SessionStatePolicy, SettingsReadBack};
use crate::protocol::{
    self, bind_names, empty_message, encode_target, parse_body, query_text, rename_bind, sqlstate,
    Frame, PgError,
};
use crate::session::client_state::{apply_sql, settings_effect, SettingsEffect};
use crate::session::machine::statements::{self as machine, Needs};
use crate::session::relay::{Expect, Kind};
use crate::shard::route::Params;
use crate::sql::scan::{
    dollar_quote, is_pooled_statement_name, is_setting_name, plain_select, quote_ident,
    session_command, set_config_names, split_statements, SessionCommand,
};
use crate::state::Prepared;

mod injected;
mod local;
mod unnamed;
pub(super) use injected::inject_query;
use injected::{close_evicted, inject_deallocate};

impl Loop<'_> {
    /// Sends one client message to the server connection, rewriting statement names in
    /// managed modes, and records the responses it will produce.
    pub(super) fn route(&mut self, frame: Frame) -> Option<End> {
        let tag = frame.tag;
        match tag {
            b'Q' => {
                let text = query_text(frame.body());
                self.note_query(&frame, text);
                self.on_query(&frame, text);
            }
            b'P' => return self.on_parse(&frame),
            b'B' => return self.on_bind(&frame),
            b'D' | b'C' => return self.on_describe_or_close(&frame),
            b'E' => {
                self.note_execute(&frame);
                self.forward(&frame, Some(Kind::Execute));
            }
            b'S' => {
                self.unsynced = false;
                let kind = (!self.relay.sync_ignored()).then_some(Kind::Sync);
                if kind.is_some() {
                    self.note_sync();
                }
                self.forward(&frame, kind);
            }
            b'c' | b'f' => {
                self.relay.copy_ended();
                self.forward(&frame, None);
            }
            b'F' => {
                // A function call may change any setting.
                self.client.opaque = true;
                self.forward(&frame, Some(Kind::Function));
            }
            _ => self.forward(&frame, None),
        }
        if matches!(tag, b'H' | b'E') {
            self.unsynced = true;
        }
        None
    }

    fn forward(&mut self, frame: &Frame, kind: Option<Kind>) {
        self.to_server.extend_from_slice(&frame.bytes);
        if let Some(k) = kind {
            self.relay.push(Expect::Client(k));
        }
    }

    fn malformed(&mut self, what: &str) -> Option<End> {
        PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("malformed {what} message"),
        )
        .encode(&mut self.to_client);
        Some(End::Fatal)
    }

    /// An error the proxy answers itself in the extended protocol: it takes the place of the
    /// message's response, and the rest up to Sync is dropped as the server would.
    fn synthetic_error(&mut self, err: PgError) {
        let mut b = BytesMut::new();
        err.encode(&mut b);
        self.relay.push(Expect::Synthetic(b.freeze()));
        self.relay
            .emit_synthetic(&mut self.to_client, &mut self.events);
        self.skip.errored_mid_batch();
    }

    /// Handles session state that cannot move between server connections.
    pub(super) fn pin(&mut self, reason: &'static str) -> Result<(), PgError> {
        match self.state.config.pool.session_state {
            SessionStatePolicy::Pin => {
                if self.client.pinned.is_none() {
                    crate::admin::events::Events::count(&self.state.events.pins);
                    tracing::debug!(user = %self.login.user(), reason, "client pinned to its server connection");
                }
                self.client.pinned = Some(reason);
                Ok(())
            }
            SessionStatePolicy::Error => Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "{reason} is not supported in {:?} pooling mode",
                    self.login.pool_mode
                )
                .to_lowercase(),
            )
            .with_hint("use a session-mode database, or set pool.session_state = \"pin\"")),
        }
    }

    fn on_parse(&mut self, frame: &Frame) -> Option<End> {
        self.unsynced = true;
        let Some(p) = parse_body(frame.body()) else {
            return self.malformed("Parse");
        };
        if !self.managed || p.name.is_empty() {
            self.note_parse(p.name, p.query);
        }
        if !self.managed {
            self.to_server.extend_from_slice(&frame.bytes);
            self.relay.push(Expect::Parse {
                stmt: None,
                visible: true,
                client_name: None,
            });
            return None;
        }
        if p.name.is_empty() {
            // An unnamed statement runs right after: track what it does now (nothing to track
            // for a plain SELECT, found in one pass).
            let plain = plain_select(p.query);
            let effect = match plain {
                true => SettingsEffect::default(),
                false => settings_effect(p.query),
            };
            self.note_effect(&effect);
            self.client.unnamed_name_params = effect.name_params;
            if !plain && !self.track_extended(p.query) {
                return None;
            }
            self.parsed_unnamed(frame);
            self.to_server.extend_from_slice(&frame.bytes);
            self.relay.push(Expect::Parse {
                stmt: None,
                visible: true,
                client_name: None,
            });
            return None;
        }
        let taken =
            self.client.named.contains_key(p.name) || self.client.sql_prepared.contains_key(p.name);
        if taken {
            let msg = format!("prepared statement \"{}\" already exists", p.name);
            self.synthetic_error(PgError::error(sqlstate::DUPLICATE_PSTATEMENT, msg));
            return None;
        }
        let stmt = self.state.statements.get_or_insert(p.rest);
        let name = p.name.to_string();
        self.client.named.insert(name.clone(), stmt.clone());
        let conn = self.server.as_deref_mut()?;
        match machine::use_on(&mut conn.prepared, stmt.id) {
            Needs::Nothing => {
                self.relay.push(Expect::Synthetic(empty_message(b'1')));
                self.relay
                    .emit_synthetic(&mut self.to_client, &mut self.events);
            }
            Needs::Parse { close_first } => {
                close_evicted(close_first, &mut self.relay, &mut self.to_server);
                self.to_server.extend_from_slice(&stmt.parse);
                self.relay.push(Expect::Parse {
                    stmt: Some(stmt),
                    visible: true,
                    client_name: Some(name),
                });
            }
        }
        None
    }

    /// The pooled statement for a client statement name, prepared on the current server
    /// connection; None (after a made-up error) if the client has no such statement.
    fn ensure_statement(&mut self, name: &str) -> Option<Arc<Prepared>> {
        let Some(stmt) = self.client.named.get(name).cloned() else {
            let msg = format!("prepared statement \"{name}\" does not exist");
            self.synthetic_error(PgError::error(sqlstate::INVALID_SQL_STATEMENT_NAME, msg));
            return None;
        };
        let conn = self.server.as_deref_mut()?;
        if let Needs::Parse { close_first } = machine::use_on(&mut conn.prepared, stmt.id) {
            close_evicted(close_first, &mut self.relay, &mut self.to_server);
            self.to_server.extend_from_slice(&stmt.parse);
            self.relay.push(Expect::Parse {
                stmt: Some(stmt.clone()),
                visible: false,
                client_name: None,
            });
        }
        Some(stmt)
    }

    fn on_bind(&mut self, frame: &Frame) -> Option<End> {
        self.unsynced = true;
        let Some((_, name, _)) = bind_names(frame.body()) else {
            return self.malformed("Bind");
        };
        if !self.managed || name.is_empty() {
            if self.managed && !self.ensure_unnamed() {
                return None;
            }
            if self.managed {
                let params = std::mem::take(&mut self.client.unnamed_name_params);
                self.note_name_params(frame.body(), &params);
                self.client.unnamed_name_params = params;
            }
            self.note_bind(frame.body(), None);
            self.forward(frame, Some(Kind::Bind));
            return None;
        }
        if let Some(stmt) = self.ensure_statement(name) {
            self.note_bind(frame.body(), Some(&stmt));
            self.note_effect(&stmt.effect);
            self.note_name_params(frame.body(), &stmt.effect.name_params);
            if stmt.command != SessionCommand::None || !stmt.set_config.is_empty() {
                let text = stmt.query().to_string();
                if !self.track_extended(&text) {
                    return None;
                }
            }
            if !rename_bind(&mut self.to_server, frame.body(), &stmt.name) {
                return self.malformed("Bind");
            }
            self.relay.push(Expect::Client(Kind::Bind));
        }
        None
    }

    fn on_describe_or_close(&mut self, frame: &Frame) -> Option<End> {
        self.unsynced = true;
        let (tag, kind) = (
            frame.tag,
            if frame.tag == b'D' {
                Kind::Describe
            } else {
                Kind::Close
            },
        );
        let Some((target, name)) = protocol::target(frame.body()) else {
            return self.malformed(if tag == b'D' { "Describe" } else { "Close" });
        };
        if self.managed && target == b'S' && name.is_empty() {
            if tag == b'D' && !self.ensure_unnamed() {
                return None;
            }
            if tag == b'C' {
                // The client has no unnamed statement from now on; what the connection holds
                // is no one's (its number matches no client's), so nothing is sent.
                self.client.unnamed_parse = None;
                self.relay.push(Expect::Synthetic(empty_message(b'3')));
                self.relay
                    .emit_synthetic(&mut self.to_client, &mut self.events);
                return None;
            }
        }
        if !self.managed || target != b'S' || name.is_empty() {
            if tag == b'C' && target == b'S' {
                self.note_close(name);
            }
            self.forward(frame, Some(kind));
            return None;
        }
        let name = name.to_string();
        if tag == b'C' {
            // The pooled statement stays prepared on servers for other clients.
            self.client.named.remove(&name);
            self.relay.push(Expect::Synthetic(empty_message(b'3')));
            self.relay
                .emit_synthetic(&mut self.to_client, &mut self.events);
        } else if let Some(stmt) = self.ensure_statement(&name) {
            self.to_server
                .extend_from_slice(&encode_target(b'D', b'S', &stmt.name));
            self.relay.push(Expect::Client(Kind::Describe));
        }
        None
    }

    /// A simple query: tracks session state in managed modes, then forwards it unchanged.
    fn on_query(&mut self, frame: &Frame, text: &str) {
        if self.managed {
            // Most queries are one statement (maybe with a trailing semicolon): no split.
            let single = text.trim_end().trim_end_matches(';');
            let split;
            let stmts: &[&str] = if single.contains(';') {
                split = split_statements(text);
                &split
            } else {
                std::slice::from_ref(&single)
            };
            for &stmt in stmts {
                if plain_select(stmt) {
                    // Found in one pass: no effect, no session command, nothing to track.
                    self.note_effect(&SettingsEffect::default());
                    continue;
                }
                self.note_effect(&settings_effect(stmt));
                if let Err(e) = self.track_statement(stmt, false) {
                    self.client.after.clear();
                    let mut b = BytesMut::new();
                    e.encode(&mut b);
                    protocol::ready_for_query(&mut b, self.txn.status());
                    self.relay.push(Expect::SyntheticReady(b.freeze()));
                    self.relay
                        .emit_synthetic(&mut self.to_client, &mut self.events);
                    return;
                }
            }
        }
        self.forward(frame, Some(Kind::Query));
        for sql in std::mem::take(&mut self.client.after) {
            inject_query(&sql, &mut self.relay, &mut self.to_server);
        }
    }

    /// [`Self::track_statement`] for a statement run through the extended protocol; false
    /// (after a made-up error) if it is refused.
    fn track_extended(&mut self, sql: &str) -> bool {
        let tracked = self.track_statement(sql, true);
        // A simple query injected here would destroy the unnamed statement.
        self.client.after.clear();
        match tracked {
            Ok(()) => true,
            Err(e) => {
                self.synthetic_error(e);
                false
            }
        }
    }

    /// Notes what a statement about to run may do to settings the SQL does not name (read back
    /// at the end of the transaction) and whether it changes the schema.
    fn note_effect(&mut self, e: &SettingsEffect) {
        let mode = self.state.config.pool.settings_read_back;
        if e.opaque || mode == SettingsReadBack::Always {
            self.client.opaque = true;
        } else if e.writes && mode == SettingsReadBack::Auto {
            self.client.wrote = true;
        }
        if e.ddl {
            self.client.ddl = true;
        }
    }

    /// `set_config($n, ...)`: the settings named by the Bind's parameter values are read back
    /// at the end of the transaction; a name that cannot be read makes the transaction opaque.
    fn note_name_params(&mut self, bind: &[u8], params: &[usize]) {
        if params.is_empty() {
            return;
        }
        let values = Params::from_bind(bind);
        for &n in params {
            let name = values
                .as_ref()
                .and_then(|p| p.values.get(n.wrapping_sub(1)).copied().flatten())
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| is_setting_name(v));
            match name {
                Some(v) => {
                    self.client.dirty.insert(v.to_ascii_lowercase());
                }
                None => self.client.opaque = true,
            }
        }
    }

    /// Records what one statement of a simple query (or of an extended-protocol Parse/Bind,
    /// `extended`) does to the session; injects what the server connection needs first
    /// (SQL-level prepared statements of this client).
    fn track_statement(&mut self, stmt: &str, extended: bool) -> Result<(), PgError> {
        let cmd = session_command(stmt);
        let Some(conn) = self.server.as_deref_mut() else {
            return Ok(());
        };
        for name in set_config_names(stmt) {
            self.client.dirty.insert(name);
        }
        let deallocate = matches!(cmd, SessionCommand::Deallocate(_));
        match cmd {
            SessionCommand::None => {}
            SessionCommand::Set(name) => {
                self.client.dirty.insert(name);
            }
            SessionCommand::Reset(name) => {
                // RESET goes back to the session default, which for this client includes its
                // startup parameters; the server connection's own default may differ.
                if let Some(v) = self.client.startup.get(&name) {
                    self.client.after.push(format!(
                        "SELECT set_config({}, {}, false)",
                        dollar_quote(&name),
                        dollar_quote(v)
                    ));
                }
                self.client.dirty.insert(name);
            }
            SessionCommand::ResetAll | SessionCommand::DiscardAll => {
                self.track_reset_all(cmd == SessionCommand::DiscardAll);
            }
            SessionCommand::DeallocateAll => {
                self.client.named.clear();
                self.client.sql_prepared.clear();
                conn.prepared.clear();
                conn.sql_prepared.clear();
            }
            SessionCommand::Prepare(name) if is_pooled_statement_name(&name) => {
                return Err(PgError::error(
                    sqlstate::RESERVED_NAME,
                    format!("prepared statement name \"{name}\" is reserved by the proxy"),
                )
                .with_hint("names of the form sg_<number> are used for pooled statements"));
            }
            SessionCommand::Prepare(name)
                if self.client.named.contains_key(&name)
                    || self.client.sql_prepared.contains_key(&name) =>
            {
                // Protocol-level and SQL-level statements share one namespace, as in Postgres.
                return Err(PgError::error(
                    sqlstate::DUPLICATE_PSTATEMENT,
                    format!("prepared statement \"{name}\" already exists"),
                ));
            }
            SessionCommand::Deallocate(name)
                if self.client.named.contains_key(&name)
                    && !self.client.sql_prepared.contains_key(&name) =>
            {
                self.track_protocol_deallocate(&name, extended);
            }
            SessionCommand::Execute(name) | SessionCommand::Deallocate(name)
                if is_pooled_statement_name(&name)
                    && !self.client.sql_prepared.contains_key(&name) =>
            {
                return Err(PgError::error(
                    sqlstate::INVALID_SQL_STATEMENT_NAME,
                    format!("prepared statement \"{name}\" does not exist"),
                ));
            }
            SessionCommand::Prepare(name) => {
                if conn.sql_prepared.contains_key(&name) {
                    inject_deallocate(&name, &mut self.relay, &mut self.to_server);
                }
                let text: Arc<str> = Arc::from(stmt);
                self.client.sql_prepared.insert(name.clone(), text.clone());
                conn.sql_prepared.insert(name, text);
            }
            SessionCommand::Execute(name) | SessionCommand::Deallocate(name) => {
                self.track_sql_statement_use(&name, deallocate);
            }
            SessionCommand::Pin(reason) => self.pin(reason)?,
        }
        Ok(())
    }

    /// RESET ALL, or DISCARD ALL (`discard`): the client's startup parameters are applied
    /// again after the statement, and every setting either side knows about is read back;
    /// DISCARD ALL also drops the client's prepared statements and the connection's.
    fn track_reset_all(&mut self, discard: bool) {
        // `track_statement` only calls this with a server connection.
        let Some(conn) = self.server.as_deref_mut() else {
            return;
        };
        if let Some(sql) = apply_sql(&self.client.startup, &Default::default()) {
            self.client.after.push(sql);
        }
        // Read every setting either side knows about back from the server.
        let keys: Vec<String> = self
            .client
            .settings
            .keys()
            .chain(conn.settings.keys())
            .cloned()
            .collect();
        self.client.dirty.extend(keys);
        if discard {
            self.client.named.clear();
            self.client.sql_prepared.clear();
            conn.prepared.clear();
            conn.sql_prepared.clear();
        }
    }

    /// SQL-level DEALLOCATE of a statement the client prepared with the protocol (`extended`:
    /// the DEALLOCATE itself runs through the extended protocol).
    fn track_protocol_deallocate(&mut self, name: &str, extended: bool) {
        // `track_statement` only calls this with a server connection.
        let Some(conn) = self.server.as_deref_mut() else {
            return;
        };
        // A statement the client prepared with the protocol lives under a pooled name
        // that other clients share: forget the client's name, and give the server a
        // statement of that name to deallocate, so the DEALLOCATE answers (and fails,
        // inside an aborted transaction) exactly as on a direct connection.
        self.client.named.remove(name);
        if conn.sql_prepared.remove(name).is_some() {
            inject_deallocate(name, &mut self.relay, &mut self.to_server);
        }
        if extended {
            // A simple query here would end the client's pipeline: a Parse instead.
            let mut rest = b"SELECT\0".to_vec();
            rest.extend_from_slice(&0i16.to_be_bytes());
            self.to_server
                .extend_from_slice(&protocol::encode_parse(name, &rest));
            self.relay.push(Expect::Parse {
                stmt: None,
                visible: false,
                client_name: None,
            });
        } else {
            inject_query(
                &format!("PREPARE {} AS SELECT", quote_ident(name)),
                &mut self.relay,
                &mut self.to_server,
            );
        }
    }

    /// EXECUTE or DEALLOCATE (`deallocate`) of an SQL-level prepared statement: the server
    /// connection gets the client's statement of that name first (or loses another one), so
    /// the statement answers as on a direct connection.
    fn track_sql_statement_use(&mut self, name: &str, deallocate: bool) {
        // `track_statement` only calls this with a server connection.
        let Some(conn) = self.server.as_deref_mut() else {
            return;
        };
        if let Some(text) = self.client.sql_prepared.get(name).filter(|_| !deallocate) {
            let effect = settings_effect(text);
            let mode = self.state.config.pool.settings_read_back;
            if effect.opaque {
                self.client.opaque = true;
            } else if effect.writes && mode == SettingsReadBack::Auto {
                self.client.wrote = true;
            }
        }
        if !self.client.sql_prepared.contains_key(name) && conn.sql_prepared.remove(name).is_some()
        {
            // Another client's (or this client's deallocated) statement: remove it so
            // the server answers 26000 as it would on a direct connection.
            inject_deallocate(name, &mut self.relay, &mut self.to_server);
        }
        if let Some(text) = self.client.sql_prepared.get(name).cloned() {
            if conn.sql_prepared.get(name) != Some(&text) {
                if conn.sql_prepared.contains_key(name) {
                    inject_deallocate(name, &mut self.relay, &mut self.to_server);
                }
                inject_query(&text, &mut self.relay, &mut self.to_server);
                conn.sql_prepared.insert(name.to_string(), text);
            }
        }
        if deallocate {
            self.client.sql_prepared.remove(name);
            conn.sql_prepared.remove(name);
        }
    }
}
