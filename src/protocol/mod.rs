//! Wire protocol v3: framing and the few messages the proxy decodes or writes itself.
//!
//! No I/O here. Framing works on a `BytesMut` and returns `Ok(None)` when more bytes are needed;
//! messages the proxy forwards are never re-encoded, only their tag and length are read.

mod bind;
mod data_row;
pub mod error_class;
mod extended;
mod frame;
mod messages;
pub mod sqlstate;
mod startup;
mod status;

pub use bind::{BindParts, Params};
pub use data_row::{DataRowError, DataRowValues};
pub use error_class::{ClassCounts, ErrorClass, Fault, PROXY_ERRORS};
pub use extended::{
    bind_names, empty_message, encode_parse, encode_target, param_oids, parse_body, rename_bind,
    target, Parse,
};
pub use frame::{
    cstr, frame_ready, peek_header, split_frame, whole_body, whole_messages, Frame, FrameError,
    WholeMessages,
};
pub use messages::*;
pub use startup::{split_startup, StartupPacket, MAX_STARTUP_LEN};
pub use status::TxStatus;
