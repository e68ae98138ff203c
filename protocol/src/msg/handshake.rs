//! `hello` (client) and `welcome` (server): the first exchange of a session.

use serde::{Deserialize, Serialize};

use crate::{Limits, Version};

/// The first message of every session. Anything else first is
/// [`crate::ErrorCode::IllegalState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: Version,
    /// A signed session token (`tessera-server token` mints one). Required
    /// when the server runs in production mode; in dev mode a hello without
    /// one gets a guest identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The resume token of an earlier session of this player.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// The display name a guest asks for (ignored when a token names one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server's protocol version.
    pub version: Version,
    pub player_id: String,
    pub name: String,
    pub session_id: String,
    /// Present this in a later hello's `resume` to be recognised as the same
    /// player.
    pub resume_token: String,
    /// The default room tick rate (a map may run its own; see `joined`).
    pub tick_hz: u32,
    pub limits: Limits,
    /// The maps a client may join.
    pub maps: Vec<String>,
    /// The map the player was last in (since 1.1); joining it puts the
    /// player back where it stood.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_map: Option<String>,
}
