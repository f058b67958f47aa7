//! The HTTP endpoint on `metrics_listen`: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive), `/readyz` (accepting traffic: not draining, not paused, some
//! cluster reachable) and `/` (a plain status page). Rendering runs on the blocking pool,
//! off the proxy's hot path.
//!
//! Serves; what the pages say is `prometheus`'s and `status_page`'s business.

use super::{prometheus, status_page};
use crate::shared::Shared;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{debug, warn};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves HTTP/1.1 on `listener` until the process exits.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(shared.clone(), request));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

async fn respond(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"));
    }
    let response = match request.uri().path() {
        "/metrics" => {
            let rendering = tokio::task::spawn_blocking(move || prometheus::render(&shared));
            match rendering.await {
                Ok(body) => typed(StatusCode::OK, PROMETHEUS_TEXT, body),
                Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n"),
            }
        }
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if shared.is_ready() {
                plain(StatusCode::OK, "ready\n")
            } else {
                plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/" => {
            let page = tokio::task::spawn_blocking(move || status_page::render(&shared));
            match page.await {
                Ok(html) => typed(StatusCode::OK, "text/html; charset=utf-8", html),
                Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n"),
            }
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    typed(status, "text/plain; charset=utf-8", body.to_owned())
}

fn typed(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        content_type.parse().expect("static header value"),
    );
    response
}
