//! Noting the shape of each statement sent to a server, for `SHOW QUERIES` (see
//! [`crate::admin::queries`]): a simple Query by the shape routing already found (or one shape
//! scan), an Execute by its portal's statement (the unnamed one's shape found at its Parse, a
//! pooled statement's once for all clients). Nothing is done when `query_stats_size = 0`.

use std::sync::Arc;

use super::Loop;
use crate::admin::queries::{ShapeStats, StatementShapes, MAX_NAMED_SHAPES};
use crate::protocol::{cstr, Frame};
use crate::state::Prepared;

impl Loop<'_> {
    /// A simple Query (its text) goes to the server.
    pub(super) fn note_query(&mut self, frame: &Frame, text: &str) {
        if !self.noting() {
            return;
        }
        if self.state.config.proxy.slow_query_ms > 0 {
            self.meter.pending.text(frame.bytes.clone());
        }
        self.meter.pending.arrived(self.last_activity.into_std());
        let shape = match self.meter.query_shape.take() {
            Some(found) => found,
            None => self.state.queries.of(text),
        };
        self.meter.pending.query(shape, 1);
    }

    /// A Parse of statement `name` goes to the server without being pooled (the unnamed
    /// statement, or any in session mode).
    pub(super) fn note_parse(&mut self, name: &str, query: &str) {
        if !self.state.queries.enabled() {
            return;
        }
        let shapes = self.client.shapes.get_or_insert_with(Box::default);
        if name.is_empty() {
            let same = !shapes.unnamed_text.is_empty() && shapes.unnamed_text == query;
            if shapes.unnamed.is_none() || !same {
                shapes.unnamed = self.state.queries.of(query);
                shapes.unnamed_text.clear();
                if query.len() <= crate::admin::queries::MAX_SHAPE_TEXT {
                    shapes.unnamed_text.push_str(query);
                }
            }
            return;
        }
        let shape = self.state.queries.of(query);
        match shape {
            Some(s) if shapes.named.len() < MAX_NAMED_SHAPES || shapes.named.contains_key(name) => {
                shapes.named.insert(name.into(), s);
            }
            _ => {
                shapes.named.remove(name);
            }
        }
    }

    /// A Close of a statement the proxy does not pool.
    pub(super) fn note_close(&mut self, name: &str) {
        if let Some(shapes) = self.client.shapes.as_deref_mut() {
            shapes.named.remove(name);
        }
    }

    /// A Bind of `portal` to statement `name` goes to the server (`pooled`: the pooled
    /// statement the name stands for).
    pub(super) fn note_bind(&mut self, body: &[u8], pooled: Option<&Prepared>) {
        if !self.state.queries.enabled() {
            return;
        }
        let mut b = body;
        let (Some(portal), Some(name)) = (cstr(&mut b), cstr(&mut b)) else {
            return;
        };
        let shape = match pooled {
            Some(stmt) => stmt
                .shape
                .get_or_init(|| self.state.queries.of(stmt.query()))
                .clone(),
            None => self.unpooled_shape(name),
        };
        self.meter.portal = shape.map(|s| (portal.into(), s));
    }

    fn unpooled_shape(&self, name: &str) -> Option<Arc<ShapeStats>> {
        let shapes: &StatementShapes = self.client.shapes.as_deref()?;
        match name {
            "" => shapes.unnamed.clone(),
            _ => shapes.named.get(name).cloned(),
        }
    }

    /// An Execute goes to the server.
    pub(super) fn note_execute(&mut self, frame: &Frame) {
        if !self.noting() {
            return;
        }
        let mut b = frame.body();
        let portal = cstr(&mut b).unwrap_or_default();
        let shape = match &self.meter.portal {
            Some((name, s)) if **name == *portal => Some(s.clone()),
            _ => None,
        };
        self.meter.pending.arrived(self.last_activity.into_std());
        self.meter.pending.execute(shape, 1);
    }

    /// A Sync goes to the server: the request ends.
    pub(super) fn note_sync(&mut self) {
        if self.noting() {
            self.meter.pending.sync();
        }
    }
}
