//! PostgreSQL's md5 password scheme: the stored hash `"md5" + hex(md5(password + user))`
//! and the challenge response `"md5" + hex(md5(hex-part-of-stored-hash + salt))`.
//!
//! Kept for servers and clients that still use md5; SCRAM ([`crate::scram`]) is preferred.
//! See <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>
//! (AuthenticationMD5Password) and <https://www.postgresql.org/docs/current/auth-password.html>.

use std::fmt::Write;

use md5::{Digest, Md5};

const PREFIX: &str = "md5";

/// The hash PostgreSQL stores for `password` when `password_encryption = md5`.
pub fn md5_password_hash(user: &str, password: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

/// What a client sends in answer to AuthenticationMD5Password with `salt`, computed from the
/// stored hash (with or without its `"md5"` prefix) rather than the password.
pub fn md5_salted(stored_hash: &str, salt: [u8; 4]) -> String {
    let hex = stored_hash.strip_prefix(PREFIX).unwrap_or(stored_hash);
    md5_hex(&[hex.as_bytes(), &salt])
}

/// What a client that knows the password sends in answer to AuthenticationMD5Password.
pub fn md5_client_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    md5_salted(&md5_password_hash(user, password), salt)
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let mut hex = String::with_capacity(PREFIX.len() + 32);
    hex.push_str(PREFIX);
    for byte in hasher.finalize() {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_matches_postgresql() {
        assert_eq!(
            md5_password_hash("postgres", "postgres"),
            "md53175bce1d3201d16594cebf9d7eb3f9d"
        );
    }

    #[test]
    fn client_response_is_the_salted_stored_hash() {
        let salt = [0x01, 0x02, 0x03, 0x04];
        let stored = md5_password_hash("alice", "secret");
        let response = md5_client_response("alice", "secret", salt);
        assert_eq!(response, md5_salted(&stored, salt));
        assert_eq!(response, md5_salted(stored.trim_start_matches("md5"), salt));
        assert_eq!(response.len(), 35);
        assert!(response.starts_with("md5"));
        assert_ne!(
            response,
            md5_client_response("alice", "secret", [0, 0, 0, 0])
        );
        assert_ne!(response, md5_client_response("alice", "wrong", salt));
    }

    #[test]
    fn salted_response_matches_a_known_value() {
        // md5("3175bce1d3201d16594cebf9d7eb3f9d" + "abcd"), computed with coreutils md5sum.
        assert_eq!(
            md5_salted("md53175bce1d3201d16594cebf9d7eb3f9d", *b"abcd"),
            "md50800ba833a175e428fc0110c29998942"
        );
    }
}
