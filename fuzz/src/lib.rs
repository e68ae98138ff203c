//! Fuzz targets for the inputs a stranger controls, and a small mutation
//! fuzzer that runs them offline on the stable toolchain.
//!
//! # Layout
//!
//! - [`Target`]: the four targets, each a plain `fn(&[u8]) -> Outcome`
//!   that drives the real server code and asserts its invariants (a
//!   failed assertion or any panic is a finding):
//!   - `client_decoder`: a client frame through `protocol::decode_client`
//!     (and `decode_server`); what decodes must re-encode to bytes that
//!     decode to the same encoding.
//!   - `hello_token`: the handshake's authentication: the frame as a
//!     `hello` through `Auth::authenticate` in dev and production mode, the
//!     bytes as a token, and the bytes as a token *payload* signed with
//!     the shard's key, so that claims parsing past the signature check is
//!     reached too.
//!   - `admin_json`: the admin API's body parsers
//!     (`server::http::parse_announce`, `parse_room_fault`,
//!     `parse_session_fault`, `parse_kick`, `parse_ban`), the functions
//!     the handlers call.
//!   - `peer_frame` ([`peer`]): bytes from a peer shard, through the
//!     tunnel's framing and every peer decoder; what decodes must
//!     round-trip, a decoded `tick` must lay out its views.
//! - [`Fuzzer`]: mutations (bit flips, byte sets, inserts, deletes,
//!   duplicates, splices, dictionary tokens) of a corpus; an input whose
//!   [`Outcome`] was not seen before joins the corpus. That outcome signal
//!   stands in for coverage: no instrumentation, no nightly, no C++ runtime.
//! - `corpus/<target>/`: the committed seeds; `tests/corpus.rs` replays
//!   them and runs a short deterministic session of each target.
//!
//! The targets are plain functions so that a coverage-guided engine can
//! drive them too (see the README's "Fuzzing" section).

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use protocol::msg::Hello;
use protocol::{decode_client, decode_server, encode_client, ClientMsg, PROTOCOL_VERSION};
use server::auth::Auth;
use server::config::{AuthConfig, AuthMode};
pub mod peer;

use server::http::{
    parse_announce, parse_ban, parse_kick, parse_room_fault, parse_session_fault, RoomFaultKind,
};

/// The default `server.max_frame_bytes`: what the gateway lets through.
pub const MAX_FRAME: usize = 4 * 1024;
/// The key the `hello_token` target's shard signs with.
pub const TOKEN_KEY: &str = "fuzz-secret-0123456789abcdef";
/// "Now" for token checks, fixed so that runs repeat.
pub const NOW: u64 = 1_700_000_000;
/// The default `limits.chat_max_chars`.
const CHAT_MAX_CHARS: u32 = 200;

/// What one input did, coarsely: inputs with a new outcome are kept.
pub type Outcome = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    ClientDecoder,
    HelloToken,
    AdminJson,
    PeerFrame,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::ClientDecoder,
        Target::HelloToken,
        Target::AdminJson,
        Target::PeerFrame,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::ClientDecoder => "client_decoder",
            Target::HelloToken => "hello_token",
            Target::AdminJson => "admin_json",
            Target::PeerFrame => "peer_frame",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Run the target on one input. Panics on a finding.
    pub fn run(self, data: &[u8]) -> Outcome {
        match self {
            Target::ClientDecoder => client_decoder(data),
            Target::HelloToken => hello_token(data),
            Target::AdminJson => admin_json(data),
            Target::PeerFrame => peer::peer_frame(data),
        }
    }

    /// Byte strings the mutator splices in: the keys and markers the
    /// parsers branch on.
    pub fn dictionary(self) -> &'static [&'static [u8]] {
        match self {
            Target::ClientDecoder | Target::HelloToken => &[
                b"\xa5hello",
                b"\xa4join",
                b"\xa5leave",
                b"\xa4move",
                b"\xa4chat",
                b"\xa4ping",
                b"\xa4give",
                b"\xa7pick_up",
                b"\xa7version",
                b"\xa5major",
                b"\xa5minor",
                b"\xa5token",
                b"\xa6resume",
                b"\xa4name",
                b"\xa3map",
                b"\xa3seq",
                b"\xa2dx",
                b"\xa2dy",
                b"\xa4text",
                b"\xa1t",
                b"\x81",
                b"\x82",
                b"\x83",
                b"\xc0",
                b"\xc2",
                b"\xc3",
                b"\xca\x7f\xc0\x00\x00",
                b"\xcb\x7f\xf8\0\0\0\0\0\0",
                b"\xcc\xff",
                b"\xcd\xff\xff",
                b"\xce\xff\xff\xff\xff",
                b"\xd9\x20",
                b"\xdc\xff\xff",
                b"\xde\xff\xff",
                b"\xdf\xff\xff\xff\xff",
                b"\xc4\x10",
                b"\xd4\x01\x01",
                b".",
                b"eyJzdWIiOiJwIiwibmFtZSI6InAiLCJleHAiOjF9",
            ],
            Target::PeerFrame => &[
                b"\x00\x00\x00\x10",
                b"\xff\xff\xff\xff",
                b"\x00\x00\x10\x01",
                b"\xa5hello",
                b"\xa5proof",
                b"\xa6refuse",
                b"\xa4ping",
                b"\xa4pong",
                b"\xa4open",
                b"\xa6accept",
                b"\xa4tick",
                b"\xa5views",
                b"\xa7entries",
                b"\xa7entered",
                b"\xa5moved",
                b"\xa8sessions",
                b"\xa6inputs",
                b"\xa5batch",
                b"\xa8reliable",
                b"\xa5nonce",
                b"\xc4\x20",
                b"\xc4\x1f",
                b"\x91\xce\xff\xff\xff\xff",
                b"\x81",
                b"\x84",
                b"\xc0",
            ],
            Target::AdminJson => &[
                b"{",
                b"}",
                b"[",
                b"]",
                b"\"",
                b":",
                b",",
                b"\"text\"",
                b"\"map\"",
                b"\"kind\"",
                b"\"ms\"",
                b"\"player\"",
                b"\"panic\"",
                b"\"stall\"",
                b"\"drop\"",
                b"null",
                b"true",
                b"-1",
                b"18446744073709551616",
                b"1e400",
                b"\\u0000",
                b"\\ud800",
                b"30001",
            ],
        }
    }
}

/// A client frame through the decoders; what decodes must round-trip.
pub fn client_decoder(data: &[u8]) -> Outcome {
    let _ = decode_server(data, MAX_FRAME);
    match decode_client(data, MAX_FRAME) {
        Ok(msg) => {
            // Compared as bytes: a NaN field is not equal to itself.
            let encoded = encode_client(&msg);
            let again = decode_client(&encoded, usize::MAX)
                .unwrap_or_else(|e| panic!("{msg:?} re-encoded does not decode: {e}"));
            assert_eq!(
                encode_client(&again),
                encoded,
                "{msg:?} does not round-trip"
            );
            format!("ok:{}", msg.kind())
        }
        Err(err) => format!("err:{}", shape(&err)),
    }
}

/// The kind of failure, not the input that caused it (else every input
/// would be new): the error's variant and the first words of its message,
/// without numbers or quoted values.
fn shape(err: &protocol::DecodeError) -> String {
    let debug = format!("{err:?}");
    let variant = debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string();
    let message = err.to_string();
    // Up to the first quoted value: what follows may be any input.
    let detail = message
        .split_once(": ")
        .map_or("", |(_, d)| d)
        .split(['`', '"', '\''])
        .next()
        .unwrap_or_default();
    let words: Vec<&str> = detail
        .split_whitespace()
        .filter(|w| !w.contains(|c: char| c.is_ascii_digit()))
        .take(4)
        .collect();
    format!("{variant} {}", words.join(" "))
}

fn auth(mode: AuthMode) -> Auth {
    Auth::new(&AuthConfig {
        mode,
        secret: TOKEN_KEY.into(),
        resume_ttl_s: 3_600,
    })
}

/// `payload` signed with [`TOKEN_KEY`], as a token.
pub fn sign(payload: &[u8]) -> String {
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(TOKEN_KEY.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{signature}")
}

/// The handshake's authentication, three ways (see the module docs).
pub fn hello_token(data: &[u8]) -> Outcome {
    let (dev, production) = (auth(AuthMode::Dev), auth(AuthMode::Production));
    let mut outcome = String::new();
    if let Ok(ClientMsg::Hello(hello)) = decode_client(data, MAX_FRAME) {
        for auth in [&dev, &production] {
            outcome.push_str(&auth_outcome(auth, &hello));
        }
    }
    let text = String::from_utf8_lossy(data).into_owned();
    let as_token = Hello {
        version: PROTOCOL_VERSION,
        token: Some(text.clone()),
        resume: None,
        name: None,
    };
    outcome.push_str(&auth_outcome(&production, &as_token));
    let signed = sign(data);
    for hello in [
        Hello {
            token: Some(signed.clone()),
            ..as_token.clone()
        },
        Hello {
            token: None,
            resume: Some(signed),
            ..as_token
        },
    ] {
        outcome.push_str(&auth_outcome(&production, &hello));
    }
    outcome
}

fn auth_outcome(auth: &Auth, hello: &Hello) -> String {
    match auth.authenticate(hello, NOW) {
        Ok((identity, resumed)) => {
            assert!(
                !identity.player_id.is_empty() && identity.player_id.len() <= 128,
                "accepted a player id of {} bytes",
                identity.player_id.len()
            );
            if hello.token.is_some() && hello.resume.is_none() {
                assert!(resumed.is_none(), "a session token resumed a seat");
            }
            if resumed.is_some() {
                "resume;".into()
            } else {
                "ok;".into()
            }
        }
        Err(err) => format!("{:?};", err.code()),
    }
}

/// The admin API's body parsers, with the checks the handlers rely on.
pub fn admin_json(data: &[u8]) -> Outcome {
    let announce = match parse_announce(data, CHAT_MAX_CHARS) {
        Ok(request) => {
            let chars = request.text.chars().count();
            assert!(
                (1..=CHAT_MAX_CHARS as usize * 4).contains(&chars),
                "an announce of {chars} characters was accepted"
            );
            "ok"
        }
        Err(_) => "err",
    };
    let room = match parse_room_fault(data) {
        Ok(request) => {
            if let (RoomFaultKind::Stall, Some(ms)) = (&request.kind, request.ms) {
                assert!(ms <= 30_000, "a stall of {ms} ms was accepted");
            }
            "ok"
        }
        Err(_) => "err",
    };
    let session = if parse_session_fault(data).is_ok() {
        "ok"
    } else {
        "err"
    };
    let kick = match parse_kick(data, REASON_MAX_CHARS) {
        Ok(request) => {
            let chars = request.reason.map_or(0, |r| r.chars().count());
            assert!(
                chars <= REASON_MAX_CHARS,
                "a kick reason of {chars} characters was accepted"
            );
            "ok"
        }
        Err(_) => "err",
    };
    let ban = match parse_ban(data, REASON_MAX_CHARS) {
        Ok(request) => {
            let chars = request.reason.chars().count();
            assert!(
                (1..=REASON_MAX_CHARS).contains(&chars) && !request.reason.trim().is_empty(),
                "a ban reason of {chars} characters was accepted"
            );
            assert_ne!(request.duration_s, Some(0), "a ban of 0 s was accepted");
            "ok"
        }
        Err(_) => "err",
    };
    format!("announce:{announce} room:{room} session:{session} kick:{kick} ban:{ban}")
}

/// The default `admin.ban_reason_max_chars`.
const REASON_MAX_CHARS: usize = 200;

/// A small, fast, deterministic random source (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A finding: the input and what the panic said.
#[derive(Debug, Clone)]
pub struct Crash {
    pub input: Vec<u8>,
    pub message: String,
}

/// Run `target` on `input`, catching a panic as a [`Crash`].
pub fn check(target: Target, input: &[u8]) -> Result<Outcome, Crash> {
    catch_unwind(AssertUnwindSafe(|| target.run(input))).map_err(|payload| Crash {
        input: input.to_vec(),
        message: payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-text payload".into()),
    })
}

/// A mutation fuzzer over one target's corpus.
pub struct Fuzzer {
    target: Target,
    rng: Rng,
    corpus: Vec<Vec<u8>>,
    seen: HashSet<Outcome>,
    /// Inputs that found a new outcome (to save with `--save`).
    pub found: Vec<Vec<u8>>,
    pub runs: u64,
}

/// Inputs kept at most, so a long run's memory stays bounded.
const MAX_CORPUS: usize = 10_000;

/// Inputs grow up to this; the gateway refuses larger frames anyway.
const MAX_INPUT: usize = MAX_FRAME + 64;

impl Fuzzer {
    /// Seeds run first; a finding among them is returned at once.
    pub fn new(target: Target, seeds: Vec<Vec<u8>>, seed: u64) -> Result<Fuzzer, Crash> {
        let mut fuzzer = Fuzzer {
            target,
            rng: Rng::new(seed),
            corpus: Vec::new(),
            seen: HashSet::new(),
            found: Vec::new(),
            runs: 0,
        };
        for input in seeds.into_iter().chain([Vec::new()]) {
            let outcome = check(target, &input)?;
            fuzzer.runs += 1;
            fuzzer.seen.insert(outcome);
            fuzzer.corpus.push(input);
        }
        Ok(fuzzer)
    }

    /// One mutated input through the target.
    pub fn step(&mut self) -> Result<(), Crash> {
        let input = self.mutate();
        let outcome = check(self.target, &input)?;
        self.runs += 1;
        if self.seen.insert(outcome) && self.corpus.len() < MAX_CORPUS {
            self.found.push(input.clone());
            self.corpus.push(input);
        }
        Ok(())
    }

    pub fn corpus_len(&self) -> usize {
        self.corpus.len()
    }

    pub fn outcomes(&self) -> usize {
        self.seen.len()
    }

    fn mutate(&mut self) -> Vec<u8> {
        let mut data = self.corpus[self.rng.below(self.corpus.len())].clone();
        let rounds = 1 + self.rng.below(4);
        for _ in 0..rounds {
            self.mutate_once(&mut data);
        }
        data.truncate(MAX_INPUT);
        data
    }

    fn mutate_once(&mut self, data: &mut Vec<u8>) {
        let rng = &mut self.rng;
        match rng.below(8) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [
                    0x00,
                    0x01,
                    0x7f,
                    0x80,
                    0xc0,
                    0xc1,
                    0xff,
                    rng.next_u64() as u8,
                ][rng.below(8)];
            }
            2 => {
                let i = rng.below(data.len() + 1);
                data.insert(i, rng.next_u64() as u8);
            }
            3 if !data.is_empty() => {
                let i = rng.below(data.len());
                let n = 1 + rng.below((data.len() - i).min(16));
                data.drain(i..i + n);
            }
            4 if !data.is_empty() => {
                let i = rng.below(data.len());
                let n = 1 + rng.below((data.len() - i).min(32));
                let copy = data[i..i + n].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, copy);
            }
            5 => {
                let other = &self.corpus[rng.below(self.corpus.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - i);
                    let at = rng.below(data.len() + 1);
                    data.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            6 => {
                let dict = self.target.dictionary();
                let token = dict[rng.below(dict.len())];
                let at = rng.below(data.len() + 1);
                data.splice(at..at, token.iter().copied());
            }
            _ => {
                let at = rng.below(data.len() + 1);
                data.truncate(at);
            }
        }
    }
}
