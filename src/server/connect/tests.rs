//! Unit tests of `server::connect` against a scripted server: the credentials a tenant
//! without a plaintext password logs in with (SCRAM keys, md5 hash, learned at login).

use super::*;
use sluice_protocol::frame::split_message;
use sluice_protocol::md5::md5_password_hash;
use sluice_protocol::scram::{ScramSecret, ScramServer};
use std::time::Duration;
use tokio::net::TcpListener;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";

/// How the scripted server authenticates its one client.
#[derive(Clone)]
enum Demand {
    Md5 { stored: String },
    Scram(ScramSecret),
}

/// The next message, or `None` when the client hung up.
async fn read_tagged(socket: &mut TcpStream, buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    loop {
        if let Some(message) = split_message(buf, 1 << 16).unwrap() {
            return Some(message);
        }
        if socket.read_buf(buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

/// Accepts one connection, authenticates it as `demand` says and answers true when the
/// client proved itself (then completes the login), false when it did not or hung up.
async fn scripted_server(listener: TcpListener, demand: Demand) -> bool {
    authenticate_one(listener, demand).await.unwrap_or(false)
}

async fn authenticate_one(listener: TcpListener, demand: Demand) -> Option<bool> {
    let (mut socket, _) = listener.accept().await.unwrap();
    let len = socket.read_i32().await.unwrap() as usize;
    let mut startup = vec![0; len - 4];
    socket.read_exact(&mut startup).await.unwrap();
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let proven = match demand {
        Demand::Md5 { stored } => {
            let salt = [1, 2, 3, 4];
            backend::encode_auth_md5(&mut out, salt);
            socket.write_all(&out.split()).await.unwrap();
            let (_, body) = read_tagged(&mut socket, &mut buf).await?;
            let response = frontend::parse_password(&body).unwrap();
            response == md5_salted(&stored, salt).as_bytes()
        }
        Demand::Scram(secret) => {
            backend::encode_auth_sasl(&mut out, &["SCRAM-SHA-256"]);
            socket.write_all(&out.split()).await.unwrap();
            let mut server = ScramServer::new(secret, b"scripted server nonce");
            let (_, body) = read_tagged(&mut socket, &mut buf).await?;
            let (_, first) = frontend::parse_sasl_initial_response(&body).unwrap();
            backend::encode_auth_sasl_continue(&mut out, &server.client_first(first).unwrap());
            socket.write_all(&out.split()).await.unwrap();
            let (_, body) = read_tagged(&mut socket, &mut buf).await?;
            match server.client_final(&body) {
                Ok(last) => {
                    backend::encode_auth_sasl_final(&mut out, &last);
                    true
                }
                Err(_) => false,
            }
        }
    };
    if proven {
        backend::encode_auth_ok(&mut out);
        backend::encode_backend_key_data(&mut out, CancelKey { pid: 7, secret: 8 });
        backend::encode_ready_for_query(&mut out, b'I');
    } else {
        backend::encode_error(&mut out, "FATAL", "28P01", "password authentication failed");
    }
    let _ = socket.write_all(&out).await;
    Some(proven)
}

/// Logs in to a scripted server demanding `demand` with `credentials`; returns what the
/// connect gave and whether the server saw a valid proof.
async fn log_in(
    demand: Demand,
    credentials: ServerCredentials,
) -> (Result<(), ConnectError>, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(scripted_server(listener, demand));
    let target = ServerTarget {
        host: "127.0.0.1".into(),
        port,
        database: "db".into(),
        user: USER.into(),
        credentials,
        connect_timeout: Duration::from_secs(5),
    };
    let registry = Arc::new(ServerRegistry::default());
    let tcp = TcpOptions {
        keepalive: Duration::from_secs(60),
        user_timeout: Duration::from_secs(60),
    };
    let connected = connect(&target, None, tcp, &registry).await.map(drop);
    (connected, server.await.unwrap())
}

fn verifier() -> ScramSecret {
    ScramSecret::from_password(PASSWORD, b"scripted salt", 4096)
}

#[tokio::test]
async fn an_md5_hash_answers_an_md5_challenge() {
    let stored = md5_password_hash(USER, PASSWORD);
    let demand = Demand::Md5 {
        stored: stored.clone(),
    };
    let (connected, proven) = log_in(demand, ServerCredentials::Md5Hash(stored)).await;
    assert!(connected.is_ok() && proven, "{connected:?}");
}

#[tokio::test]
async fn scram_keys_log_in_without_the_password() {
    let secret = verifier();
    let keys = ScramKeys::from_password(PASSWORD, &secret.salt, secret.iterations);
    let (connected, proven) =
        log_in(Demand::Scram(secret), ServerCredentials::ScramKeys(keys)).await;
    assert!(connected.is_ok() && proven, "{connected:?}");
}

#[tokio::test]
async fn keys_of_another_password_are_refused_by_the_server() {
    let secret = verifier();
    let keys = ScramKeys::from_password("wrong", &secret.salt, secret.iterations);
    let (connected, proven) =
        log_in(Demand::Scram(secret), ServerCredentials::ScramKeys(keys)).await;
    assert!(!proven);
    assert!(
        matches!(&connected, Err(ConnectError::Rejected { code, .. }) if code == "28P01"),
        "{connected:?}"
    );
}

#[tokio::test]
async fn learned_credentials_are_used_once_a_client_has_logged_in() {
    let learned = Arc::new(LearnedCredentials::default());
    let stored = md5_password_hash(USER, PASSWORD);
    let demand = Demand::Md5 {
        stored: stored.clone(),
    };
    let credentials = ServerCredentials::Learned(learned.clone());
    let (connected, _) = log_in(demand.clone(), credentials.clone()).await;
    assert!(
        matches!(connected, Err(ConnectError::NoPassword)),
        "{connected:?}"
    );
    learned.learn(ServerCredentials::Md5Hash(stored));
    let (connected, proven) = log_in(demand, credentials).await;
    assert!(connected.is_ok() && proven, "{connected:?}");
}

#[tokio::test]
async fn credentials_that_cannot_answer_the_method_are_named() {
    let stored = md5_password_hash(USER, PASSWORD);
    let (connected, _) = log_in(
        Demand::Scram(verifier()),
        ServerCredentials::Md5Hash(stored),
    )
    .await;
    let error = connected.unwrap_err();
    assert_eq!(
        error.to_string(),
        "server asks for SCRAM-SHA-256 but sluice knows only an md5 hash for this role"
    );
    let keys = ScramKeys::from_password(PASSWORD, b"salt", 4096);
    let md5 = Demand::Md5 {
        stored: md5_password_hash(USER, PASSWORD),
    };
    let (connected, _) = log_in(md5, ServerCredentials::ScramKeys(keys)).await;
    assert!(matches!(
        connected,
        Err(ConnectError::CredentialsUnsuitable { method: "md5", .. })
    ));
}

#[tokio::test]
async fn a_plaintext_password_derives_its_scram_keys_once_per_salt() {
    let password = ServerPassword::new(PASSWORD);
    for _ in 0..2 {
        let credentials = ServerCredentials::Password(password.clone());
        let (connected, proven) = log_in(Demand::Scram(verifier()), credentials).await;
        assert!(connected.is_ok() && proven, "{connected:?}");
    }
    let kept = |password: &ServerPassword| {
        let derived = password.derived.lock().unwrap();
        let derived = derived.as_ref().expect("keys kept after a login");
        (derived.salt.clone(), derived.iterations)
    };
    assert_eq!(kept(&password), (b"scripted salt".to_vec(), 4096));
    let resalted = ScramSecret::from_password(PASSWORD, b"another salt", 4096);
    let credentials = ServerCredentials::Password(password.clone());
    let (connected, proven) = log_in(Demand::Scram(resalted), credentials).await;
    assert!(
        connected.is_ok() && proven,
        "a new salt derives new keys: {connected:?}"
    );
    let wrong = ServerCredentials::Password(ServerPassword::new("wrong"));
    let (_, proven) = log_in(Demand::Scram(verifier()), wrong).await;
    assert!(!proven);
}

#[test]
fn server_sockets_get_keepalive_and_a_user_timeout() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let options = TcpOptions {
            keepalive: Duration::from_secs(42),
            user_timeout: Duration::from_secs(7),
        };
        options.apply(&tcp).unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(42)
        );
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(7))
        );
        // Zero turns keepalive off and leaves the kernel's user timeout.
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        TcpOptions {
            keepalive: Duration::ZERO,
            user_timeout: Duration::ZERO,
        }
        .apply(&tcp)
        .unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert!(!socket.keepalive().unwrap());
        assert_eq!(socket.tcp_user_timeout().unwrap(), None);
    });
}
