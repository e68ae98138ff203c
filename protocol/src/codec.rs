//! MessagePack encoding and decoding: one message per WebSocket binary frame.
//!
//! Decoding never panics: every failure is a [`DecodeError`] that the server
//! turns into an error frame with [`ErrorCode::Malformed`] (or
//! [`ErrorCode::FrameTooLarge`]). The size limit is checked before any byte is
//! parsed, and rmp-serde's nesting depth limit bounds recursion.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::{ClientMsg, ErrorCode, ServerMsg};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame ends in the middle of a message")]
    Truncated,
    #[error("wrong type: {0}")]
    WrongType(String),
    #[error("unknown message or field value: {0}")]
    UnknownVariant(String),
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// The error code a server answers this failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::Empty
            | DecodeError::Truncated
            | DecodeError::WrongType(_)
            | DecodeError::UnknownVariant(_)
            | DecodeError::Invalid(_)
            | DecodeError::TrailingBytes(_) => ErrorCode::Malformed,
        }
    }
}

impl From<rmp_serde::decode::Error> for DecodeError {
    fn from(err: rmp_serde::decode::Error) -> Self {
        use rmp_serde::decode::Error as E;
        match err {
            E::InvalidMarkerRead(e) | E::InvalidDataRead(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                DecodeError::Truncated
            }
            E::TypeMismatch(marker) => DecodeError::WrongType(format!("unexpected {marker:?}")),
            E::Syntax(msg) | E::Uncategorized(msg) => classify_serde_message(msg),
            other => DecodeError::Invalid(other.to_string()),
        }
    }
}

/// serde reports its own failures as text; sort them into our variants.
fn classify_serde_message(msg: String) -> DecodeError {
    if msg.starts_with("unknown variant")
        || (msg.starts_with("invalid value") && msg.contains("variant index"))
    {
        DecodeError::UnknownVariant(msg)
    } else if msg.starts_with("invalid type") || msg.starts_with("invalid length") {
        DecodeError::WrongType(msg)
    } else {
        DecodeError::Invalid(msg)
    }
}

pub(crate) fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Encoding our own message types into a Vec cannot fail: every type is a
    // plain struct or enum of strings, numbers and sequences, and writing to
    // a Vec never errors.
    rmp_serde::to_vec_named(msg).expect("protocol messages always encode")
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let mut cursor = std::io::Cursor::new(bytes);
    let msg = T::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor))?;
    let rest = bytes.len() - cursor.position() as usize;
    if rest != 0 {
        return Err(DecodeError::TrailingBytes(rest));
    }
    Ok(msg)
}

/// [`decode`], reading strings and byte strings where they lie instead of
/// copying each through the reader's buffer: a peer's tick is mostly one
/// byte string (its entries), and copying it was a good part of decoding
/// it (a profile of the hop, BENCHMARKS.md). Whatever does not decode
/// cleanly, trailing bytes included, is decoded again by [`decode`], so
/// the errors are exactly its errors.
pub(crate) fn decode_in_place<T: DeserializeOwned>(
    bytes: &[u8],
    max_len: usize,
) -> Result<T, DecodeError> {
    if bytes.is_empty() || bytes.len() > max_len {
        return decode(bytes, max_len);
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    let Ok(msg) = T::deserialize(&mut de) else {
        return decode(bytes, max_len);
    };
    // Nothing may follow the message: reading on must find the end.
    match <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Ok(msg)
        }
        _ => decode(bytes, max_len),
    }
}

pub fn encode_client(msg: &ClientMsg) -> Vec<u8> {
    encode(msg)
}

pub fn encode_server(msg: &ServerMsg) -> Vec<u8> {
    encode(msg)
}

/// Decode a client frame of at most `max_len` bytes.
pub fn decode_client(bytes: &[u8], max_len: usize) -> Result<ClientMsg, DecodeError> {
    decode(bytes, max_len)
}

/// Decode a server frame of at most `max_len` bytes.
pub fn decode_server(bytes: &[u8], max_len: usize) -> Result<ServerMsg, DecodeError> {
    decode(bytes, max_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::*;

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let frame = encode_client(&ClientMsg::Ping(Ping { t: 1 }));
        assert_eq!(
            decode_client(&frame, 3),
            Err(DecodeError::TooLarge {
                len: frame.len(),
                max: 3
            })
        );
        assert_eq!(DecodeError::Empty.code(), ErrorCode::Malformed);
    }
}
