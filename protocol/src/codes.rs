//! Stable numeric codes: error frames and WebSocket close codes.
//!
//! Codes are part of the wire contract: a code is never reused for another
//! meaning, and new codes are only added. `PROTOCOL.md` carries the same table.

/// The code carried by an `error` frame.
///
/// Ranges: 1xxx the frame or the protocol, 2xxx authentication, 3xxx game
/// rules, 5xxx the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame is not a valid MessagePack message of this protocol.
    Malformed = 1001,
    /// A text frame was sent; the protocol is binary MessagePack only.
    TextFrame = 1002,
    /// The message is not legal in the session's current state (a move
    /// before joining, a second hello, ...).
    IllegalState = 1003,
    /// The message class went over its rate limit; the message was dropped.
    RateLimited = 1004,
    /// The hello's major version differs from the server's.
    VersionMismatch = 1005,
    /// The frame is larger than the server's `max_frame_bytes`.
    FrameTooLarge = 1006,
    /// The server requires a token and the hello had none.
    AuthRequired = 2001,
    /// The token's signature or format is wrong.
    AuthInvalid = 2002,
    /// The token has expired.
    AuthExpired = 2003,
    /// The resume token was already used, or names no session this server
    /// knows of.
    ResumeRejected = 2004,
    /// A newer login of the same player took this session's place (since
    /// 1.3): one player, one session, one entity. Close 4006 follows.
    SessionReplaced = 2005,
    Kicked = 2006,
    Banned = 2007,
    /// No map of that name exists.
    UnknownMap = 3001,
    /// A field is out of range: a non-finite direction, a chat text that is
    /// empty or too long, ...
    InvalidInput = 3002,
    /// The room is at its player cap.
    RoomFull = 3003,
    /// The room could not be reached in time; try again.
    RoomUnavailable = 3004,
    /// The room crashed more often than its restart limit allows; the player
    /// was moved to the fallback map (a `left` and a `joined` follow).
    RoomFailed = 3005,
    /// A `give` asked for more than the player has; nothing changed.
    Insufficient = 3006,
    /// A `give` named an entity that is not a player in the same map.
    NoSuchTarget = 3007,
    /// A `pick_up` named no item on the ground: there never was one, or
    /// someone took it already (or is taking it).
    ItemGone = 3008,
    /// A `pick_up` of an item farther than the pick-up radius.
    OutOfReach = 3009,
    /// Cluster mode with a store per shard (embedded): a `give` to a player
    /// whose socket is on another shard, whose profile is in that shard's
    /// store. It cannot be one store transaction, so it is refused and
    /// nothing changed (since 1.5). A cluster sharing one MongoDB does not
    /// send it.
    TargetElsewhere = 3010,
    /// Something went wrong inside the server; the session is unaffected.
    Internal = 5001,
    /// The server is at its connection cap or shutting down.
    ServerBusy = 5002,
    /// The store is down or did not answer: the durable action was not
    /// applied. Retry later.
    StoreUnavailable = 5003,
    /// The store did not answer in time after the action was sent: it may or
    /// may not have been applied. Retry with the same `req`; it is never
    /// applied twice.
    InDoubt = 5004,
    /// Cluster mode: the cluster directory (Redis) did not answer within
    /// the server's wait; the action (placing a room, a login that must
    /// check where the player is) was not done. Retry after a moment.
    DirectoryUnavailable = 5005,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::Malformed,
        ErrorCode::TextFrame,
        ErrorCode::IllegalState,
        ErrorCode::RateLimited,
        ErrorCode::VersionMismatch,
        ErrorCode::FrameTooLarge,
        ErrorCode::AuthRequired,
        ErrorCode::AuthInvalid,
        ErrorCode::AuthExpired,
        ErrorCode::ResumeRejected,
        ErrorCode::SessionReplaced,
        ErrorCode::Kicked,
        ErrorCode::Banned,
        ErrorCode::UnknownMap,
        ErrorCode::InvalidInput,
        ErrorCode::RoomFull,
        ErrorCode::RoomUnavailable,
        ErrorCode::RoomFailed,
        ErrorCode::Insufficient,
        ErrorCode::NoSuchTarget,
        ErrorCode::ItemGone,
        ErrorCode::OutOfReach,
        ErrorCode::TargetElsewhere,
        ErrorCode::Internal,
        ErrorCode::ServerBusy,
        ErrorCode::StoreUnavailable,
        ErrorCode::InDoubt,
        ErrorCode::DirectoryUnavailable,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number, or `None` for a code this version does not know
    /// (a newer server may send codes an older client has never seen).
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_u16() == code)
    }

    /// A short stable name, used in logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::TextFrame => "text_frame",
            ErrorCode::IllegalState => "illegal_state",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthInvalid => "auth_invalid",
            ErrorCode::AuthExpired => "auth_expired",
            ErrorCode::ResumeRejected => "resume_rejected",
            ErrorCode::SessionReplaced => "session_replaced",
            ErrorCode::Kicked => "kicked",
            ErrorCode::Banned => "banned",
            ErrorCode::UnknownMap => "unknown_map",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::RoomUnavailable => "room_unavailable",
            ErrorCode::RoomFailed => "room_failed",
            ErrorCode::Insufficient => "insufficient",
            ErrorCode::NoSuchTarget => "no_such_target",
            ErrorCode::ItemGone => "item_gone",
            ErrorCode::OutOfReach => "out_of_reach",
            ErrorCode::TargetElsewhere => "target_elsewhere",
            ErrorCode::Internal => "internal",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::InDoubt => "in_doubt",
            ErrorCode::DirectoryUnavailable => "directory_unavailable",
        }
    }
}

/// The code carried by a `notice` frame: something happened that the
/// client did not cause and may want to show or log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum NoticeCode {
    /// The room restarted after a crash; a full update with the restored
    /// state came just before this notice.
    RoomRestarted = 6001,
    /// A resumed session got its seat back; `joined` came just before.
    SeatRestored = 6002,
    /// Cluster mode: the room's owner shard went away and the room runs
    /// on another shard now (restored from the store and what this shard
    /// knew); `joined` (the entity id may be new) came just before, a full
    /// update follows.
    RoomMoved = 6003,
    /// The shard holding this socket is draining (a rolling deploy): the
    /// socket is closed with 4008 right after; reconnect and resume at
    /// once, through the same URL (since 1.4).
    ShardDraining = 6004,
}

impl NoticeCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(code: u16) -> Option<NoticeCode> {
        [
            NoticeCode::RoomRestarted,
            NoticeCode::SeatRestored,
            NoticeCode::RoomMoved,
            NoticeCode::ShardDraining,
        ]
        .into_iter()
        .find(|c| c.as_u16() == code)
    }
}

/// WebSocket close codes the server uses. 1xxx are RFC 6455 codes, 4xxx are
/// Tessera's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// The client said goodbye, or the session ended normally.
    Normal = 1000,
    /// The server is shutting down; reconnect elsewhere or later.
    GoingAway = 1001,
    /// Repeated protocol abuse (rate-limit or malformed-frame strikes).
    PolicyViolation = 1008,
    /// A frame over `max_frame_bytes`.
    MessageTooBig = 1009,
    /// An internal error ended the session.
    InternalError = 1011,
    /// The server is at its connection cap; try again later.
    TryAgainLater = 1013,
    /// No hello arrived within the handshake timeout.
    HandshakeTimeout = 4001,
    /// The hello's major version differs from the server's.
    VersionMismatch = 4002,
    /// The token was missing, invalid or expired.
    AuthFailed = 4003,
    /// Nothing was received within the idle timeout.
    IdleTimeout = 4004,
    /// The client read too slowly: reliable messages overflowed its
    /// outbound byte budget.
    SlowConsumer = 4005,
    /// A newer login of the same player replaced this session (since 1.3).
    Replaced = 4006,
    /// An operator removed the player: kicked (error 2006) or banned
    /// (error 2007).
    Removed = 4007,
    /// The shard is draining (notice 6004 came just before): reconnect at
    /// once through the same URL and resume; another shard takes over.
    Draining = 4008,
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(code: u16) -> Option<CloseCode> {
        [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::PolicyViolation,
            CloseCode::MessageTooBig,
            CloseCode::InternalError,
            CloseCode::TryAgainLater,
            CloseCode::HandshakeTimeout,
            CloseCode::VersionMismatch,
            CloseCode::AuthFailed,
            CloseCode::IdleTimeout,
            CloseCode::SlowConsumer,
            CloseCode::Replaced,
            CloseCode::Removed,
            CloseCode::Draining,
        ]
        .into_iter()
        .find(|c| c.as_u16() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_u16()), "duplicate code {code:?}");
            assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(9999), None);
    }

    #[test]
    fn close_codes_round_trip() {
        assert_eq!(CloseCode::from_u16(4004), Some(CloseCode::IdleTimeout));
        assert_eq!(CloseCode::from_u16(4008), Some(CloseCode::Draining));
        assert_eq!(NoticeCode::from_u16(6004), Some(NoticeCode::ShardDraining));
        assert_eq!(CloseCode::from_u16(4999), None);
    }
}
