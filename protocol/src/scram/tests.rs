//! Unit tests of `crate::scram`.

use super::*;

const SERVER_NONCE: &[u8] = b"0123456789abcdefgh";
const CLIENT_NONCE: &[u8] = b"client nonce bytes";

/// Verifiers PostgreSQL 15 stored for `CREATE ROLE ... PASSWORD '<password>'`.
const POSTGRES_VERIFIERS: [(&str, &str); 4] = [
    (
        "pencil",
        "SCRAM-SHA-256$4096:Zba4+slujIQs1rjJPIJjjQ==$RtaGCy6vrzza8wgGZb7t8kTpyATJ7srSePZTUHiTuOU=:urMySIeuD7AYhJjCPuR7NS+0PaePKKr6IoG7YcTUsNA=",
    ),
    // U+2168 ROMAN NUMERAL NINE: SASLprep normalises it to "IX".
    (
        "\u{2168}",
        "SCRAM-SHA-256$4096:jiMW6ZQ+eXt4+mgxEmijgQ==$IMsVYH+AUfJx1JD/BfonN3/RbNN+L29AZe0IZHmN2jo=:1jV75K+M6yF3FodXOGHefRuyFClWckAjqIgx8muo28c=",
    ),
    // Arabic letter then a digit breaks SASLprep's bidi rule: the raw password is used.
    (
        "\u{0627}1",
        "SCRAM-SHA-256$4096:p1yY9jW3w/HBVJOYM0J1Tw==$CQSj2TsFToc/TQfa3OxlvbrmGHu1/35MDPhuGIATHGU=:abMZC+tdbPv7YAA0PRN9aE8v2MyZ5KPeCcLQC6zY6Vs=",
    ),
    // A no-break space is mapped to a space.
    (
        "a\u{00a0}b",
        "SCRAM-SHA-256$4096:IRgwwqJ6G11va14nryASRg==$d/EACF3BL8yhYA6dVU/KeJKYqI+u7GoHagIkX/VPpbs=:q3gyUgp2/pdb1+zjQDK2Wf60/+QOKazrBtpeUK0KCQs=",
    ),
];

// RFC 7677 section 3: user "user", password "pencil".
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn secret(password: &str) -> ScramSecret {
    ScramSecret::from_password(password, b"sixteen byte salt", 4096)
}

/// Runs a whole exchange, returning the server (for `client_key`) or the first error.
fn exchange(client_password: &str, secret: ScramSecret) -> Result<ScramServer, ScramError> {
    let mut client = ScramClient::new(client_password, CLIENT_NONCE);
    let mut server = ScramServer::new(secret, SERVER_NONCE);
    let server_first = server.client_first(&client.client_first())?;
    let client_final = client.server_first(&server_first)?;
    let server_final = server.client_final(&client_final)?;
    client.server_final(&server_final)?;
    Ok(server)
}

/// A server that has answered a client-first-message with client nonce "abc".
fn server_after_first(gs2_header: &str) -> ScramServer {
    let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
    server
        .client_first(format!("{gs2_header}n=,r=abc").as_bytes())
        .unwrap();
    server
}

fn combined_nonce() -> String {
    format!("abc{}", BASE64.encode(SERVER_NONCE))
}

#[test]
fn client_and_server_agree() {
    let server = exchange("pencil", secret("pencil")).unwrap();
    let client_key = server.client_key().expect("client key after success");
    assert_eq!(sha256(&client_key), secret("pencil").stored_key);
    let derived = PasswordKeys::derive(
        "pencil",
        b"sixteen byte salt",
        NonZeroU32::new(4096).unwrap(),
    );
    assert_eq!(client_key, derived.client_key);
}

#[test]
fn wrong_password_is_an_invalid_proof_and_ends_the_exchange() {
    let mut client = ScramClient::new("not pencil", CLIENT_NONCE);
    let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
    let server_first = server.client_first(&client.client_first()).unwrap();
    let client_final = client.server_first(&server_first).unwrap();
    assert_eq!(
        server.client_final(&client_final),
        Err(ScramError::InvalidProof)
    );
    assert_eq!(server.client_key(), None);
    assert_eq!(
        server.client_final(&client_final),
        Err(ScramError::OutOfOrder)
    );
}

#[test]
fn a_server_without_the_secret_fails_the_client_check() {
    let mut client = ScramClient::new("pencil", CLIENT_NONCE);
    let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
    let server_first = server.client_first(&client.client_first()).unwrap();
    let client_final = client.server_first(&server_first).unwrap();
    server.client_final(&client_final).unwrap();
    let forged = format!("v={}", BASE64.encode([7u8; 32]));
    assert_eq!(
        client.server_final(forged.as_bytes()),
        Err(ScramError::InvalidServerSignature)
    );
    assert_eq!(
        client.server_final(forged.as_bytes()),
        Err(ScramError::OutOfOrder)
    );
}

#[test]
fn secrets_from_postgresql_verify_and_are_reproduced() {
    for (password, text) in POSTGRES_VERIFIERS {
        let parsed = ScramSecret::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(
            ScramSecret::from_password(password, &parsed.salt, parsed.iterations),
            parsed,
            "password {password:?}"
        );
        let server = exchange(password, parsed).unwrap();
        assert!(server.client_key().is_some());
    }
}

#[test]
fn saslprep_equivalent_passwords_share_a_secret() {
    assert_eq!(secret("\u{2168}"), secret("IX"));
    assert_eq!(secret("I\u{00ad}X"), secret("IX"));
    assert_eq!(secret("a\u{00a0}b"), secret("a b"));
    assert!(exchange("IX", secret("\u{2168}")).is_ok());
    assert_ne!(secret("\u{0627}1"), secret("1\u{0627}"));
}

#[test]
fn pencil_secret_survives_display_and_parse() {
    let salt = BASE64.decode(RFC_SALT).unwrap();
    let secret = ScramSecret::from_password("pencil", &salt, 4096);
    assert_eq!(ScramSecret::parse(&secret.to_string()), Ok(secret.clone()));
    assert_eq!(
        secret.to_string().parse::<ScramSecret>(),
        Ok(secret.clone())
    );
    assert!(secret
        .to_string()
        .starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
}

#[test]
fn rfc7677_vector_server_side() {
    let salt = BASE64.decode(RFC_SALT).unwrap();
    let mut server = ScramServer::new(ScramSecret::from_password("pencil", &salt, 4096), b"");
    server.server_nonce = RFC_SERVER_NONCE.to_owned();
    let server_first = server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(server_first).unwrap(), RFC_SERVER_FIRST);
    let server_final = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(server_final).unwrap(), RFC_SERVER_FINAL);
}

#[test]
fn rfc7677_vector_client_side() {
    let nonce_bytes = BASE64.decode(RFC_CLIENT_NONCE).unwrap();
    let mut client = ScramClient::new("pencil", &nonce_bytes);
    assert_eq!(client.client_first(), b"n,,n=,r=rOprNGfwEbeRWgbNEkqO");
    // The RFC's client names its user; PostgreSQL clients leave it empty.
    client.client_first_bare = RFC_CLIENT_FIRST["n,,".len()..].to_owned();
    let client_final = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(client_final).unwrap(), RFC_CLIENT_FINAL);
    client.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
}

#[test]
fn client_first_names_no_user_and_encodes_the_nonce() {
    let client = ScramClient::new("pw", &[0xfb, 0xff]);
    assert_eq!(client.client_first(), b"n,,n=,r=+/8=");
}

#[test]
fn gs2_header_y_needs_the_matching_channel_binding_attribute() {
    let proof = format!(",p={}", BASE64.encode([0u8; 32]));
    let mut server = server_after_first("y,,");
    let message = format!("c=biws,r={}{proof}", combined_nonce());
    assert_eq!(
        server.client_final(message.as_bytes()),
        Err(ScramError::ChannelBindingMismatch)
    );

    let mut server = server_after_first("n,,");
    let message = format!("c=eSws,r={}{proof}", combined_nonce());
    assert_eq!(
        server.client_final(message.as_bytes()),
        Err(ScramError::ChannelBindingMismatch)
    );

    // With the right attribute, the exchange gets as far as checking the (wrong) proof.
    let mut server = server_after_first("y,,");
    let message = format!("c=eSws,r={}{proof}", combined_nonce());
    assert_eq!(
        server.client_final(message.as_bytes()),
        Err(ScramError::InvalidProof)
    );
}

#[test]
fn unsupported_client_first_features_are_named() {
    let cases: [(&str, ScramError); 6] = [
        (
            "p=tls-server-end-point,,n=,r=abc",
            ScramError::ChannelBindingUnsupported,
        ),
        ("n,a=admin,n=,r=abc", ScramError::AuthzidUnsupported),
        ("n,,m=ext,n=,r=abc", ScramError::ExtensionUnsupported),
        (
            "x,,n=,r=abc",
            ScramError::Malformed("invalid GS2 channel-binding flag"),
        ),
        (
            "n,,n=,r=a\x01c",
            ScramError::Malformed("nonce is empty or not printable"),
        ),
        (
            "n,,n=,r=",
            ScramError::Malformed("nonce is empty or not printable"),
        ),
    ];
    for (message, expected) in cases {
        let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
        assert_eq!(
            server.client_first(message.as_bytes()),
            Err(expected),
            "{message}"
        );
        assert_eq!(
            server.client_first(b"n,,n=,r=abc"),
            Err(ScramError::OutOfOrder)
        );
    }
}

#[test]
fn client_first_ignores_the_user_name_and_extensions() {
    let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
    let reply = server
        .client_first(b"n,,n=someone=2Celse,r=abc,x=ext")
        .unwrap();
    let expected = format!(
        "r={},s={},i=4096",
        combined_nonce(),
        BASE64.encode(b"sixteen byte salt")
    );
    assert_eq!(String::from_utf8(reply).unwrap(), expected);
}

#[test]
fn client_final_is_checked_attribute_by_attribute() {
    let nonce = combined_nonce();
    let proof = BASE64.encode([0u8; 32]);
    let cases: Vec<(String, ScramError)> = vec![
        (format!("c=biws,r=abc,p={proof}"), ScramError::NonceMismatch),
        (
            format!("c=biws,r={nonce}x,p={proof}"),
            ScramError::NonceMismatch,
        ),
        (
            format!("c=biws,r={nonce}"),
            ScramError::Malformed("client-final-message has no proof"),
        ),
        (
            format!("r={nonce},c=biws,p={proof}"),
            ScramError::Malformed("expected channel binding attribute c="),
        ),
        (
            format!("c=biws,r={nonce},p={proof},x=1"),
            ScramError::Malformed("attributes after the proof"),
        ),
        (
            format!("c=biws,r={nonce},p=AAAA"),
            ScramError::Malformed("ClientProof is not 32 base64-encoded bytes"),
        ),
        (
            format!("c=biws,r={nonce},p=!!!"),
            ScramError::Malformed("ClientProof is not 32 base64-encoded bytes"),
        ),
        (
            format!("c=biws,r={nonce},,p={proof}"),
            ScramError::Malformed("expected an attribute of the form x=value"),
        ),
        (
            format!("c=biws,r={nonce},x=ext,p={proof}"),
            ScramError::InvalidProof,
        ),
    ];
    for (message, expected) in cases {
        let mut server = server_after_first("n,,");
        assert_eq!(
            server.client_final(message.as_bytes()),
            Err(expected),
            "{message}"
        );
    }
}

#[test]
fn every_truncated_client_final_is_refused() {
    let mut client = ScramClient::new("pencil", CLIENT_NONCE);
    let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
    let client_first = client.client_first();
    let server_first = server.client_first(&client_first).unwrap();
    let client_final = client.server_first(&server_first).unwrap();
    for end in 0..client_final.len() {
        let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
        server.client_first(&client_first).unwrap();
        assert!(
            server.client_final(&client_final[..end]).is_err(),
            "{end} bytes"
        );
    }
}

#[test]
fn every_truncated_client_first_is_handled() {
    let client_first = ScramClient::new("pencil", CLIENT_NONCE).client_first();
    for end in 0..client_first.len() {
        let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
        let shorter_nonce_is_valid = end > b"n,,n=,r=".len();
        assert_eq!(
            server.client_first(&client_first[..end]).is_ok(),
            shorter_nonce_is_valid
        );
    }
}

#[test]
fn oversized_and_non_utf8_messages_are_refused() {
    let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
    let long = format!("n,,n=,r={}", "a".repeat(MAX_LOGIN_MESSAGE_LEN));
    assert_eq!(
        server.client_first(long.as_bytes()),
        Err(ScramError::Malformed("message too long"))
    );
    let mut server = ScramServer::new(secret("pencil"), SERVER_NONCE);
    assert_eq!(
        server.client_first(b"n,,n=\xff,r=abc"),
        Err(ScramError::Malformed("message is not UTF-8"))
    );
}

#[test]
fn server_first_is_checked_by_the_client() {
    let client_nonce = BASE64.encode(CLIENT_NONCE);
    let cases: Vec<(String, ScramError)> = vec![
        (
            format!("r={client_nonce},s=c2FsdA==,i=4096"),
            ScramError::NonceMismatch,
        ),
        (
            "r=other,s=c2FsdA==,i=4096".to_owned(),
            ScramError::NonceMismatch,
        ),
        (
            format!("m=x,r={client_nonce}x,s=c2FsdA==,i=4096"),
            ScramError::ExtensionUnsupported,
        ),
        (
            format!("r={client_nonce}x,s=!!,i=4096"),
            ScramError::Malformed("salt is not valid base64"),
        ),
        (
            format!("r={client_nonce}x,s=c2FsdA==,i=0"),
            ScramError::Malformed("iteration count is not a positive integer"),
        ),
        (
            format!("r={client_nonce}x,s=c2FsdA==,i=-1"),
            ScramError::Malformed("iteration count is not a positive integer"),
        ),
        (
            format!("r={client_nonce}x,s=c2FsdA==,i=99999999999"),
            ScramError::Malformed("iteration count is not a positive integer"),
        ),
        (
            format!("r={client_nonce}x,s=c2FsdA=="),
            ScramError::Malformed("expected iteration count attribute i="),
        ),
        (
            format!("r={client_nonce}x,i=4096,s=c2FsdA=="),
            ScramError::Malformed("expected salt attribute s="),
        ),
        (
            format!("r={client_nonce}x,s=c2FsdA==,i=1,x=y"),
            ScramError::Malformed("attributes after the iteration count"),
        ),
    ];
    for (message, expected) in cases {
        let mut client = ScramClient::new("pencil", CLIENT_NONCE);
        assert_eq!(
            client.server_first(message.as_bytes()),
            Err(expected),
            "{message}"
        );
        assert_eq!(
            client.server_first(message.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
    }
}

#[test]
fn server_final_errors_are_reported() {
    let start = || {
        let mut client = ScramClient::new("pencil", CLIENT_NONCE);
        let server_first = format!("r={}x,s=c2FsdA==,i=1", BASE64.encode(CLIENT_NONCE));
        client.server_first(server_first.as_bytes()).unwrap();
        client
    };
    let cases: [(&[u8], ScramError); 5] = [
        (
            b"e=invalid-proof",
            ScramError::ServerError("invalid-proof".to_owned()),
        ),
        (
            b"v=!!",
            ScramError::Malformed("server signature is not valid base64"),
        ),
        (b"v=AAAA", ScramError::InvalidServerSignature),
        (
            b"x=AAAA",
            ScramError::Malformed("expected verifier attribute v="),
        ),
        (
            b"v=AAAA,x=1",
            ScramError::Malformed("attributes after the verifier"),
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(start().server_final(message), Err(expected));
    }
    let mut client = ScramClient::new("pencil", CLIENT_NONCE);
    assert_eq!(client.server_final(b"v=AAAA"), Err(ScramError::OutOfOrder));
}

#[test]
fn malformed_secrets_say_what_is_wrong() {
    let key = BASE64.encode([1u8; 32]);
    let cases: Vec<(String, &str)> = vec![
        ("md5abc".to_owned(), "expected SCRAM-SHA-256$"),
        (
            "SCRAM-SHA-256$4096:c2FsdA==".to_owned(),
            "expected SCRAM-SHA-256$",
        ),
        (
            format!("SCRAM-SHA-256$4096$c2FsdA==:{key}:{key}"),
            "expected SCRAM-SHA-256$",
        ),
        (
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}{key}"),
            "expected SCRAM-SHA-256$",
        ),
        (
            format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
            "iteration count",
        ),
        (
            format!("SCRAM-SHA-256$+1:c2FsdA==${key}:{key}"),
            "iteration count",
        ),
        (
            format!("SCRAM-SHA-256$x:c2FsdA==${key}:{key}"),
            "iteration count",
        ),
        (format!("SCRAM-SHA-256$4096:c2Fsd===${key}:{key}"), "salt"),
        (
            format!("SCRAM-SHA-256$4096:c2FsdA==$AAAA:{key}"),
            "StoredKey",
        ),
        (
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}:{key}"),
            "ServerKey",
        ),
        (
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}$"),
            "ServerKey",
        ),
    ];
    for (text, expected) in cases {
        let err = ScramSecret::parse(&text).unwrap_err();
        assert!(err.to_string().contains(expected), "{text}: {err}");
    }
    let minimal = format!("SCRAM-SHA-256$1:${key}:{key}");
    assert_eq!(ScramSecret::parse(&minimal).unwrap().to_string(), minimal);
}

#[test]
fn debug_output_hides_keys_and_passwords() {
    let secret = secret("pencil");
    let stored = BASE64.encode(secret.stored_key);
    let shown = format!(
        "{secret:?} {:?} {:?}",
        ScramServer::new(secret.clone(), SERVER_NONCE),
        ScramClient::new("pencil", CLIENT_NONCE)
    );
    assert!(!shown.contains(&stored), "{shown}");
    assert!(!shown.contains("pencil"), "{shown}");
}

#[test]
#[should_panic(expected = "iteration count must be positive")]
fn zero_iterations_are_a_programming_error() {
    ScramSecret::from_password("pencil", b"salt", 0);
}

/// Runs a whole exchange with a pass-through client, returning the first error.
fn exchange_with_keys(keys: ScramKeys, secret: ScramSecret) -> Result<(), ScramError> {
    let mut client = ScramClient::with_keys(keys, CLIENT_NONCE);
    let mut server = ScramServer::new(secret, b"another server nonce");
    let server_first = server.client_first(&client.client_first())?;
    let client_final = client.server_first(&server_first)?;
    let server_final = server.client_final(&client_final)?;
    client.server_final(&server_final)
}

#[test]
fn keys_recovered_from_a_login_log_in_again_without_the_password() {
    let (_, verifier) = POSTGRES_VERIFIERS[0];
    let stored = ScramSecret::parse(verifier).unwrap();
    let server = exchange("pencil", stored.clone()).unwrap();
    let keys = server.keys().expect("keys after success");
    assert_eq!(keys.server_key, stored.server_key);
    assert_eq!(
        keys,
        ScramKeys::from_password("pencil", &stored.salt, stored.iterations)
    );
    exchange_with_keys(keys, stored).unwrap();
}

#[test]
fn keys_are_refused_by_a_server_with_another_verifier() {
    let keys = exchange("pencil", secret("pencil"))
        .unwrap()
        .keys()
        .unwrap();
    // Same password, other salt: the keys are not password-equivalent there.
    let resalted = ScramSecret::from_password("pencil", b"other salt", 4096);
    assert_eq!(
        exchange_with_keys(keys.clone(), resalted),
        Err(ScramError::InvalidProof)
    );
    assert_eq!(
        exchange_with_keys(keys, secret("not pencil")),
        Err(ScramError::InvalidProof)
    );
}

#[test]
fn a_wrong_server_key_fails_the_server_signature_check() {
    let mut keys = exchange("pencil", secret("pencil"))
        .unwrap()
        .keys()
        .unwrap();
    keys.server_key[0] ^= 1;
    assert_eq!(
        exchange_with_keys(keys, secret("pencil")),
        Err(ScramError::InvalidServerSignature)
    );
}

#[test]
fn no_keys_before_or_after_a_failed_exchange() {
    let server = ScramServer::new(secret("pencil"), SERVER_NONCE);
    assert!(server.keys().is_none());
    let failed = exchange("wrong", secret("pencil"));
    assert_eq!(failed.err(), Some(ScramError::InvalidProof));
    let keys = ScramKeys::from_password("pencil", b"salt", 4096);
    assert_eq!(format!("{keys:?}"), "ScramKeys(<redacted>)");
}

#[test]
fn the_salt_of_a_server_first_message_gives_the_keys_of_the_password() {
    let (salt, iterations) = server_first_salt(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(
        (BASE64.encode(&salt).as_str(), iterations),
        (RFC_SALT, 4096)
    );
    let keys = ScramKeys::from_password("pencil", &salt, iterations);
    let mut client = ScramClient::with_keys(keys, b"unused");
    client.client_nonce = RFC_CLIENT_NONCE.to_owned();
    client.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".to_owned();
    let client_final = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(client_final, RFC_CLIENT_FINAL.as_bytes());
    client.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
    assert!(server_first_salt(b"r=abc,s=!!,i=1").is_err());
    assert!(server_first_salt(b"r=abc,s=c2FsdA==,i=0").is_err());
}
