//! The optional authentication handshake of the Forward protocol v1.
//!
//! When a server has a `shared_key`, every connection starts with:
//!
//! 1. server → client `["HELO", {"nonce": bin, "auth": bin, "keepalive": bool}]`
//!    (`auth` is a salt when user authentication is on, else empty);
//! 2. client → server `["PING", client_hostname, shared_key_salt,
//!    sha512_hex(shared_key_salt + client_hostname + nonce + shared_key),
//!    username, sha512_hex(auth_salt + username + password)]`
//!    (the last two empty when `auth` was empty);
//! 3. server → client `["PONG", ok, reason, server_hostname,
//!    sha512_hex(shared_key_salt + server_hostname + nonce + shared_key)]`,
//!    after which events flow; on failure the server closes.
//!
//! The digests prove both sides know the key without sending it, and the
//! nonce keeps a recorded PING from being replayed on another connection.

use std::time::Duration;

use bytes::BytesMut;
use rand::RngCore;
use rmpv::Value as M;
use sha2::{Digest, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::split_value;

/// Largest handshake message accepted.
const MAX_MESSAGE: usize = 64 * 1024;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer sent something that is not the expected message.
    #[error("handshake protocol error: {0}")]
    Protocol(String),
    /// The peer's credentials did not match.
    #[error("authentication failed: {0}")]
    Refused(String),
    /// The peer did not answer in time.
    #[error("no handshake message within {0:?}")]
    Timeout(Duration),
    /// The connection failed or closed.
    #[error("connection error during the handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// The server's side of the handshake configuration.
#[derive(Debug, Clone)]
pub struct ServerAuth {
    /// The name the server presents in PONG.
    pub self_hostname: String,
    /// The key both sides share.
    pub shared_key: String,
    /// Whether clients must also give a username and password.
    pub user_auth: bool,
    /// Accepted (username, password) pairs.
    pub users: Vec<(String, String)>,
}

/// The client's side of the handshake configuration.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The name the client presents in PING.
    pub self_hostname: String,
    /// The key both sides share.
    pub shared_key: String,
    /// Username, for servers with user authentication.
    pub username: String,
    /// Password, for servers with user authentication.
    pub password: String,
}

/// `n` random bytes from the operating system's generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// Lower-case hex SHA-512 of the concatenated `parts`.
pub fn sha512_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Compares two byte strings in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn pack(v: &M) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, v);
    out
}

fn bytes_of(v: &M) -> Option<&[u8]> {
    match v {
        M::String(s) => Some(s.as_bytes()),
        M::Binary(b) => Some(b),
        _ => None,
    }
}

/// What a server sends first and checks the PING against.
#[derive(Debug, Clone)]
pub struct ServerChallenge {
    nonce: Vec<u8>,
    auth_salt: Vec<u8>,
}

impl ServerChallenge {
    /// A fresh nonce (and user-auth salt when `user_auth`).
    pub fn new(user_auth: bool) -> Self {
        Self {
            nonce: random_bytes(16),
            auth_salt: if user_auth {
                random_bytes(16)
            } else {
                Vec::new()
            },
        }
    }

    /// The encoded HELO message.
    pub fn helo(&self) -> Vec<u8> {
        pack(&M::Array(vec![
            M::from("HELO"),
            M::Map(vec![
                (M::from("nonce"), M::Binary(self.nonce.clone())),
                (M::from("auth"), M::Binary(self.auth_salt.clone())),
                (M::from("keepalive"), M::Boolean(true)),
            ]),
        ]))
    }

    /// Checks an encoded PING. Returns the PONG to send and whether the
    /// client is accepted (with the reason when not).
    pub fn answer(&self, auth: &ServerAuth, ping: &[u8]) -> (Vec<u8>, Result<String, String>) {
        let refuse = |reason: String| {
            let pong = pack(&M::Array(vec![
                M::from("PONG"),
                M::Boolean(false),
                M::from(reason.as_str()),
                M::from(""),
                M::from(""),
            ]));
            (pong, Err(reason))
        };
        let value = match rmpv::decode::read_value(&mut &ping[..]) {
            Ok(v) => v,
            Err(e) => return refuse(format!("invalid ping message: {e}")),
        };
        let M::Array(items) = value else {
            return refuse("invalid ping message: not an array".into());
        };
        if items.len() != 6 || items[0].as_str() != Some("PING") {
            return refuse("invalid ping message".into());
        }
        let (Some(hostname), Some(salt), Some(digest), Some(username), Some(pass_digest)) = (
            bytes_of(&items[1]),
            bytes_of(&items[2]),
            bytes_of(&items[3]),
            bytes_of(&items[4]),
            bytes_of(&items[5]),
        ) else {
            return refuse("invalid ping message: fields must be strings".into());
        };
        let expected = sha512_hex(&[salt, hostname, &self.nonce, auth.shared_key.as_bytes()]);
        if !same(expected.as_bytes(), digest) {
            return refuse("shared_key mismatch".into());
        }
        if auth.user_auth {
            let ok = auth.users.iter().any(|(u, p)| {
                u.as_bytes() == username
                    && same(
                        sha512_hex(&[&self.auth_salt, u.as_bytes(), p.as_bytes()]).as_bytes(),
                        pass_digest,
                    )
            });
            if !ok {
                return refuse("username/password mismatch".into());
            }
        }
        let proof = sha512_hex(&[
            salt,
            auth.self_hostname.as_bytes(),
            &self.nonce,
            auth.shared_key.as_bytes(),
        ]);
        let pong = pack(&M::Array(vec![
            M::from("PONG"),
            M::Boolean(true),
            M::from(""),
            M::from(auth.self_hostname.as_str()),
            M::from(proof),
        ]));
        (pong, Ok(String::from_utf8_lossy(hostname).into_owned()))
    }
}

/// What a client learned from HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    /// The server's nonce.
    pub nonce: Vec<u8>,
    /// The user-auth salt; empty when the server does not authenticate users.
    pub auth_salt: Vec<u8>,
    /// Whether the server keeps connections open.
    pub keepalive: bool,
}

/// Decodes a HELO message.
///
/// # Errors
/// Anything that is not `["HELO", {options}]`.
pub fn parse_helo(bytes: &[u8]) -> Result<Helo, HandshakeError> {
    let bad =
        |what: &str| HandshakeError::Protocol(format!("expected HELO from the server: {what}"));
    let value = rmpv::decode::read_value(&mut &bytes[..]).map_err(|e| bad(&e.to_string()))?;
    let M::Array(items) = value else {
        // A server without shared_key answers nothing; one that sends an
        // ack map here is not doing a handshake.
        return Err(bad("got something other than an array"));
    };
    if items.len() != 2 || items[0].as_str() != Some("HELO") {
        return Err(bad("got another message"));
    }
    let mut helo = Helo {
        nonce: Vec::new(),
        auth_salt: Vec::new(),
        keepalive: true,
    };
    if let M::Map(options) = &items[1] {
        for (k, v) in options {
            match k.as_str() {
                Some("nonce") => helo.nonce = bytes_of(v).unwrap_or_default().to_vec(),
                Some("auth") => helo.auth_salt = bytes_of(v).unwrap_or_default().to_vec(),
                Some("keepalive") => helo.keepalive = v.as_bool().unwrap_or(true),
                _ => {}
            }
        }
    }
    Ok(helo)
}

/// The PING answering `helo`, with the client's `salt`.
pub fn ping(auth: &ClientAuth, helo: &Helo, salt: &str) -> Vec<u8> {
    let digest = sha512_hex(&[
        salt.as_bytes(),
        auth.self_hostname.as_bytes(),
        &helo.nonce,
        auth.shared_key.as_bytes(),
    ]);
    let (user, pass) = if helo.auth_salt.is_empty() {
        (String::new(), String::new())
    } else {
        (
            auth.username.clone(),
            sha512_hex(&[
                &helo.auth_salt,
                auth.username.as_bytes(),
                auth.password.as_bytes(),
            ]),
        )
    };
    pack(&M::Array(vec![
        M::from("PING"),
        M::from(auth.self_hostname.as_str()),
        M::from(salt),
        M::from(digest),
        M::from(user),
        M::from(pass),
    ]))
}

/// Checks the server's PONG.
///
/// # Errors
/// A refusal (with the server's reason), a server that cannot prove it knows
/// the key, or a server using our own hostname (fluentd refuses that too: it
/// usually means a forwarding loop).
pub fn check_pong(
    auth: &ClientAuth,
    helo: &Helo,
    salt: &str,
    bytes: &[u8],
) -> Result<String, HandshakeError> {
    let value = rmpv::decode::read_value(&mut &bytes[..])
        .map_err(|e| HandshakeError::Protocol(format!("invalid PONG: {e}")))?;
    let M::Array(items) = value else {
        return Err(HandshakeError::Protocol(
            "invalid PONG: not an array".into(),
        ));
    };
    if items.len() != 5 || items[0].as_str() != Some("PONG") {
        return Err(HandshakeError::Protocol("invalid PONG message".into()));
    }
    if items[1].as_bool() != Some(true) {
        let reason = bytes_of(&items[2])
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        return Err(HandshakeError::Refused(format!(
            "the server said: {reason}"
        )));
    }
    let hostname = bytes_of(&items[3]).unwrap_or_default();
    if hostname == auth.self_hostname.as_bytes() {
        return Err(HandshakeError::Refused(format!(
            "the server's self_hostname is ours ({:?}); give each side its own self_hostname",
            auth.self_hostname
        )));
    }
    let expected = sha512_hex(&[
        salt.as_bytes(),
        hostname,
        &helo.nonce,
        auth.shared_key.as_bytes(),
    ]);
    if !same(expected.as_bytes(), bytes_of(&items[4]).unwrap_or_default()) {
        return Err(HandshakeError::Refused(
            "the server's shared_key digest does not match ours".into(),
        ));
    }
    Ok(String::from_utf8_lossy(hostname).into_owned())
}

/// Reads one msgpack value from `stream`, keeping any bytes after it in `buf`.
///
/// # Errors
/// Timeout, EOF, I/O errors, invalid msgpack or a value over `limit`.
pub async fn read_value<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut BytesMut,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, HandshakeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match split_value(buf, limit) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(HandshakeError::Protocol(e.to_string())),
        }
        buf.reserve(4096);
        let n = tokio::time::timeout_at(deadline, stream.read_buf(buf))
            .await
            .map_err(|_| HandshakeError::Timeout(timeout))??;
        if n == 0 {
            return Err(HandshakeError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed the connection",
            )));
        }
    }
}

/// Runs the server side on a fresh connection. Bytes the client sent after
/// its PING stay in `buf`. Returns the client's hostname.
///
/// # Errors
/// Any failure; a PONG with the reason has been sent when the client was
/// refused.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut BytesMut,
    auth: &ServerAuth,
    timeout: Duration,
) -> Result<String, HandshakeError> {
    let challenge = ServerChallenge::new(auth.user_auth);
    stream.write_all(&challenge.helo()).await?;
    stream.flush().await?;
    let ping = read_value(stream, buf, MAX_MESSAGE, timeout).await?;
    let (pong, verdict) = challenge.answer(auth, &ping);
    stream.write_all(&pong).await?;
    stream.flush().await?;
    verdict.map_err(HandshakeError::Refused)
}

/// Runs the client side on a fresh connection. Returns the server's
/// hostname.
///
/// # Errors
/// Any failure, including the server's refusal.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    auth: &ClientAuth,
    timeout: Duration,
) -> Result<String, HandshakeError> {
    let mut buf = BytesMut::with_capacity(512);
    let helo_bytes = read_value(stream, &mut buf, MAX_MESSAGE, timeout).await?;
    let helo = parse_helo(&helo_bytes)?;
    let salt = hex::encode(random_bytes(16));
    stream.write_all(&ping(auth, &helo, &salt)).await?;
    stream.flush().await?;
    let pong = read_value(stream, &mut buf, MAX_MESSAGE, timeout).await?;
    check_pong(auth, &helo, &salt, &pong)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_auth() -> ServerAuth {
        ServerAuth {
            self_hostname: "server".into(),
            shared_key: "secret".into(),
            user_auth: false,
            users: vec![],
        }
    }

    fn client_auth(key: &str) -> ClientAuth {
        ClientAuth {
            self_hostname: "client".into(),
            shared_key: key.into(),
            username: "alice".into(),
            password: "pw".into(),
        }
    }

    #[test]
    fn digests_follow_the_spec() {
        // sha512_hex of the concatenation, lower-case hex.
        assert_eq!(
            sha512_hex(&[b"a", b"bc"]),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        let challenge = ServerChallenge::new(false);
        let helo = parse_helo(&challenge.helo()).unwrap();
        assert_eq!(helo.nonce.len(), 16);
        assert!(helo.auth_salt.is_empty());
        // A PING computed by hand from the spec's formula is accepted.
        let salt = "s4lt";
        let digest = sha512_hex(&[salt.as_bytes(), b"client", &helo.nonce, b"secret"]);
        let ping = pack(&M::Array(vec![
            M::from("PING"),
            M::from("client"),
            M::from(salt),
            M::from(digest),
            M::from(""),
            M::from(""),
        ]));
        let (pong, verdict) = challenge.answer(&server_auth(), &ping);
        assert_eq!(verdict.unwrap(), "client");
        assert_eq!(
            check_pong(&client_auth("secret"), &helo, salt, &pong).unwrap(),
            "server"
        );
    }

    #[test]
    fn wrong_keys_and_users_are_refused() {
        let challenge = ServerChallenge::new(false);
        let helo = parse_helo(&challenge.helo()).unwrap();
        let (pong, verdict) =
            challenge.answer(&server_auth(), &ping(&client_auth("nope"), &helo, "x"));
        assert_eq!(verdict.unwrap_err(), "shared_key mismatch");
        let err = check_pong(&client_auth("nope"), &helo, "x", &pong).unwrap_err();
        assert!(err.to_string().contains("shared_key mismatch"), "{err}");

        let mut auth = server_auth();
        auth.user_auth = true;
        auth.users = vec![("alice".into(), "pw".into())];
        let challenge = ServerChallenge::new(true);
        let helo = parse_helo(&challenge.helo()).unwrap();
        assert_eq!(helo.auth_salt.len(), 16);
        let (_, ok) = challenge.answer(&auth, &ping(&client_auth("secret"), &helo, "x"));
        assert!(ok.is_ok());
        let mut wrong = client_auth("secret");
        wrong.password = "bad".into();
        let (_, refused) = challenge.answer(&auth, &ping(&wrong, &helo, "x"));
        assert_eq!(refused.unwrap_err(), "username/password mismatch");
        let (_, garbage) = challenge.answer(&auth, b"\xc1");
        assert!(garbage.is_err());
    }

    #[test]
    fn a_server_with_our_hostname_is_refused() {
        let mut auth = server_auth();
        auth.self_hostname = "client".into();
        let challenge = ServerChallenge::new(false);
        let helo = parse_helo(&challenge.helo()).unwrap();
        let (pong, _) = challenge.answer(&auth, &ping(&client_auth("secret"), &helo, "x"));
        let err = check_pong(&client_auth("secret"), &helo, "x", &pong).unwrap_err();
        assert!(err.to_string().contains("self_hostname"), "{err}");
    }

    #[tokio::test]
    async fn both_sides_over_a_duplex_pipe() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server_side = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let r = server(&mut a, &mut buf, &server_auth(), Duration::from_secs(5)).await;
            (r.map_err(|e| e.to_string()), buf)
        });
        let got = client(&mut b, &client_auth("secret"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, "server");
        let (r, _) = server_side.await.unwrap();
        assert_eq!(r.unwrap(), "client");
    }
}
