//! The error frame.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, NoticeCode};

/// An error in answer to a client message. The session stays open unless a
/// close frame follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// A stable numeric code; see [`ErrorCode`]. Kept as a number on the wire
    /// so that a client can read codes newer than itself.
    pub code: u16,
    /// A human-readable explanation, for logs; not for branching on.
    pub text: String,
    /// The `req` of the `give` or `pick_up` this error answers (since 1.3;
    /// absent on errors that answer no numbered request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<u32>,
}

impl ErrorMsg {
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        ErrorMsg {
            code: code.as_u16(),
            text: text.into(),
            req: None,
        }
    }

    /// An error answering the request numbered `req`.
    pub fn answering(req: u32, code: ErrorCode, text: impl Into<String>) -> Self {
        ErrorMsg {
            req: Some(req),
            ..ErrorMsg::new(code, text)
        }
    }

    /// The code, if this version knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

/// Something the server did that the client should know of (since 1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// A stable numeric code; see [`NoticeCode`].
    pub code: u16,
    pub text: String,
}

impl Notice {
    pub fn new(code: NoticeCode, text: impl Into<String>) -> Self {
        Notice {
            code: code.as_u16(),
            text: text.into(),
        }
    }

    pub fn notice_code(&self) -> Option<NoticeCode> {
        NoticeCode::from_u16(self.code)
    }
}
