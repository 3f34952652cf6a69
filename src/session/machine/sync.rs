//! Skip-to-Sync: after an error in the extended protocol a server discards the client's
//! messages up to the next Sync, and the proxy does the same for the errors it makes up.
//! One state says whether messages are being dropped and who answers the Sync.

/// Whether the client's messages are dropped until its next Sync.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SkipToSync {
    /// Messages are handled.
    #[default]
    Off,
    /// No server holds any of the batch (the proxy refused it, or a checkout failed): drop
    /// messages, and the proxy answers the Sync with ReadyForQuery.
    Answer,
    /// Earlier messages of the batch are on the server, which skips to the Sync as well:
    /// drop messages, and forward the Sync.
    Forward,
}

/// What to do with a client message (see [`SkipToSync::on_client`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClient {
    /// Handle it as usual.
    Handle,
    /// Drop it.
    Drop,
    /// It is the Sync the proxy answers: send ReadyForQuery with the current status.
    AnswerReady,
}

impl SkipToSync {
    /// The fate of a client message with type `tag`; a Sync ends the skipping.
    pub fn on_client(&mut self, tag: u8) -> OnClient {
        let sync = tag == b'S';
        match *self {
            SkipToSync::Off => OnClient::Handle,
            _ if !sync => OnClient::Drop,
            SkipToSync::Answer => {
                *self = SkipToSync::Off;
                OnClient::AnswerReady
            }
            SkipToSync::Forward => {
                *self = SkipToSync::Off;
                OnClient::Handle
            }
        }
    }

    /// The proxy refused a message, or could not get it a server: skip the rest of the
    /// batch and answer its Sync. A simple Query is answered at once instead (never skips).
    pub fn refused(&mut self, tag: u8) -> bool {
        if matches!(tag, b'Q' | b'F' | b'S') {
            return false;
        }
        *self = SkipToSync::Answer;
        true
    }

    /// The proxy answered a message with an error in the middle of a batch the server has
    /// started: skip to the Sync, which goes to the server.
    pub fn errored_mid_batch(&mut self) {
        *self = SkipToSync::Forward;
    }
}

#[cfg(test)]
mod tests {
    use super::{OnClient, SkipToSync};

    /// Feeds `tags` and returns what happened to each.
    fn run(mut s: SkipToSync, tags: &[u8]) -> Vec<OnClient> {
        tags.iter().map(|t| s.on_client(*t)).collect()
    }

    #[test]
    fn off_handles_everything() {
        use OnClient::Handle;
        assert_eq!(run(SkipToSync::Off, b"PBDESQ"), [Handle; 6]);
    }

    #[test]
    fn a_refused_batch_is_dropped_and_its_sync_answered() {
        use OnClient::*;
        assert_eq!(
            run(SkipToSync::Answer, b"BESPBES"),
            [Drop, Drop, AnswerReady, Handle, Handle, Handle, Handle]
        );
    }

    #[test]
    fn an_error_mid_batch_forwards_the_sync() {
        use OnClient::*;
        assert_eq!(
            run(SkipToSync::Forward, b"EHSQ"),
            [Drop, Drop, Handle, Handle]
        );
    }

    #[test]
    fn a_query_while_skipping_is_dropped_like_a_server_does() {
        assert_eq!(run(SkipToSync::Answer, b"Q")[0], OnClient::Drop);
        assert_eq!(run(SkipToSync::Forward, b"Q")[0], OnClient::Drop);
    }

    #[test]
    fn refusing_a_simple_query_or_a_sync_does_not_skip() {
        for tag in [b'Q', b'F', b'S'] {
            let mut s = SkipToSync::Off;
            assert!(!s.refused(tag));
            assert_eq!(s, SkipToSync::Off, "{}", tag as char);
        }
    }

    #[test]
    fn refusing_an_extended_message_skips_to_the_answered_sync() {
        for tag in [b'P', b'B', b'D', b'E', b'C', b'H'] {
            let mut s = SkipToSync::Off;
            assert!(s.refused(tag));
            assert_eq!(s, SkipToSync::Answer);
            assert_eq!(s.on_client(b'S'), OnClient::AnswerReady);
            assert_eq!(s, SkipToSync::Off);
        }
    }

    #[test]
    fn the_last_error_decides_who_answers() {
        let mut s = SkipToSync::Off;
        s.refused(b'B');
        s.errored_mid_batch();
        assert_eq!(s.on_client(b'S'), OnClient::Handle);
        let mut s = SkipToSync::Off;
        s.errored_mid_batch();
        s.refused(b'E');
        assert_eq!(s.on_client(b'S'), OnClient::AnswerReady);
    }

    #[test]
    fn every_sequence_ends_skipping_at_its_first_sync() {
        for start in [SkipToSync::Off, SkipToSync::Answer, SkipToSync::Forward] {
            for tags in [&b"S"[..], b"PS", b"PBES", b"HHHS"] {
                let mut s = start;
                for t in tags {
                    s.on_client(*t);
                }
                assert_eq!(s, SkipToSync::Off, "{start:?} {tags:?}");
            }
        }
    }
}
