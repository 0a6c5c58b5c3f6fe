//! HTTPS to the upstream, as with the real backend: `serve` (a child) reaches the fake through
//! a TLS front that offers HTTP/2 and HTTP/1.1, trusts it only when the environment names its
//! CA (`SSL_CERT_FILE`, read by the platform verifier on Linux), and refuses it otherwise.
//!
//! `tls/` holds a test CA and a certificate for 127.0.0.1 it signed (valid until 2126), made with:
//! ```sh
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
//!   -out ca.pem -days 36500 -subj "/CN=codexpool test CA" \
//!   -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
//! openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout upstream.key \
//!   -out upstream.csr -subj "/CN=127.0.0.1"
//! openssl x509 -req -in upstream.csr -CA ca.pem -CAkey ca.key -out upstream.pem -days 36500 \
//!   -extfile <(printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n')
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::support::{Env, stop};

fn tls_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cli/tls")
        .join(name)
}

/// What the front saw of each connection: the protocol the client chose, or why the handshake
/// failed.
type Handshakes = Arc<Mutex<Vec<Result<String, String>>>>;

/// Freezes the connections a [`tls_front`] has open: they stay open but carry no more bytes
/// either way, as a connection does whose network went away without a close.
#[derive(Clone)]
struct Freeze {
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    frozen: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Freeze {
    fn open_connections(&self) {
        let n = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
        self.frozen.send_replace(n);
    }
}

/// A TLS front for `backend` (host:port): terminates TLS with the test certificate and relays
/// the bytes. Runs on the test's runtime, so it stops with the test. Returns its origin.
async fn tls_front(backend: String) -> (String, Handshakes, Freeze) {
    let certs = CertificateDer::pem_file_iter(tls_file("upstream.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_file("upstream.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("https://{}", listener.local_addr().unwrap());
    let seen = Handshakes::default();
    let log = seen.clone();
    let freeze = Freeze {
        accepted: Arc::default(),
        frozen: Arc::new(tokio::sync::watch::Sender::new(0)),
    };
    let front = freeze.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = front
                .accepted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut frozen = front.frozen.subscribe();
            let (acceptor, backend, log) = (acceptor.clone(), backend.clone(), log.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => return log.lock().unwrap().push(Err(e.to_string())),
                };
                let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default();
                log.lock()
                    .unwrap()
                    .push(Ok(String::from_utf8_lossy(alpn).into_owned()));
                let mut plain = TcpStream::connect(&backend).await.unwrap();
                let froze = tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut tls, &mut plain) => false,
                    r = frozen.wait_for(|f| *f > n) => r.is_ok(),
                };
                if froze {
                    // Open and silent until the test ends.
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    (origin, seen, freeze)
}

/// The fake's Codex base URL with its origin swapped for the TLS front's.
async fn upstream_over_tls(env: &Env) -> (String, Handshakes, Freeze) {
    let plain = env.fake.codex_base_url();
    let rest = plain.strip_prefix("http://").unwrap();
    let (backend, path) = rest.split_once('/').unwrap();
    let (origin, seen, freeze) = tls_front(backend.to_string()).await;
    (format!("{origin}/{path}"), seen, freeze)
}

/// A chat request. A test's requests go on one `client`, so they share a keep-alive connection
/// to the server: one HTTP thread serves them, from its pool of upstream connections.
fn chat(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    stream: bool,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({
            "model": "gpt-5-codex",
            "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}],
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_speaks_http2_over_tls_to_an_upstream_whose_ca_the_environment_trusts() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let secret = env.key_secret("ci");
    let (upstream, handshakes, _) = upstream_over_tls(&env).await;
    let ca = tls_file("ca.pem").display().to_string();
    // One HTTP thread, so one upstream pool: on a loaded machine the client may open a second
    // connection to the gateway (its first not back in its pool yet), which could land on
    // another thread, with a pool and an upstream connection of its own.
    let (url, child) = env.serve(&[
        ("CODEXPOOL_UPSTREAM_BASE_URL", upstream.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
        ("CODEXPOOL_HTTP_WORKER_FACTOR", "0"),
        ("CODEXPOOL_HTTP_WORKER_MIN", "1"),
    ]);

    let client = reqwest::Client::new();
    let res = chat(&client, &url, &secret, false).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-1.");

    let res = chat(&client, &url, &secret, true).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains(r#"{"content":"Hello"}"#), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Both requests went over one pooled HTTP/2 connection.
    assert_eq!(*handshakes.lock().unwrap(), [Ok("h2".to_string())]);
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_upstream_certificate_nobody_vouches_for() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let secret = env.key_secret("ci");
    let (upstream, handshakes, _) = upstream_over_tls(&env).await;
    let (url, child) = env.serve(&[("CODEXPOOL_UPSTREAM_BASE_URL", upstream.as_str())]);

    let res = chat(&reqwest::Client::new(), &url, &secret, false)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let v: Value = res.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("certificate"), "{message}");
    // The front records the failed handshake on its own task: it may land just after the 502.
    for _ in 0..100 {
        if !handshakes.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = handshakes.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(Result::is_err),
        "{seen:?}"
    );
    stop(child);
}

/// A pooled HTTP/2 connection that dies without a close (the network went away) is found by
/// keep-alive pings and dropped: the next request goes on a new connection at once, instead
/// of waiting on the dead one for the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_connection_is_dropped_before_a_request_waits_on_it() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let secret = env.key_secret("ci");
    let (upstream, handshakes, freeze) = upstream_over_tls(&env).await;
    let ca = tls_file("ca.pem").display().to_string();
    let (url, child) = env.serve(&[
        ("CODEXPOOL_UPSTREAM_BASE_URL", upstream.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
        ("CODEXPOOL_UPSTREAM_KEEPALIVE_SECS", "1"),
        ("CODEXPOOL_UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "120"),
    ]);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let res = chat(&client, &url, &secret, false).send().await.unwrap();
    assert_eq!(res.status(), 200);

    freeze.open_connections();
    // Two unanswered pings' worth of time: the pool has dropped the connection.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let res = chat(&client, &url, &secret, false)
        .send()
        .await
        .expect("answered on a new connection, not after the 120 s idle timeout");
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-1.");
    assert_eq!(
        *handshakes.lock().unwrap(),
        [Ok("h2".to_string()), Ok("h2".to_string())]
    );
    stop(child);
}
