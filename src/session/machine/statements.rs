//! Named prepared statements across pooled server connections, without I/O: a client's
//! statement is one of the proxy's pooled statements (`sg_<id>`), and before a Bind or
//! Describe uses it on a server connection that has not seen it (a new connection after a
//! release, a retry, a shard switch), the proxy sends its Parse there first. Each
//! connection keeps a bounded set of them; making room closes the least recently used one.

use lru::LruCache;

/// The pooled statements prepared on one server connection, least recently used first out.
pub type OnConnection = LruCache<u64, ()>;

/// What a connection needs before pooled statement `id` can be used on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// It is prepared there already.
    Nothing,
    /// Send its Parse first; `close_first`: the pooled statement that makes room for it,
    /// closed on the server before.
    Parse {
        /// The evicted statement, closed before the Parse.
        close_first: Option<u64>,
    },
}

/// Marks `id` as used on the connection whose statements are `on` and says what must be sent
/// first.
pub fn use_on(on: &mut OnConnection, id: u64) -> Needs {
    if on.get(&id).is_some() {
        return Needs::Nothing;
    }
    let close_first = on
        .push(id, ())
        .map(|(evicted, ())| evicted)
        .filter(|e| *e != id);
    Needs::Parse { close_first }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    fn conn(capacity: usize) -> OnConnection {
        LruCache::new(NonZeroUsize::new(capacity).unwrap())
    }

    #[test]
    fn a_new_connection_gets_the_parse_first() {
        let mut c = conn(4);
        assert_eq!(use_on(&mut c, 7), Needs::Parse { close_first: None });
        assert_eq!(use_on(&mut c, 7), Needs::Nothing, "prepared once");
    }

    #[test]
    fn each_connection_is_prepared_on_its_own() {
        let (mut a, mut b) = (conn(4), conn(4));
        assert_eq!(use_on(&mut a, 1), Needs::Parse { close_first: None });
        assert_eq!(
            use_on(&mut b, 1),
            Needs::Parse { close_first: None },
            "re-Parse on the other connection"
        );
        assert_eq!(use_on(&mut a, 1), Needs::Nothing);
    }

    #[test]
    fn making_room_closes_the_least_recently_used() {
        let mut c = conn(2);
        use_on(&mut c, 1);
        use_on(&mut c, 2);
        use_on(&mut c, 1); // 2 is now the least recently used
        assert_eq!(
            use_on(&mut c, 3),
            Needs::Parse {
                close_first: Some(2)
            }
        );
        assert_eq!(use_on(&mut c, 1), Needs::Nothing);
        assert_eq!(
            use_on(&mut c, 2),
            Needs::Parse {
                close_first: Some(3)
            },
            "closed, so prepared again"
        );
    }

    #[test]
    fn a_connection_reset_prepares_again() {
        let mut c = conn(2);
        use_on(&mut c, 5);
        c.clear(); // DISCARD ALL
        assert_eq!(use_on(&mut c, 5), Needs::Parse { close_first: None });
    }

    #[test]
    fn the_set_stays_bounded_under_any_sequence() {
        let mut c = conn(3);
        let mut seed = 0x2545_f491_u64;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let id = seed % 10;
            let before = c.contains(&id);
            match use_on(&mut c, id) {
                Needs::Nothing => assert!(before),
                Needs::Parse { close_first } => {
                    assert!(!before);
                    assert_ne!(close_first, Some(id));
                }
            }
            assert!(c.len() <= 3);
            assert!(c.contains(&id));
        }
    }
}
