//! Room chat and server announcements.

use serde::{Deserialize, Serialize};

use super::EntityId;

/// A chat line to everyone in the sender's room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSend {
    pub text: String,
}

/// A chat line as delivered to the members of a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    pub from: EntityId,
    pub name: String,
    pub text: String,
}

/// A message from the server's operators (or the server itself, on
/// shutdown) to every connected client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announce {
    pub text: String,
}
