//! The Tessera wire contract.
//!
//! # Layout
//!
//! - [`msg`]: every message a client or a server may send, one file per
//!   message family behind the two dispatch enums [`ClientMsg`] and
//!   [`ServerMsg`].
//! - [`codec`]: MessagePack encoding and decoding (one message per WebSocket
//!   binary frame), with the size limit checked before any parsing.
//! - [`version`]: the protocol version carried in the hello and the rule for
//!   accepting it.
//! - [`codes`]: stable numeric error codes and WebSocket close codes.
//! - [`limits`]: the limits a server announces in its welcome.
//! - [`peer`]: the tunnel between two shards of a cluster (framing,
//!   handshake and proof, stream heads, room stream messages); `PEER.md`
//!   is its contract. Not a client protocol.
//! - [`admin`]: the JSON bodies of the shard's HTTP API (`/healthz`,
//!   `/admin/*`), shared by the server and `tessera-ops`; not game frames.
//! - [`JS_CLIENT`]: `js/tessera.js`, the browser client, as text for a
//!   server to serve.
//!
//! A frame travels: client encodes a [`ClientMsg`] with [`codec::encode_client`]
//! -> one binary WebSocket frame -> the server decodes it with
//! [`codec::decode_client`], checks it against the session state and answers
//! with [`ServerMsg`] frames, or an [`msg::ErrorMsg`] carrying an
//! [`codes::ErrorCode`].
//!
//! This crate does no I/O: everything here is a plain function over bytes, so
//! it is tested in memory (golden vectors, round trips, random input).
//! `PROTOCOL.md` beside this crate is the human-readable contract and
//! `js/tessera.js` the browser client that speaks it.

pub mod admin;
pub mod assemble;
pub mod codec;
pub mod codes;
pub mod limits;
pub mod msg;
pub mod peer;
pub mod version;

pub use codec::{decode_client, decode_server, encode_client, encode_server, DecodeError};
pub use codes::{CloseCode, ErrorCode, NoticeCode};
pub use limits::Limits;
pub use msg::{ClientMsg, ServerMsg};
pub use version::{Version, PROTOCOL_VERSION};

/// The browser client module (`js/tessera.js`), for a server to serve as
/// `text/javascript`: it speaks this crate's wire format, so it ships with
/// it.
pub const JS_CLIENT: &str = include_str!("../js/tessera.js");
