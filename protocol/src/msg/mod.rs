//! Every message of the protocol.
//!
//! On the wire a message is a MessagePack map with exactly one entry: the
//! message's type name (a string) mapped to its body (a map of named fields),
//! for example `{"ping": {"t": 7}}`. Bodies are maps so that a minor version
//! can add optional fields without breaking older peers; the hot per-entity
//! lists inside `update` are compact arrays (see [`room::Moved`]).
//!
//! One file per message family; adding a message is a new body struct there
//! and one new variant at the *end* of [`ClientMsg`] or [`ServerMsg`].

pub mod chat;
pub mod error;
pub mod handshake;
pub mod inventory;
pub mod items;
pub mod ping;
pub mod room;

pub use chat::{Announce, Chat, ChatSend};
pub use error::{ErrorMsg, Notice};
pub use handshake::{Hello, Welcome};
pub use inventory::{Done, Give, Inventory};
pub use items::{GroundItem, ItemId, Items, PickUp};
pub use ping::{Ping, Pong};
pub use room::{
    Entity, EntityId, Join, Joined, Leave, Left, MapInfo, Move, Moved, Update, FIRST_INSTANCE,
};

use serde::{Deserialize, Serialize};

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMsg {
    Hello(Hello),
    Join(Join),
    Leave(Leave),
    Move(Move),
    Chat(ChatSend),
    Ping(Ping),
    /// Since 1.1.
    Give(Give),
    /// Since 1.2.
    PickUp(PickUp),
}

impl ClientMsg {
    /// The wire name of the message type, for logs and error texts.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Hello(_) => "hello",
            ClientMsg::Join(_) => "join",
            ClientMsg::Leave(_) => "leave",
            ClientMsg::Move(_) => "move",
            ClientMsg::Chat(_) => "chat",
            ClientMsg::Ping(_) => "ping",
            ClientMsg::Give(_) => "give",
            ClientMsg::PickUp(_) => "pick_up",
        }
    }
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome(Welcome),
    Joined(Joined),
    Left(Left),
    Update(Update),
    Chat(Chat),
    Announce(Announce),
    Pong(Pong),
    Error(ErrorMsg),
    /// Since 1.1.
    Notice(Notice),
    /// Since 1.1.
    Done(Done),
    /// Since 1.1: the player's inventory, after `welcome` and whenever
    /// someone else changed it.
    Inventory(Inventory),
    /// Since 1.2: ground items appeared or went.
    Items(Items),
}

impl ServerMsg {
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::Welcome(_) => "welcome",
            ServerMsg::Joined(_) => "joined",
            ServerMsg::Left(_) => "left",
            ServerMsg::Update(_) => "update",
            ServerMsg::Chat(_) => "chat",
            ServerMsg::Announce(_) => "announce",
            ServerMsg::Pong(_) => "pong",
            ServerMsg::Error(_) => "error",
            ServerMsg::Notice(_) => "notice",
            ServerMsg::Done(_) => "done",
            ServerMsg::Inventory(_) => "inventory",
            ServerMsg::Items(_) => "items",
        }
    }
}
