//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, as I/O-free state machines:
//! [`ScramServer`] verifies a client against a stored [`ScramSecret`], [`ScramClient`] logs in
//! to a server with a password. Callers move the messages inside SASL protocol messages.
//!
//! Pass-through: a successful [`ScramServer`] exchange yields the client's [`ScramKeys`]
//! (ClientKey recovered from its proof, ServerKey from the secret), and
//! [`ScramClient::with_keys`] logs in with them to a server storing the same verifier,
//! without the plaintext password ever being known.
//!
//! PostgreSQL's dialect: the user name in client-first-message is ignored (the startup
//! packet's user counts); passwords are normalised with SASLprep, falling back to the raw
//! password when SASLprep rejects it; no channel binding is offered yet, so the GS2 header
//! must be `n,,` or `y,,`. Crypto is `ring` (HMAC, SHA-256, PBKDF2); the proof is compared in
//! constant time. Every message is bounded by [`MAX_LOGIN_MESSAGE_LEN`] and any error leaves
//! the exchange failed. See <https://www.postgresql.org/docs/current/sasl-authentication.html>
//! and <https://www.postgresql.org/docs/current/catalog-pg-authid.html> (secret format).

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq;

use crate::frame::MAX_LOGIN_MESSAGE_LEN;

/// The SASL mechanism name to offer in AuthenticationSASL.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SECRET_PREFIX: &str = "SCRAM-SHA-256$";
/// SHA-256 output size: the length of every key, signature and proof.
const KEY_LEN: usize = 32;
type Key = [u8; KEY_LEN];
/// GS2 header of a client that does not support channel binding.
const GS2_NO_BINDING: &str = "n,,";
/// GS2 header of a client that supports channel binding but thinks the server does not.
const GS2_BINDING_NOT_OFFERED: &str = "y,,";

/// Why a SCRAM exchange or secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("client requested SCRAM channel binding, which this server does not offer")]
    ChannelBindingUnsupported,
    #[error("SCRAM authorization identities (a=...) are not supported")]
    AuthzidUnsupported,
    #[error("the SCRAM message requires an unsupported extension (m=...)")]
    ExtensionUnsupported,
    #[error("SCRAM channel-binding attribute does not match the GS2 header")]
    ChannelBindingMismatch,
    #[error("SCRAM nonce does not match the one of this exchange")]
    NonceMismatch,
    /// The client's proof is wrong: it does not know the password.
    #[error("invalid SCRAM client proof")]
    InvalidProof,
    /// The server's signature is wrong: it does not know the secret.
    #[error("invalid SCRAM server signature")]
    InvalidServerSignature,
    /// The server ended the exchange with `e=<reason>`.
    #[error("server rejected the SCRAM exchange: {0}")]
    ServerError(String),
    #[error("invalid SCRAM secret: {0}")]
    InvalidSecret(&'static str),
    /// A step was called in the wrong order, or after the exchange ended or failed.
    #[error("SCRAM message out of order")]
    OutOfOrder,
}

/// A SCRAM-SHA-256 verifier as stored in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` with base64 fields.
/// `Debug` hides the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses PostgreSQL's text form of a verifier.
    pub fn parse(text: &str) -> Result<Self, ScramError> {
        let layout = "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>";
        let rest = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(ScramError::InvalidSecret(layout))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(ScramError::InvalidSecret(layout))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(ScramError::InvalidSecret(layout))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(ScramError::InvalidSecret(layout))?;
        let iterations = parse_iterations(iterations).ok_or(ScramError::InvalidSecret(
            "iteration count is not a positive integer",
        ))?;
        let salt = BASE64
            .decode(salt)
            .map_err(|_| ScramError::InvalidSecret("salt is not valid base64"))?;
        let stored_key = decode_key(stored_key).ok_or(ScramError::InvalidSecret(
            "StoredKey is not 32 base64-encoded bytes",
        ))?;
        let server_key = decode_key(server_key).ok_or(ScramError::InvalidSecret(
            "ServerKey is not 32 base64-encoded bytes",
        ))?;
        Ok(Self {
            iterations: iterations.get(),
            salt,
            stored_key,
            server_key,
        })
    }

    /// Derives the verifier PostgreSQL would store for `password` with this salt and
    /// iteration count (PostgreSQL uses 16 random bytes of salt and 4096 iterations).
    ///
    /// # Panics
    /// If `iterations` is 0.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations =
            NonZeroU32::new(iterations).expect("SCRAM iteration count must be positive");
        let keys = PasswordKeys::derive(password, salt, iterations);
        Self {
            iterations: iterations.get(),
            salt: salt.to_vec(),
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
        }
    }
}

impl FromStr for ScramSecret {
    type Err = ScramError;

    fn from_str(text: &str) -> Result<Self, ScramError> {
        Self::parse(text)
    }
}

impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SECRET_PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

/// What proves knowledge of a password to a server holding its verifier: ClientKey
/// (whose hash is the StoredKey) and ServerKey, both `HMAC(SaltedPassword, ...)`. They are
/// password-equivalent for that verifier (same salt and iterations) only. `Debug` hides them.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramKeys {
    /// The keys of `password` under this salt and iteration count (one PBKDF2 run).
    ///
    /// # Panics
    /// If `iterations` is 0.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations =
            NonZeroU32::new(iterations).expect("SCRAM iteration count must be positive");
        let keys = PasswordKeys::derive(password, salt, iterations);
        Self {
            client_key: keys.client_key,
            server_key: keys.server_key,
        }
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramKeys(<redacted>)")
    }
}

/// The server side of one exchange: `client_first`, then `client_final`.
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    state: ServerState,
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        gs2_header: &'static str,
        nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Succeeded {
        client_key: Key,
    },
    Failed,
}

impl ScramServer {
    /// Starts an exchange verifying against `secret`. `server_nonce_bytes` must be fresh
    /// random bytes (PostgreSQL uses 18); they are sent base64-encoded.
    pub fn new(secret: ScramSecret, server_nonce_bytes: &[u8]) -> Self {
        Self {
            secret,
            server_nonce: BASE64.encode(server_nonce_bytes),
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Takes the client-first-message (from SASLInitialResponse) and returns the
    /// server-first-message (for AuthenticationSASLContinue).
    ///
    /// GS2 flag `y` is accepted because SCRAM-SHA-256-PLUS is not offered; once it is, `y`
    /// must be refused as a downgrade.
    pub fn client_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::AwaitingClientFirst = self.take_state() else {
            return Err(ScramError::OutOfOrder);
        };
        let message = message_text(message)?;
        let (gs2_header, client_first_bare) = split_gs2_header(message)?;
        let client_nonce = client_nonce(client_first_bare)?;
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.secret.salt),
            self.secret.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = ServerState::AwaitingClientFinal {
            gs2_header,
            nonce,
            client_first_bare: client_first_bare.to_owned(),
            server_first,
        };
        Ok(reply)
    }

    /// Takes the client-final-message (from SASLResponse), verifies the proof and returns
    /// the server-final-message (for AuthenticationSASLFinal). A wrong password gives
    /// [`ScramError::InvalidProof`].
    pub fn client_final(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::AwaitingClientFinal {
            gs2_header,
            nonce,
            client_first_bare,
            server_first,
        } = self.take_state()
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = message_text(message)?;
        let client_final = ClientFinal::parse(message)?;
        if client_final.channel_binding != BASE64.encode(gs2_header) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if client_final.nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof = decode_key(client_final.proof).ok_or(ScramError::Malformed(
            "ClientProof is not 32 base64-encoded bytes",
        ))?;
        let auth_message = format!(
            "{client_first_bare},{server_first},{}",
            client_final.without_proof
        );
        let client_signature = hmac_sha256(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !equal_in_constant_time(&sha256(&client_key), &self.secret.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac_sha256(&self.secret.server_key, auth_message.as_bytes());
        self.state = ServerState::Succeeded { client_key };
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }

    /// The client's ClientKey (ClientProof XOR ClientSignature), once the exchange has
    /// succeeded: with it sluice can log in to a server holding the same secret.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Succeeded { client_key } => Some(client_key),
            _ => None,
        }
    }

    /// The keys a pass-through login needs, once the exchange has succeeded: the client's
    /// ClientKey and the secret's ServerKey.
    pub fn keys(&self) -> Option<ScramKeys> {
        self.client_key().map(|client_key| ScramKeys {
            client_key,
            server_key: self.secret.server_key,
        })
    }

    fn take_state(&mut self) -> ServerState {
        std::mem::replace(&mut self.state, ServerState::Failed)
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// Splits `n,,` or `y,,` off a client-first-message.
fn split_gs2_header(message: &str) -> Result<(&'static str, &str), ScramError> {
    let (flag, rest) = message
        .split_once(',')
        .ok_or(ScramError::Malformed("missing GS2 header"))?;
    let gs2_header = match flag {
        "n" => GS2_NO_BINDING,
        "y" => GS2_BINDING_NOT_OFFERED,
        _ if flag.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
        _ => return Err(ScramError::Malformed("invalid GS2 channel-binding flag")),
    };
    let (authzid, client_first_bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("missing GS2 header"))?;
    match authzid {
        "" => Ok((gs2_header, client_first_bare)),
        _ if authzid.starts_with("a=") => Err(ScramError::AuthzidUnsupported),
        _ => Err(ScramError::Malformed("invalid GS2 authorization identity")),
    }
}

/// The client nonce of a client-first-message-bare: `n=<user>,r=<nonce>[,extensions]`.
fn client_nonce(client_first_bare: &str) -> Result<&str, ScramError> {
    let mut parts = client_first_bare.split(',');
    let user = parts.next().unwrap_or_default();
    if user.starts_with("m=") {
        return Err(ScramError::ExtensionUnsupported);
    }
    expect_attribute(Some(user), b'n', "expected user name attribute n=")?;
    let nonce = expect_attribute(parts.next(), b'r', "expected nonce attribute r=")?;
    if !is_printable(nonce) {
        return Err(ScramError::Malformed("nonce is empty or not printable"));
    }
    for extension in parts {
        attribute(extension)?;
    }
    Ok(nonce)
}

/// `c=<binding>,r=<nonce>[,extensions],p=<proof>`, with the part the AuthMessage covers.
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    proof: &'a str,
    without_proof: &'a str,
}

impl<'a> ClientFinal<'a> {
    fn parse(message: &'a str) -> Result<Self, ScramError> {
        let mut parts = message.split(',');
        let channel_binding =
            expect_attribute(parts.next(), b'c', "expected channel binding attribute c=")?;
        let nonce = expect_attribute(parts.next(), b'r', "expected nonce attribute r=")?;
        let proof = loop {
            let part = parts
                .next()
                .ok_or(ScramError::Malformed("client-final-message has no proof"))?;
            if let (b'p', proof) = attribute(part)? {
                break proof;
            }
        };
        if parts.next().is_some() {
            return Err(ScramError::Malformed("attributes after the proof"));
        }
        let without_proof = message
            .strip_suffix(proof)
            .and_then(|rest| rest.strip_suffix(",p="))
            .ok_or(ScramError::Malformed("client-final-message has no proof"))?;
        Ok(Self {
            channel_binding,
            nonce,
            proof,
            without_proof,
        })
    }
}

/// The client side of one exchange: `client_first`, `server_first`, then `server_final`.
pub struct ScramClient {
    credential: Credential,
    client_nonce: String,
    client_first_bare: String,
    state: ClientState,
}

/// What a [`ScramClient`] proves itself with.
enum Credential {
    /// Derived into keys with the salt and iterations the server sends.
    Password(String),
    /// Already derived (pass-through); only valid for the verifier they came from.
    Keys(ScramKeys),
}

enum ClientState {
    AwaitingServerFirst,
    AwaitingServerFinal {
        server_key: Key,
        auth_message: String,
    },
    Succeeded,
    Failed,
}

impl ScramClient {
    /// Starts an exchange proving knowledge of `password`. `client_nonce_bytes` must be
    /// fresh random bytes (libpq uses 18); they are sent base64-encoded.
    pub fn new(password: &str, client_nonce_bytes: &[u8]) -> Self {
        Self::start(
            Credential::Password(password.to_owned()),
            client_nonce_bytes,
        )
    }

    /// Starts an exchange proving knowledge of the password behind `keys` without the
    /// password itself (SCRAM pass-through). The server must store the verifier the keys
    /// belong to; the salt and iteration count it sends are not used.
    pub fn with_keys(keys: ScramKeys, client_nonce_bytes: &[u8]) -> Self {
        Self::start(Credential::Keys(keys), client_nonce_bytes)
    }

    fn start(credential: Credential, client_nonce_bytes: &[u8]) -> Self {
        let client_nonce = BASE64.encode(client_nonce_bytes);
        // Like libpq, send no user name: PostgreSQL takes it from the startup packet.
        let client_first_bare = format!("n=,r={client_nonce}");
        Self {
            credential,
            client_nonce,
            client_first_bare,
            state: ClientState::AwaitingServerFirst,
        }
    }

    /// The client-first-message, for SASLInitialResponse.
    pub fn client_first(&self) -> Vec<u8> {
        format!("{GS2_NO_BINDING}{}", self.client_first_bare).into_bytes()
    }

    /// Takes the server-first-message (from AuthenticationSASLContinue) and returns the
    /// client-final-message with the proof (for SASLResponse).
    pub fn server_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ClientState::AwaitingServerFirst = self.take_state() else {
            return Err(ScramError::OutOfOrder);
        };
        let server_first = message_text(message)?;
        let parsed = ServerFirst::parse(server_first)?;
        let (nonce, salt, iterations) = (parsed.nonce, parsed.salt, parsed.iterations);
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(ScramError::NonceMismatch);
        }

        let keys = match &self.credential {
            Credential::Password(password) => PasswordKeys::derive(password, &salt, iterations),
            Credential::Keys(keys) => PasswordKeys {
                client_key: keys.client_key,
                server_key: keys.server_key,
            },
        };
        let without_proof = format!("c={},r={nonce}", BASE64.encode(GS2_NO_BINDING));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac_sha256(&sha256(&keys.client_key), auth_message.as_bytes());
        let proof = xor(&keys.client_key, &client_signature);
        self.state = ClientState::AwaitingServerFinal {
            server_key: keys.server_key,
            auth_message,
        };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Takes the server-final-message (from AuthenticationSASLFinal) and checks the
    /// server's signature, proving the server knows the secret too.
    pub fn server_final(&mut self, message: &[u8]) -> Result<(), ScramError> {
        let ClientState::AwaitingServerFinal {
            server_key,
            auth_message,
        } = self.take_state()
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = message_text(message)?;
        let mut parts = message.split(',');
        let signature = match attribute(parts.next().unwrap_or_default())? {
            (b'e', reason) => return Err(ScramError::ServerError(reason.to_owned())),
            (b'v', signature) => signature,
            _ => return Err(ScramError::Malformed("expected verifier attribute v=")),
        };
        if parts.next().is_some() {
            return Err(ScramError::Malformed("attributes after the verifier"));
        }
        let signature = BASE64
            .decode(signature)
            .map_err(|_| ScramError::Malformed("server signature is not valid base64"))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &server_key);
        hmac::verify(&key, auth_message.as_bytes(), &signature)
            .map_err(|_| ScramError::InvalidServerSignature)?;
        self.state = ClientState::Succeeded;
        Ok(())
    }

    fn take_state(&mut self) -> ClientState {
        std::mem::replace(&mut self.state, ClientState::Failed)
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("client_nonce", &self.client_nonce)
            .finish_non_exhaustive()
    }
}

/// A server-first-message: `r=<nonce>,s=<salt>,i=<iterations>`.
struct ServerFirst<'a> {
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: NonZeroU32,
}

impl<'a> ServerFirst<'a> {
    fn parse(message: &'a str) -> Result<Self, ScramError> {
        let mut parts = message.split(',');
        let first = parts.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(ScramError::ExtensionUnsupported);
        }
        let nonce = expect_attribute(Some(first), b'r', "expected nonce attribute r=")?;
        if !is_printable(nonce) {
            return Err(ScramError::Malformed("nonce is empty or not printable"));
        }
        let salt = expect_attribute(parts.next(), b's', "expected salt attribute s=")?;
        let salt = BASE64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("salt is not valid base64"))?;
        let iterations =
            expect_attribute(parts.next(), b'i', "expected iteration count attribute i=")?;
        let iterations = parse_iterations(iterations).ok_or(ScramError::Malformed(
            "iteration count is not a positive integer",
        ))?;
        if parts.next().is_some() {
            return Err(ScramError::Malformed(
                "attributes after the iteration count",
            ));
        }
        Ok(Self {
            nonce,
            salt,
            iterations,
        })
    }
}

/// The salt and iteration count a server-first-message asks for: what
/// [`ScramKeys::from_password`] needs, for callers that keep derived keys instead of
/// running PBKDF2 on every login.
pub fn server_first_salt(message: &[u8]) -> Result<(Vec<u8>, u32), ScramError> {
    let parsed = ServerFirst::parse(message_text(message)?)?;
    Ok((parsed.salt, parsed.iterations.get()))
}

/// ClientKey and ServerKey derived from a password.
struct PasswordKeys {
    client_key: Key,
    server_key: Key,
}

impl PasswordKeys {
    fn derive(password: &str, salt: &[u8], iterations: NonZeroU32) -> Self {
        // PostgreSQL's pg_saslprep: a password SASLprep rejects is used as it is.
        let password = stringprep::saslprep(password).unwrap_or(Cow::Borrowed(password));
        let mut salted_password = [0; KEY_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            password.as_bytes(),
            &mut salted_password,
        );
        Self {
            client_key: hmac_sha256(&salted_password, b"Client Key"),
            server_key: hmac_sha256(&salted_password, b"Server Key"),
        }
    }
}

/// Checks the size bound and UTF-8 of a SCRAM message.
fn message_text(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_LOGIN_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("message is not UTF-8"))
}

/// Splits `x=value` into its one-letter name and value.
fn attribute(part: &str) -> Result<(u8, &str), ScramError> {
    match part.as_bytes() {
        [name, b'=', ..] if name.is_ascii_alphabetic() => Ok((*name, &part[2..])),
        _ => Err(ScramError::Malformed(
            "expected an attribute of the form x=value",
        )),
    }
}

fn expect_attribute<'a>(
    part: Option<&'a str>,
    name: u8,
    missing: &'static str,
) -> Result<&'a str, ScramError> {
    match attribute(part.unwrap_or_default()) {
        Ok((found, value)) if found == name => Ok(value),
        _ => Err(ScramError::Malformed(missing)),
    }
}

/// RFC 5802 `printable`: non-empty, ASCII 0x21..=0x7e except ','.
fn is_printable(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| matches!(b, 0x21..=0x7e) && b != b',')
}

fn parse_iterations(text: &str) -> Option<NonZeroU32> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn decode_key(text: &str) -> Option<Key> {
    BASE64.decode(text).ok()?.try_into().ok()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Key {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0; KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> Key {
    let mut out = [0; KEY_LEN];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn xor(a: &Key, b: &Key) -> Key {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Compares `a` and `b` without an early exit.
fn equal_in_constant_time(a: &Key, b: &Key) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests;
