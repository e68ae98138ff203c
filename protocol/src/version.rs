//! Protocol version and the compatibility rule.
//!
//! A client states `major.minor` in its hello. The server accepts any minor of
//! its own major: minors only append (new optional fields, new message
//! variants at the end), so an older or newer minor still decodes. A different
//! major is refused with [`crate::ErrorCode::VersionMismatch`] and closed with
//! [`crate::CloseCode::VersionMismatch`].

use serde::{Deserialize, Serialize};

/// The version this crate speaks. 1.1 added `notice`, `give`, `done`,
/// `inventory`, `welcome.last_map` and error codes 2004, 3005-3007, 5003,
/// 5004. 1.2 added ground items (`joined.items`, `items`), `pick_up` and
/// error codes 3008, 3009. 1.3 added `error.req`, error code 2005 and close
/// code 4006 (a newer login replaced the session). 1.4 added
/// `joined.instance` (which instance of a map the player stands in).
pub const PROTOCOL_VERSION: Version = Version { major: 1, minor: 6 };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

impl Version {
    /// Whether a server speaking `self` accepts a client speaking `client`.
    pub fn accepts(self, client: Version) -> bool {
        self.major == client.major
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_any_minor_is_accepted() {
        let server = Version { major: 1, minor: 3 };
        assert!(server.accepts(Version { major: 1, minor: 0 }));
        assert!(server.accepts(Version { major: 1, minor: 9 }));
        assert!(!server.accepts(Version { major: 2, minor: 0 }));
        assert!(!server.accepts(Version { major: 0, minor: 3 }));
    }
}
