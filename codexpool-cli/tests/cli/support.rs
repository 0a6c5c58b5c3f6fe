//! The harness: a temporary directory with the database, a `FakeOpenAi` playing OpenAI, and
//! the real `codexpool` binary run against both with a clean environment.

use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use assert_cmd::Command;
use codexpool_core::{Config, Pool};
use codexpool_testkit::{FakeAccount, FakeOpenAi};
use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_codexpool");

pub struct Env {
    pub dir: TempDir,
    pub fake: FakeOpenAi,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("codexpool-cli-test-")
                .tempdir()
                .unwrap(),
            fake: FakeOpenAi::start().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The database, in a directory that does not exist until the first command.
    pub fn db(&self) -> PathBuf {
        self.path().join("data").join("codexpool.db")
    }

    /// The environment every child gets: only what the test says, plus PATH.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("HOME".into(), self.path().display().to_string()),
            ("NO_COLOR".into(), "1".into()),
            ("CODEXPOOL_DISABLE_POLLING".into(), "1".into()),
            ("CODEXPOOL_ISSUER".into(), self.fake.issuer()),
            (
                "CODEXPOOL_USAGE_BASE_URL".into(),
                self.fake.usage_base_url(),
            ),
            (
                "CODEXPOOL_UPSTREAM_BASE_URL".into(),
                self.fake.codex_base_url(),
            ),
        ];
        if let Ok(p) = std::env::var("PATH") {
            v.push(("PATH".into(), p));
        }
        v
    }

    /// `codexpool --db <tmp db> …`, in the temporary directory, with a clean environment.
    pub fn cmd(&self) -> Command {
        let mut c = self.cmd_without_db();
        c.arg("--db").arg(self.db());
        c
    }

    /// [`cmd`](Self::cmd) without `--db`: the database is what the environment names.
    pub fn cmd_without_db(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .envs(self.vars())
            .current_dir(self.path())
            .timeout(Duration::from_secs(60));
        c
    }

    /// The same command line for a long-running child.
    pub fn spawn(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Spawned {
        self.spawn_on(self.db().as_os_str(), args, extra_env)
    }

    /// [`spawn`](Self::spawn) with `--db db` (relative to the temporary directory).
    pub fn spawn_on(
        &self,
        db: &std::ffi::OsStr,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Spawned {
        let child = std::process::Command::new(BIN)
            .env_clear()
            .envs(self.vars())
            .envs(extra_env.iter().copied())
            .current_dir(self.path())
            .arg("--db")
            .arg(db)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Spawned(child)
    }

    /// Starts `serve` on a free port, with these variables on top of the usual ones; its URL
    /// and the child.
    pub fn serve(&self, extra_env: &[(&str, &str)]) -> (String, Spawned) {
        let mut child = self.spawn(&["serve", "--addr", "127.0.0.1:0"], extra_env);
        let mut lines = Lines::new(child.stdout.take().unwrap());
        let url = lines.find(|l| {
            l.split_once("listening on ")
                .map(|(_, u)| u.trim().to_string())
        });
        (url, child)
    }

    /// Runs a command; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let o = self.cmd().args(args).output().unwrap();
        let (out, err) = texts(&o);
        assert!(!err.contains("panicked"), "{err}");
        (o.status.code().unwrap_or(-1), out, err)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "codexpool {args:?} failed ({}):\n{}{stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
        );
        // Another process holding the database (a server under load) is waited for, never
        // reported: not even as a warning of a command that succeeded.
        assert!(!stderr.contains("locked"), "codexpool {args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must succeed without a word on stderr (no warning, no note).
    pub fn ok_silently(&self, args: &[&str]) {
        let (code, stdout, stderr) = self.run(args);
        assert!(
            code == 0 && stderr.is_empty(),
            "codexpool {args:?}: {stdout}{stderr}"
        );
    }

    /// Runs a command with `--json` that must succeed; returns the parsed stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Creates a platform key through the CLI; returns its secret.
    pub fn key_secret(&self, name: &str) -> String {
        self.json(&["key", "create", "--name", name])["secret"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Adds fake accounts and imports their auth.json files through the CLI (one folder, in
    /// name order); returns their local ids in that order.
    pub fn add_accounts(&self, names: &[&str]) -> Vec<String> {
        let dir = self.path().join("homes");
        std::fs::create_dir_all(&dir).unwrap();
        for n in names {
            self.fake
                .add_account(FakeAccount::new(*n).email(format!("{n}@example.com")));
            std::fs::write(
                dir.join(format!("{n}.json")),
                serde_json::to_vec_pretty(&self.fake.auth_json(n)).unwrap(),
            )
            .unwrap();
        }
        self.ok(&["-q", "account", "import", dir.to_str().unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
        let list = self.json(&["account", "list"]);
        names
            .iter()
            .map(|n| {
                list.as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["chatgpt_account_id"] == *n)
                    .unwrap_or_else(|| panic!("{n} not imported: {list}"))["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Makes the (empty) database, as the first command that stores something would.
    pub fn make_db(&self) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { self.pool().await.flush().await.unwrap() });
        assert!(self.db().exists());
    }

    /// The pool on the same database, opened in the test process (as another process would).
    pub async fn pool(&self) -> Pool {
        let config = Config::default()
            .with("DB_PATH", self.db().to_str().unwrap())
            .unwrap();
        Pool::open(config).await.unwrap()
    }

    /// insta settings that hide what changes between runs: ids, secrets, ports, paths, times.
    pub fn settings(&self) -> insta::Settings {
        let mut s = insta::Settings::clone_current();
        s.set_prepend_module_to_snapshot(false);
        let tmp = regex_escape(&self.path().display().to_string());
        s.add_filter(&tmp, "[TMP]");
        // Replacements keep the width of what they replace, so tables stay aligned.
        s.add_filter(r"sk-cp-[A-Za-z0-9]{48}", "sk-cp-[SECRET]");
        s.add_filter(r"sk-cp-…[A-Za-z0-9]{4}", "sk-cp-…XXXX");
        s.add_filter(r"\b[0-9a-f]{12}\b", "[ID........]");
        // Ephemeral ports have five digits (Linux 32768-60999, macOS 49152-65535).
        s.add_filter(r"127\.0\.0\.1:\d{5}\b", "127.0.0.1:PORT_");
        s.add_filter(
            r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}",
            "YYYY-MM-DD hh:mm:ss",
        );
        s.add_filter(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "[TIME]");
        s
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The status a short chat request with `secret` gets from the gateway at `url`.
pub async fn chat_status(url: &str, secret: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&serde_json::json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// stdout and stderr of a finished command, as text.
pub fn texts(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Reads a child's stdout line by line on a thread.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(stdout: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Read to the end even once nobody listens: closing the pipe early would make
                // the child's next line fail with EPIPE, and end it.
                let _ = tx.send(line);
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first new line for which `f` says something, within 20 s.
    pub fn find<T>(&mut self, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    self.seen.push(line);
                    if let Some(t) = hit {
                        return t;
                    }
                }
                Err(e) => panic!(
                    "no such line ({e}); stdout so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything else, until the child closes stdout.
    pub fn rest(mut self) -> String {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(20)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

/// A child this test started: killed when dropped while still running, so a test that fails
/// before it stops its `codexpool serve` leaves no process behind.
pub struct Spawned(Child);

impl Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends a signal with `kill(1)`: no unsafe code, no extra crate.
pub fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Stops a server child with SIGTERM and checks it exits cleanly; returns its stderr.
pub fn stop(child: Spawned) -> String {
    signal(&child, "TERM");
    let (status, stderr) = finish(child, 40);
    assert!(status.success(), "{status:?}\n{stderr}");
    stderr
}

/// Waits for a child to exit (at most `secs`); returns its status and stderr.
pub fn finish(mut child: Spawned, secs: u64) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status, err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the child did not exit within {secs} s; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A key made in the test process (as another process would); its id.
pub async fn key_id(pool: &Pool, name: &str) -> String {
    pool.keys()
        .create(codexpool_core::keys::NewKey::named(name))
        .await
        .unwrap()
        .key
        .id
}
