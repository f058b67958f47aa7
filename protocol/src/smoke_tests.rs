//! Every decoder fed random and mutated input must not panic: a cheap, deterministic
//! stand-in for the targets in `fuzz/` that runs with every `cargo test`.

use bytes::BytesMut;

use crate::backend::*;
use crate::frame::{
    backend_header, frontend_header, split_message, write_message, MAX_LOGIN_MESSAGE_LEN,
};
use crate::frontend::*;
use crate::scram::{ScramClient, ScramSecret, ScramServer};
use crate::startup::*;
use crate::test_support::{mutate, Rng};

fn seeds(secret: &ScramSecret) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let mut push = |encode: &dyn Fn(&mut BytesMut)| {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        seeds.push(buf.to_vec());
    };
    push(&|buf| encode_startup(buf, &[("user", "u"), ("database", "d")]));
    push(&|buf| encode_ssl_request(buf));
    push(&|buf| encode_cancel_request(buf, CancelKey { pid: 1, secret: 2 }));
    push(&|buf| encode_auth_sasl(buf, &["SCRAM-SHA-256"]));
    push(&|buf| encode_auth_md5(buf, *b"salt"));
    push(&|buf| encode_error(buf, "ERROR", "42000", "message"));
    push(&|buf| encode_parameter_status(buf, "a", "b"));
    push(&|buf| encode_backend_key_data(buf, CancelKey { pid: 1, secret: 2 }));
    push(&|buf| encode_sasl_initial_response(buf, "SCRAM-SHA-256", b"n,,n=,r=abc"));
    push(&|buf| encode_password(buf, b"secret"));
    push(&|buf| write_message(buf, b'Z', |body| body.extend_from_slice(b"I")));

    let mut client = ScramClient::new("pencil", b"client");
    let mut server = ScramServer::new(secret.clone(), b"server");
    let client_first = client.client_first();
    let server_first = server.client_first(&client_first).unwrap();
    let client_final = client.server_first(&server_first).unwrap();
    let server_final = server.client_final(&client_final).unwrap();
    seeds.push([client_first, client_final].join(&0));
    seeds.push([server_first, server_final].join(&0));
    seeds
}

fn decode_everything(input: &[u8], secret: &ScramSecret) {
    let _ = parse_initial_packet(input);
    let _ = frontend_header(input);
    let _ = backend_header(input);
    let mut buf = BytesMut::from(input);
    while let Ok(Some(_)) = split_message(&mut buf, MAX_LOGIN_MESSAGE_LEN) {}
    let body = input.get(5..).unwrap_or_default();
    let _ = parse_auth_request(body);
    let _ = parse_parameter_status(body);
    let _ = parse_backend_key_data(body);
    let _ = parse_error_fields(body);
    let _ = parse_password(body);
    let _ = parse_sasl_initial_response(body);

    let (first, last) = match input.iter().position(|&b| b == 0) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let mut server = ScramServer::new(secret.clone(), b"server");
    if server.client_first(first).is_ok() {
        let verified = server.client_final(last).is_ok();
        assert_eq!(verified, server.client_key().is_some());
    }
    let mut client = ScramClient::new("pencil", b"client");
    let cheap = !String::from_utf8_lossy(first).contains("i=") || first.ends_with(b"i=1");
    if cheap && client.server_first(first).is_ok() {
        let _ = client.server_final(last);
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let secret = ScramSecret::from_password("pencil", b"salt", 1);
    let seeds = seeds(&secret);
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    for round in 0..20_000 {
        let input = if round % 5 == 0 {
            (0..rng.below(64)).map(|_| rng.byte()).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        decode_everything(&input, &secret);
    }
}
