//! Ids of events and runs: time-ordered hex strings, typed where they
//! cross modules so a run id cannot be passed where an event id is meant.

use chrono::Utc;
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh id ([`new_id`]).
            pub fn new() -> $name {
                $name(new_id())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> $name {
                $name::new()
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name(s.to_string())
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

id_type!(
    /// One run of one recipe for one event.
    RunId
);
id_type!(
    /// One accepted event.
    EventId
);

/// A new unique id: milliseconds since the epoch, then 48 random bits.
/// Time first, so rows written together sort together and inserts append
/// to the same index pages of the store instead of dirtying random ones.
pub fn new_id() -> String {
    let mut id = id_prefix(Utc::now().timestamp_millis());
    push_hex48(&mut id, rand::random::<u64>());
    id
}

/// The first half of the ids made at `ms`: every id made earlier sorts
/// below it.
pub fn id_prefix(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    push_hex48(&mut s, ms as u64);
    s
}

/// Appends the low 48 bits as 12 lower-case hex digits (`format!` with
/// padding was ~2,000 instructions an id, and every event makes several).
fn push_hex48(s: &mut String, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..12).rev() {
        s.push(HEX[((v >> (shift * 4)) & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_24_hex_digits_with_the_millisecond_first() {
        assert_eq!(id_prefix(0xab_cdef_0123), "00abcdef0123");
        let id = new_id();
        assert_eq!(id.len(), 24);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let now = Utc::now().timestamp_millis();
        assert!(id[..12] <= *id_prefix(now));
        assert!(*id_prefix(now - 1) < *id_prefix(now), "earlier sorts first");
    }
}
