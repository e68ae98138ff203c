//! The handshake on a fresh connection's control stream, both roles, and
//! the framed reads and writes every stream head uses.
//!
//! The dialer opens the control stream and says `hello`; the listener
//! checks version, cluster and shard id and answers `hello`; the dialer
//! sends its `proof`; the listener checks it and, once the hub admitted
//! the connection (one per pair of shards), sends its own `proof`, which
//! the dialer checks. Anything wrong is a `refuse`, and the connection is
//! closed with the refusal's code and reason (so the reason arrives even
//! when the `refuse` frame does not).

use protocol::peer::{
    decode_payload, encode_frame, frame_len, proof_mac, verify_proof, Bytes32, Control, PeerHello,
    PeerMessage, Proof, Refuse, RefuseCode, Role, EXPORTER_LABEL, LEN_PREFIX, PEER_VERSION,
};
use quinn::{
    Connection, ConnectionError, ReadError, ReadExactError, RecvStream, SendStream, VarInt,
};

use super::settings::TunnelSettings;

/// A handshake that did not end in a connection.
#[derive(Debug)]
pub(super) enum Failed {
    /// Refused, by this side (`by_us`) or the peer, with a code and
    /// reason. `peer` is the id the peer claimed or was dialled as.
    Refused {
        by_us: bool,
        peer: Option<String>,
        code: u16,
        reason: String,
    },
    /// The network, a timeout, a peer that vanished.
    Io(String),
}

/// The control stream of an established connection, and the peer's hello.
pub(super) struct ControlStream {
    pub send: SendStream,
    pub recv: RecvStream,
    pub peer: PeerHello,
}

/// Why a framed read failed.
#[derive(Debug)]
pub(super) enum ReadFailure {
    /// The stream ended before a frame.
    Finished,
    /// The connection closed; with the application's code and reason when
    /// the peer closed it.
    Closed(Option<(u16, String)>, String),
    /// Not a frame of the expected kind, or over the size limit.
    Bad(String),
    /// The stream was reset with this code.
    Reset(u32),
}

/// Read one whole frame of type `T`.
pub(super) async fn read_msg<T: PeerMessage>(
    recv: &mut RecvStream,
    max_frame: u32,
) -> Result<T, ReadFailure> {
    read_sized(recv, max_frame).await.map(|(msg, _)| msg)
}

/// Read one whole frame of type `T`, and its size with the prefix.
pub(super) async fn read_sized<T: PeerMessage>(
    recv: &mut RecvStream,
    max_frame: u32,
) -> Result<(T, usize), ReadFailure> {
    let mut header = [0u8; LEN_PREFIX];
    recv.read_exact(&mut header).await.map_err(read_failure)?;
    // The length is checked before anything is allocated for it.
    let len = frame_len(header, max_frame).map_err(|e| ReadFailure::Bad(e.to_string()))?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(read_failure)?;
    let msg = decode_payload(&payload, max_frame).map_err(|e| ReadFailure::Bad(e.to_string()))?;
    Ok((msg, LEN_PREFIX + len))
}

fn read_failure(err: ReadExactError) -> ReadFailure {
    match err {
        ReadExactError::FinishedEarly(0) => ReadFailure::Finished,
        ReadExactError::FinishedEarly(n) => {
            ReadFailure::Bad(format!("stream ended inside a frame ({n} bytes of it)"))
        }
        ReadExactError::ReadError(ReadError::Reset(code)) => {
            ReadFailure::Reset(code.into_inner() as u32)
        }
        ReadExactError::ReadError(ReadError::ConnectionLost(e)) => {
            ReadFailure::Closed(application_close(&e), e.to_string())
        }
        ReadExactError::ReadError(e) => ReadFailure::Closed(None, e.to_string()),
    }
}

/// The code and reason of a close by the peer's application.
pub(super) fn application_close(err: &ConnectionError) -> Option<(u16, String)> {
    match err {
        ConnectionError::ApplicationClosed(close) => Some((
            u16::try_from(close.error_code.into_inner()).unwrap_or(u16::MAX),
            String::from_utf8_lossy(&close.reason).into_owned(),
        )),
        _ => None,
    }
}

/// Write one frame of type `T`; `Err` is the I/O failure's text.
pub(super) async fn write_msg<T: PeerMessage>(
    send: &mut SendStream,
    msg: &T,
    max_frame: u32,
) -> Result<usize, String> {
    let frame = encode_frame(msg, max_frame).map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    Ok(frame.len())
}

/// Refuse the connection: a `refuse` frame (best effort), then close the
/// connection with the same code and reason.
pub(super) async fn refuse(
    conn: &Connection,
    send: Option<&mut SendStream>,
    code: RefuseCode,
    reason: &str,
    max_frame: u32,
) {
    if let Some(send) = send {
        let msg = Control::Refuse(Refuse::new(code, reason));
        let _ = write_msg(send, &msg, max_frame).await;
        let _ = send.finish();
    }
    conn.close(VarInt::from(code.as_u16()), reason.as_bytes());
}

fn nonce() -> Bytes32 {
    let mut n = [0u8; 32];
    rand::fill(&mut n);
    Bytes32(n)
}

fn our_hello(settings: &TunnelSettings) -> PeerHello {
    PeerHello {
        cluster: settings.cluster.clone(),
        shard_id: settings.shard_id.clone(),
        version: PEER_VERSION,
        nonce: nonce(),
    }
}

/// This connection's exporter keying material: both ends derive the same
/// 32 bytes, nobody else can.
fn exporter(conn: &Connection) -> Result<[u8; 32], Failed> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| Failed::Io("TLS exporter unavailable".into()))?;
    Ok(out)
}

/// Why a hello is not acceptable, if it is not.
fn check_hello(settings: &TunnelSettings, theirs: &PeerHello) -> Option<(RefuseCode, String)> {
    if !PEER_VERSION.accepts(theirs.version) {
        return Some((
            RefuseCode::Version,
            format!(
                "peer speaks tunnel {}, this shard {} (majors differ)",
                theirs.version, PEER_VERSION
            ),
        ));
    }
    if theirs.cluster != settings.cluster {
        return Some((
            RefuseCode::Cluster,
            format!(
                "peer is in cluster {:?}, this shard in {:?}",
                theirs.cluster, settings.cluster
            ),
        ));
    }
    if theirs.shard_id.is_empty() || theirs.shard_id == settings.shard_id {
        return Some((
            RefuseCode::WrongShard,
            format!(
                "peer claims shard id {:?}, which is this shard's or empty",
                theirs.shard_id
            ),
        ));
    }
    None
}

/// What a peer's failure to say the next expected thing means. A frame
/// that is not one (too large, undecodable) is refused `malformed`.
async fn unexpected(
    conn: &Connection,
    send: &mut SendStream,
    peer: Option<String>,
    failure: ReadFailure,
    max: u32,
) -> Failed {
    match failure {
        ReadFailure::Closed(Some((code, reason)), _) if code != 0 => Failed::Refused {
            by_us: false,
            peer,
            code,
            reason,
        },
        ReadFailure::Closed(_, text) => Failed::Io(text),
        ReadFailure::Finished => Failed::Io("peer ended the control stream".into()),
        ReadFailure::Reset(code) => Failed::Io(format!("control stream reset ({code})")),
        ReadFailure::Bad(text) => {
            let reason = format!("bad frame in the handshake: {text}");
            refuse_peer(conn, send, peer, RefuseCode::Malformed, reason, max).await
        }
    }
}

/// The dialer's side, up to and including the check of the listener's
/// proof. `expected` is the shard id dialled.
pub(super) async fn dial(
    settings: &TunnelSettings,
    conn: &Connection,
    expected: &str,
) -> Result<ControlStream, Failed> {
    let max = settings.max_frame;
    let peer = Some(expected.to_string());
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Failed::Io(e.to_string()))?;
    let ours = our_hello(settings);
    write_msg(&mut send, &Control::Hello(ours.clone()), max)
        .await
        .map_err(Failed::Io)?;
    let theirs = match read_msg::<Control>(&mut recv, max).await {
        Ok(Control::Hello(h)) => h,
        Ok(Control::Refuse(r)) => return Err(refused_by_them(peer, r)),
        Ok(other) => return Err(misbehaved(conn, &mut send, peer, &other, max).await),
        Err(f) => return Err(unexpected(conn, &mut send, peer, f, max).await),
    };
    let problem = check_hello(settings, &theirs).or_else(|| {
        (theirs.shard_id != expected).then(|| {
            (
                RefuseCode::WrongShard,
                format!("dialled shard {expected:?}, reached {:?}", theirs.shard_id),
            )
        })
    });
    if let Some((code, reason)) = problem {
        return Err(refuse_peer(conn, &mut send, peer, code, reason, max).await);
    }
    let keying = exporter(conn)?;
    let mac = proof_mac(&settings.secret, Role::Dialer, &ours, &theirs, &keying);
    write_msg(&mut send, &Control::Proof(Proof { mac: Bytes32(mac) }), max)
        .await
        .map_err(Failed::Io)?;
    let proof = match read_msg::<Control>(&mut recv, max).await {
        Ok(Control::Proof(p)) => p,
        Ok(Control::Refuse(r)) => return Err(refused_by_them(peer, r)),
        Ok(other) => return Err(misbehaved(conn, &mut send, peer, &other, max).await),
        Err(f) => return Err(unexpected(conn, &mut send, peer, f, max).await),
    };
    if !verify_proof(
        &settings.secret,
        Role::Listener,
        &ours,
        &theirs,
        &keying,
        &proof,
    ) {
        let reason = "the listener's proof does not match: it does not hold the cluster secret";
        return Err(refuse_peer(
            conn,
            &mut send,
            peer,
            RefuseCode::BadProof,
            reason.into(),
            max,
        )
        .await);
    }
    Ok(ControlStream {
        send,
        recv,
        peer: theirs,
    })
}

/// The listener's side, up to the check of the dialer's proof. The hub
/// then admits the connection and calls [`send_listener_proof`] (or
/// refuses it as a duplicate).
pub(super) async fn accept(
    settings: &TunnelSettings,
    conn: &Connection,
) -> Result<(ControlStream, PeerHello, [u8; 32]), Failed> {
    let max = settings.max_frame;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Failed::Io(e.to_string()))?;
    let theirs = match read_msg::<Control>(&mut recv, max).await {
        Ok(Control::Hello(h)) => h,
        Ok(other) => return Err(misbehaved(conn, &mut send, None, &other, max).await),
        Err(f) => return Err(unexpected(conn, &mut send, None, f, max).await),
    };
    let peer = Some(theirs.shard_id.clone());
    if let Some((code, reason)) = check_hello(settings, &theirs) {
        return Err(refuse_peer(conn, &mut send, peer, code, reason, max).await);
    }
    let ours = our_hello(settings);
    write_msg(&mut send, &Control::Hello(ours.clone()), max)
        .await
        .map_err(Failed::Io)?;
    let proof = match read_msg::<Control>(&mut recv, max).await {
        Ok(Control::Proof(p)) => p,
        Ok(Control::Refuse(r)) => return Err(refused_by_them(peer, r)),
        Ok(other) => return Err(misbehaved(conn, &mut send, peer, &other, max).await),
        Err(f) => return Err(unexpected(conn, &mut send, peer, f, max).await),
    };
    let keying = exporter(conn)?;
    if !verify_proof(
        &settings.secret,
        Role::Dialer,
        &theirs,
        &ours,
        &keying,
        &proof,
    ) {
        let reason = "the dialer's proof does not match: it does not hold the cluster secret";
        return Err(refuse_peer(
            conn,
            &mut send,
            peer,
            RefuseCode::BadProof,
            reason.into(),
            max,
        )
        .await);
    }
    Ok((
        ControlStream {
            send,
            recv,
            peer: theirs,
        },
        ours,
        keying,
    ))
}

/// The listener's proof, once the hub admitted the connection.
pub(super) async fn send_listener_proof(
    settings: &TunnelSettings,
    control: &mut ControlStream,
    ours: &PeerHello,
    keying: &[u8; 32],
) -> Result<(), Failed> {
    let mac = proof_mac(
        &settings.secret,
        Role::Listener,
        &control.peer,
        ours,
        keying,
    );
    write_msg(
        &mut control.send,
        &Control::Proof(Proof { mac: Bytes32(mac) }),
        settings.max_frame,
    )
    .await
    .map(|_| ())
    .map_err(Failed::Io)
}

/// Refuse the peer (see [`refuse`]) and return the error that says so.
async fn refuse_peer(
    conn: &Connection,
    send: &mut SendStream,
    peer: Option<String>,
    code: RefuseCode,
    reason: String,
    max: u32,
) -> Failed {
    refuse(conn, Some(send), code, &reason, max).await;
    Failed::Refused {
        by_us: true,
        peer,
        code: code.as_u16(),
        reason,
    }
}

fn refused_by_them(peer: Option<String>, r: Refuse) -> Failed {
    Failed::Refused {
        by_us: false,
        peer,
        code: r.code,
        reason: r.reason,
    }
}

async fn misbehaved(
    conn: &Connection,
    send: &mut SendStream,
    peer: Option<String>,
    got: &Control,
    max: u32,
) -> Failed {
    let reason = format!("unexpected {} in the handshake", control_name(got));
    refuse_peer(conn, send, peer, RefuseCode::Malformed, reason, max).await
}

fn control_name(msg: &Control) -> &'static str {
    match msg {
        Control::Hello(_) => "hello",
        Control::Proof(_) => "proof",
        Control::Refuse(_) => "refuse",
        Control::Ping(_) => "ping",
        Control::Pong(_) => "pong",
    }
}
