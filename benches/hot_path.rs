//! Micro-benchmarks of the per-message work on sluice's hot path: framing a batch of typical
//! messages in each direction (header checks plus the copy a forward costs), the
//! ReadyForQuery status scan of a server's answer, the Bind rewrite of the prepared-statement
//! path (parse + re-encode under sluice's name), and the prepared-statement lookup of a Bind
//! (the client's name to the statement, then whether the server connection has it).
//!
//! The lookup lives in the `sluice` binary crate, which a bench cannot link against; its two
//! modules (the client's side and the server connection's) depend on nothing else in the
//! crate, so they are compiled in here from their files.
//!
//! `cargo bench --bench hot_path` measures; under `cargo test --all-targets` criterion runs
//! each benchmark once as a test (it does so whenever `--bench` is not passed).

// The bench uses only the lookup; the modules' own unit tests are not built here.
#[allow(dead_code)]
#[path = "../src/server/statements.rs"]
pub mod server_statements;
#[allow(dead_code, unused_imports)]
#[path = "../src/session/statements.rs"]
mod statements;
/// The path the client's side uses for the server's (`crate::server::statements`).
mod server {
    pub use super::server_statements as statements;
}

use bytes::{BufMut, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice_protocol::backend;
use sluice_protocol::extended::{encode_bind, encode_parse, parse_bind};
use sluice_protocol::frame::{backend_header, frontend_header, write_message, HEADER_LEN};
use sluice_protocol::frontend;

/// What `pgbench -S -M extended` sends per transaction: Parse (unnamed), Bind, Describe,
/// Execute, Sync. `-M prepared` sends the same without the Parse.
fn extended_batch() -> BytesMut {
    let mut buf = BytesMut::new();
    encode_parse(
        &mut buf,
        b"",
        b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0\0\0",
    );
    encode_bind(&mut buf, b"", b"", &bind_rest(b"48213"));
    write_message(&mut buf, b'D', |b| {
        b.put_u8(b'P');
        b.put_u8(0);
    });
    write_message(&mut buf, b'E', |b| {
        b.put_u8(0);
        b.put_i32(0);
    });
    frontend::encode_sync(&mut buf);
    buf
}

/// Bind after the names: one text parameter, no result formats.
fn bind_rest(value: &[u8]) -> Vec<u8> {
    let mut rest = Vec::new();
    rest.extend_from_slice(&0i16.to_be_bytes()); // parameter format codes
    rest.extend_from_slice(&1i16.to_be_bytes()); // parameter count
    rest.extend_from_slice(&(value.len() as i32).to_be_bytes());
    rest.extend_from_slice(value);
    rest.extend_from_slice(&0i16.to_be_bytes()); // result format codes
    rest
}

/// A server's answer to a query returning `rows` rows of three columns.
fn result_batch(rows: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    backend::encode_row_description(&mut buf, &["aid", "abalance", "filler"]);
    for i in 0..rows {
        let aid = i.to_string();
        backend::encode_data_row(
            &mut buf,
            &[
                Some(&aid),
                Some("0"),
                Some("                                        "),
            ],
        );
    }
    backend::encode_command_complete(&mut buf, &format!("SELECT {rows}"));
    backend::encode_ready_for_query(&mut buf, b'I');
    buf
}

/// Walks every frontend header of `buf`, as the relay does before forwarding; returns the
/// message count.
fn frame_frontend(buf: &[u8]) -> usize {
    let mut at = 0;
    let mut messages = 0;
    while let Some(header) = frontend_header(&buf[at..]).expect("valid batch") {
        at += header.message_len();
        messages += 1;
    }
    messages
}

fn frame_backend(buf: &[u8]) -> usize {
    let mut at = 0;
    let mut messages = 0;
    while let Some(header) = backend_header(&buf[at..]).expect("valid batch") {
        at += header.message_len();
        messages += 1;
    }
    messages
}

/// The ReadyForQuery scan: walk the server's headers and note the status byte of each
/// ReadyForQuery (the relay's `scan_server` without its bookkeeping). Returns the last status
/// and how many were seen.
fn ready_for_query_status(buf: &[u8]) -> (u8, usize) {
    let mut at = 0;
    let mut status = 0;
    let mut ready = 0;
    while let Some(header) = backend_header(&buf[at..]).expect("valid batch") {
        if header.tag == b'Z' {
            status = buf[at + HEADER_LEN];
            ready += 1;
        }
        at += header.message_len();
    }
    (status, ready)
}

/// `copies` copies of `one` back to back, as pipelined or coalesced reads deliver them.
fn repeated(one: &[u8], copies: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(one.len() * copies);
    for _ in 0..copies {
        buf.extend_from_slice(one);
    }
    buf
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");

    let frontend = repeated(&extended_batch(), 16);
    let messages = frame_frontend(&frontend);
    group.throughput(Throughput::Elements(messages as u64));
    group.bench_function("frontend_extended_x16", |b| {
        b.iter(|| frame_frontend(black_box(&frontend)))
    });
    // Framing plus the copy into the server's write buffer that forwarding costs.
    let mut out = BytesMut::with_capacity(frontend.len());
    group.bench_function("frontend_extended_x16_forward", |b| {
        b.iter(|| {
            out.clear();
            let n = frame_frontend(black_box(&frontend));
            out.extend_from_slice(&frontend);
            black_box(&out);
            n
        })
    });

    for rows in [1, 100] {
        let backend = result_batch(rows);
        let messages = frame_backend(&backend);
        group.throughput(Throughput::Elements(messages as u64));
        group.bench_function(format!("backend_datarow_x{rows}"), |b| {
            b.iter(|| frame_backend(black_box(&backend)))
        });
        let mut out = BytesMut::with_capacity(backend.len());
        group.bench_function(format!("backend_datarow_x{rows}_forward"), |b| {
            b.iter(|| {
                out.clear();
                let n = frame_backend(black_box(&backend));
                out.extend_from_slice(&backend);
                black_box(&out);
                n
            })
        });
    }
    group.finish();
}

fn ready_for_query(c: &mut Criterion) {
    let mut group = c.benchmark_group("ready_for_query");
    // One pgbench -S answer (simple protocol), and 16 pipelined extended answers.
    let single = result_batch(1);
    let mut extended_one = BytesMut::new();
    write_message(&mut extended_one, b'1', |_| {});
    write_message(&mut extended_one, b'2', |_| {});
    extended_one.extend_from_slice(&result_batch(1));
    let pipelined = repeated(&extended_one, 16);
    assert_eq!(ready_for_query_status(&pipelined), (b'I', 16));
    for (name, buf) in [("simple_answer", &single), ("extended_x16", &pipelined)] {
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_function(name, |b| b.iter(|| ready_for_query_status(black_box(buf))));
    }
    group.finish();
}

fn bind_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("bind_rewrite");
    let mut message = BytesMut::new();
    encode_bind(&mut message, b"", b"P0_1", &bind_rest(b"48213"));
    let body = message[HEADER_LEN..].to_vec();
    let server_name = b"sluice_3f9a0c1d2e4b5a69";
    let mut out = BytesMut::with_capacity(256);
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_bind_reencode", |b| {
        b.iter(|| {
            out.clear();
            let bind = parse_bind(black_box(&body)).expect("valid Bind");
            encode_bind(&mut out, bind.portal, server_name, bind.rest);
            black_box(&out);
        })
    });
    group.finish();
}

/// A Bind of one of a client's 50 prepared statements: find the statement by the client's
/// name, then check (and mark used) that the server connection has it prepared, as the
/// relay does before rewriting the Bind. Half the server's statements are another client's.
fn statement_lookup(c: &mut Criterion) {
    use server::statements::ServerStatements;
    use statements::{ClientStatements, Confirm, ResponseFilter};
    let mut client = ClientStatements::new(1);
    let mut server = ServerStatements::new();
    let mut filter = ResponseFilter::default();
    let names: Vec<Vec<u8>> = (0..50).map(|i| format!("P_{i}").into_bytes()).collect();
    for (i, name) in names.iter().enumerate() {
        let rest = format!("SELECT abalance FROM pgbench_accounts WHERE aid = $1 -- {i}\0\0\0");
        let statement = client.prepare(name, rest.as_bytes());
        let other = statements::Statement::new(format!("SELECT {i}\0\0\0").as_bytes());
        for server_name in [statement.server_name.clone(), other.server_name.clone()] {
            filter.parse_sent(
                true,
                Confirm::Prepared {
                    server_name,
                    client: None,
                },
            );
            filter.parse_complete(&mut server);
        }
    }
    let mut group = c.benchmark_group("statement_lookup");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bind_of_a_prepared_statement", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % names.len();
            let statement = client.get(black_box(&names[i])).expect("prepared");
            black_box(server.touch(&statement.server_name))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    framing,
    ready_for_query,
    bind_rewrite,
    statement_lookup
);
criterion_main!(benches);
