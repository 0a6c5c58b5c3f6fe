//! The HTTP side: [`app`] assembles every route of the fake into one axum `Router`, and
//! [`Running`] owns the background thread with its own tokio runtime that serves it, so the fake
//! works the same from sync code, from `#[tokio::test]` (paused time included) and from
//! benchmarks; dropping it stops the server and joins the thread.

use std::future::IntoFuture as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use serde_json::json;
use tokio::sync::oneshot;

use crate::state::Shared;
use crate::{auth, codex, instant, openai, record, usage};

/// Every route of the fake.
pub(crate) fn app(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        // auth.openai.com
        .route("/oauth/authorize", get(auth::authorize))
        .route("/oauth/token", post(auth::token))
        .route(
            "/api/accounts/deviceauth/usercode",
            post(auth::device_usercode),
        )
        .route("/api/accounts/deviceauth/token", post(auth::device_token))
        .route("/codex/device", get(auth::device_page))
        // chatgpt.com
        .route("/backend-api/wham/usage", get(usage::usage))
        .route("/backend-api/codex/responses/compact", post(codex::compact))
        .route("/backend-api/codex/models", get(codex::models))
        // api.openai.com
        .route("/v1/models", get(openai::models));
    let router = if shared.config.instant {
        router
            .route("/backend-api/codex/responses", post(instant::codex))
            .route("/v1/chat/completions", post(instant::chat))
            .route("/v1/responses", post(instant::responses))
    } else {
        router
            .route("/backend-api/codex/responses", post(codex::responses))
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/v1/responses", post(openai::responses))
    };
    router
        .fallback(not_found)
        // The recorder buffers whole bodies itself; no extractor limit on top of it.
        .layer(DefaultBodyLimit::disable())
        .layer(from_fn_with_state(Arc::clone(&shared), record::record))
        .with_state(shared)
}

/// 404 for every other route, OpenAI-shaped so clients print something useful.
async fn not_found(method: Method, uri: Uri) -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": {
            "message": format!("FakeOpenAi has no route {method} {}", uri.path()),
            "type": "invalid_request_error", "param": null, "code": "unknown_route"
        }})),
    )
}

/// The server thread.
pub(crate) struct Running {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The process whose thread serves (a forked child has a copy of this, not the thread).
    pid: u32,
}

impl Running {
    /// Serves `router` on `listener` from a new thread with a `workers`-thread runtime; returns
    /// once the listener is registered with that runtime.
    pub(crate) fn spawn(
        listener: std::net::TcpListener,
        router: Router,
        workers: usize,
    ) -> io::Result<Running> {
        listener.set_nonblocking(true)?;
        let addr: SocketAddr = listener.local_addr()?;
        // Linux shows 15 characters of a thread name; this fits and tells instances apart.
        let name = format!("fakeoai-{}", addr.port());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers.max(1))
                    .thread_name(name)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let listener = listener.tap_io(|tcp| {
                        // Small SSE frames must not wait for Nagle.
                        let _ = tcp.set_nodelay(true);
                    });
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        _ = axum::serve(listener, router).into_future() => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task, hanging streams included.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })?;
        let running = Running {
            stop: Some(stop_tx),
            thread: Some(thread),
            pid: std::process::id(),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(running),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other(
                "FakeOpenAi: the server thread died at start",
            )),
        }
    }

    /// Stops the server and joins its thread (idempotent). In a forked child, which has no such
    /// thread (joining it panicked), it only forgets them: the parent's server goes on.
    pub(crate) fn stop(&mut self) {
        if std::process::id() != self.pid {
            std::mem::forget(self.stop.take());
            std::mem::forget(self.thread.take());
            return;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
