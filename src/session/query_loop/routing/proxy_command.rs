//! The proxy's own settings, `SET/RESET/SHOW shardgate.target` and `shardgate.shard`,
//! answered by the proxy in the client's order of responses.

use bytes::BytesMut;

use super::super::{Expect, Loop};
use crate::protocol::{self, query_text, sqlstate, Frame, PgError};
use crate::sql::hints::{self, Want};

impl Loop<'_> {
    /// Answers `SET/RESET/SHOW shardgate.*`; false if the query is not one of those.
    pub(in crate::session::query_loop) fn proxy_command(&mut self, frame: &Frame) -> bool {
        let Some(cmd) = hints::command(query_text(frame.body())) else {
            return false;
        };
        let mut b = BytesMut::new();
        match cmd {
            hints::Command::Set { name, value } if name == "target" => {
                let value = value.map(|v| v.to_ascii_lowercase());
                match value.as_deref() {
                    None | Some("auto") => self.routing.target = None,
                    Some("primary") => self.routing.target = Some(Want::Primary),
                    Some("replica") => self.routing.target = Some(Want::Replica),
                    Some(other) => {
                        PgError::error(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!(
                                "invalid value for parameter \"shardgate.target\": \"{other}\""
                            ),
                        )
                        .with_hint("Available values: primary, replica, auto.")
                        .encode(&mut b);
                    }
                }
                if b.is_empty() {
                    protocol::command_complete(&mut b, "SET");
                }
            }
            hints::Command::Show { name } if name == "target" => {
                let v = match self.routing.target {
                    None | Some(Want::Read) => "auto",
                    Some(Want::Primary) => "primary",
                    Some(Want::Replica) => "replica",
                };
                protocol::show_result(&mut b, "shardgate.target", v);
            }
            hints::Command::Set { name, value } if name == "shard" => match value {
                None => {
                    self.routing.session_shard = None;
                    protocol::command_complete(&mut b, "SET");
                }
                Some(v) => match self
                    .login
                    .shard_map
                    .as_ref()
                    .and_then(|m| m.shard_named(&v))
                {
                    Some(i) => {
                        self.routing.session_shard = Some(i);
                        protocol::command_complete(&mut b, "SET");
                    }
                    None => {
                        let known = self
                            .login
                            .shard_map
                            .as_ref()
                            .map(|m| m.names.join(", "))
                            .unwrap_or_else(|| "none: the database is not sharded".into());
                        PgError::error(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!("invalid value for parameter \"shardgate.shard\": \"{v}\""),
                        )
                        .with_hint(format!(
                            "shards: {known}; RESET shardgate.shard routes by key again"
                        ))
                        .encode(&mut b);
                    }
                },
            },
            hints::Command::Show { name } if name == "shard" => {
                let v = match (self.routing.session_shard, &self.login.shard_map) {
                    (Some(i), Some(m)) => m.names.get(i.index()).cloned().unwrap_or_default(),
                    _ => "auto".to_string(),
                };
                protocol::show_result(&mut b, "shardgate.shard", &v);
            }
            hints::Command::Set { name, .. } | hints::Command::Show { name } => {
                PgError::error(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"shardgate.{name}\""),
                )
                .with_hint("The proxy knows shardgate.target and shardgate.shard.")
                .encode(&mut b);
            }
        }
        protocol::ready_for_query(&mut b, self.txn.status());
        if self.server.is_some() {
            // After the responses still owed by the server.
            self.relay.push(Expect::SyntheticReady(b.freeze()));
            self.relay
                .emit_synthetic(&mut self.to_client, &mut self.events);
        } else {
            self.to_client.extend_from_slice(&b);
        }
        true
    }
}
