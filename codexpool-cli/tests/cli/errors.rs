//! Bad input: one clear line plus a hint, exit 1 for errors and 2 for usage errors, never a
//! panic; a closed stdout is not an error.

use std::process::Stdio;

use codexpool_core::keys::NewKey;
use serde_json::Value;

use crate::support::{BIN, Env, texts};

#[test]
fn unknown_ids_name_what_was_asked_for() {
    let env = Env::new();
    // A database that exists (a new one is announced before anything else).
    env.make_db();
    let mut errors = Vec::new();
    for args in [
        &["account", "disable", "zzzz"][..],
        &["account", "update", "zzzz", "--label", "x"],
        &["key", "delete", "abc123"],
        &["logs", "--key", "abc"],
    ] {
        let (code, out, err) = env.run(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(out, "");
        assert_eq!(err.lines().count(), 2, "one line and a hint: {err}");
        errors.push(format!("$ codexpool {}\n{err}", args.join(" ")));
    }
    let errors = errors.join("\n");
    env.settings()
        .bind(|| insta::assert_snapshot!("unknown_ids", errors));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_prefix_lists_the_candidates() {
    let env = Env::new();
    // 17 random ids: two of them share a first hex digit.
    let pool = env.pool().await;
    for i in 0..17 {
        pool.keys()
            .create(NewKey::named(format!("k{i}")))
            .await
            .unwrap();
    }
    let ids: Vec<String> = pool.keys().list().into_iter().map(|k| k.id).collect();
    let shared = (0..16u32)
        .map(|d| char::from_digit(d, 16).unwrap())
        .find(|c| ids.iter().filter(|id| id.starts_with(*c)).count() >= 2)
        .unwrap();
    let (code, _, err) = env.run(&["key", "disable", &shared.to_string()]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "error: key id \"{shared}\" is ambiguous: it matches "
        )),
        "{err}"
    );
    let matching = ids.iter().filter(|id| id.starts_with(shared));
    for id in matching {
        assert!(err.contains(id.as_str()), "{err}");
    }
    assert!(
        err.contains("hint: type more characters of the id"),
        "{err}"
    );
}

#[test]
fn malformed_import_files_are_reported_and_fail() {
    let env = Env::new();
    env.make_db();
    std::fs::write(env.path().join("bad.json"), "{not json").unwrap();
    std::fs::write(
        env.path().join("empty.json"),
        r#"{"tokens": {"access_token": "x"}}"#,
    )
    .unwrap();
    let (code, out, err) = env.run(&["account", "import", "bad.json"]);
    assert_eq!(code, 1);
    let shown = format!("{out}---\n{err}");
    env.settings()
        .bind(|| insta::assert_snapshot!("import_malformed", shown));
    let (code, _, err) = env.run(&["account", "import", "empty.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("nothing imported"), "{err}");
    let (code, _, err) = env.run(&["account", "import", "missing.json"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: missing.json: No such file"),
        "{err}"
    );
    std::fs::create_dir(env.path().join("nothing")).unwrap();
    let (code, _, err) = env.run(&["account", "import", "nothing"]);
    assert_eq!(code, 1);
    assert!(err.contains("holds no .json files"), "{err}");
}

#[test]
fn invalid_flag_values_are_usage_errors() {
    let env = Env::new();
    let cases: [(&[&str], &str); 8] = [
        (
            &["key", "create", "--name", "x", "--expires", "soon"],
            "--expires <WHEN>",
        ),
        (
            &["key", "create", "--name", "x", "--effort", "extreme"],
            "--effort <EFFORT>",
        ),
        (
            &["account", "list", "--status", "gone"],
            "--status <STATUS>",
        ),
        (&["logs", "--limit", "0"], "--limit <N>"),
        (&["serve", "--addr", "nowhere"], "--addr <ADDR>"),
        (
            &["account", "update", "abc"],
            "nothing to change: give at least one of --label",
        ),
        (
            &["key", "update", "abc"],
            "nothing to change: give at least one of --name",
        ),
        (&["key", "create"], "--name <NAME>"),
    ];
    let mut shown = Vec::new();
    for (args, expect) in cases {
        let (code, out, err) = env.run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(out, "");
        assert!(err.contains(expect), "{args:?}: {err}");
        shown.push(format!("$ codexpool {}\n{err}", args.join(" ")));
    }
    let shown = shown.join("\n");
    env.settings()
        .bind(|| insta::assert_snapshot!("usage_errors", shown));
    // Help and version are not errors.
    assert_eq!(env.run(&["--help"]).0, 0);
    assert_eq!(env.run(&["--version"]).0, 0);
    assert!(!env.db().exists(), "usage errors open nothing");
    // A name is counted in characters: 200 of two bytes each are fine.
    let long = "é".repeat(200);
    assert_eq!(
        env.json(&["key", "create", "--name", &long])["key"]["name"],
        long
    );
}

#[test]
fn invalid_settings_name_the_variable() {
    let env = Env::new();
    let o = env
        .cmd()
        .env("CODEXPOOL_ACCOUNT_MAX_INFLIGHT", "lots")
        .args(["key", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = texts(&o).1;
    env.settings()
        .bind(|| insta::assert_snapshot!("invalid_env", err));
    // A broken env file in the current directory.
    std::fs::write(
        env.path().join("codexpool.env"),
        "CODEXPOOL_X='unterminated\n",
    )
    .unwrap();
    let o = env.cmd().args(["key", "list"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = texts(&o).1;
    let file = env.path().join("codexpool.env");
    assert!(
        err.starts_with(&format!(
            "error: cannot read {}: line 1 (CODEXPOOL_X) cannot be parsed",
            file.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: fix the syntax of that env file"),
        "{err}"
    );
}

#[test]
fn a_database_directory_that_cannot_be_created() {
    let env = Env::new();
    // A regular file where a directory should be: fails for root too.
    std::fs::write(env.path().join("file"), "").unwrap();
    let db = env.path().join("file").join("sub").join("codexpool.db");
    let o = env
        .cmd()
        .args([
            "--db",
            db.to_str().unwrap(),
            "key",
            "create",
            "--name",
            "laptop",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = texts(&o).1;
    env.settings()
        .bind(|| insta::assert_snapshot!("db_dir_not_creatable", err));
    // The file itself where the folder should be, and a folder given as the database.
    for (db, says) in [
        (env.path().join("file").join("codexpool.db"), "is a file"),
        (
            env.path().to_path_buf(),
            "that is a folder, not a database file",
        ),
    ] {
        let o = env
            .cmd()
            .args(["--db", db.to_str().unwrap(), "key", "create", "--name", "x"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = texts(&o).1;
        assert!(err.contains(says), "{err}");
    }

    // A directory without write permission (root ignores permissions, so check that first).
    use std::os::unix::fs::PermissionsExt;
    let ro = env.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    let privileged = std::fs::create_dir(ro.join("probe")).is_ok();
    let denied = if privileged {
        // As root, /sys refuses new directories on Linux; elsewhere there is nothing to try.
        std::path::PathBuf::from("/sys/codexpool-test/codexpool.db")
    } else {
        ro.join("sub").join("codexpool.db")
    };
    if !privileged || std::path::Path::new("/sys/kernel").exists() {
        let o = env
            .cmd()
            .args([
                "--db",
                denied.to_str().unwrap(),
                "key",
                "create",
                "--name",
                "laptop",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = texts(&o).1;
        assert!(err.starts_with("error: cannot open database"), "{err}");
        assert!(err.contains("ermi"), "a permission error: {err}");
        assert!(err.contains("hint: pass --db PATH"), "{err}");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// A database path that cannot be looked at (through a file, or a folder this user may not
/// enter) is an error, not an empty pool: a read-only command would show nothing stored.
#[test]
fn a_database_that_cannot_be_looked_for_is_an_error_not_an_empty_pool() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let file = env.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let closed = env.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root enters any folder: only the path through a file is refused there.
    let privileged = std::fs::metadata(closed.join("x"))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    let mut paths = vec![file.join("codexpool.db")];
    if !privileged {
        paths.push(closed.join("codexpool.db"));
    }
    for db in paths {
        for args in [&["key", "list"][..], &["--json", "account", "list"]] {
            let o = env
                .cmd_without_db()
                .arg("--db")
                .arg(&db)
                .args(args)
                .output()
                .unwrap();
            let (out, err) = texts(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?} {db:?}: {out}{err}");
            assert!(
                err.starts_with(&format!(
                    "error: cannot look for the database at {}",
                    db.display()
                )),
                "{err}"
            );
            assert!(out.is_empty(), "{out}");
        }
    }
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// A read-only command given another file for the database leaves it as it was: a file that is
/// no database keeps its mode (the error says what it is), an empty one stays empty (no
/// database yet).
#[test]
fn a_read_only_command_leaves_a_file_that_is_no_database_alone() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let notes = env.path().join("notes.json");
    std::fs::write(&notes, "{\"not\": \"a database\"}").unwrap();
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = env
        .cmd_without_db()
        .arg("--db")
        .arg(&notes)
        .args(["key", "list"])
        .output()
        .unwrap();
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("not a database"), "{err}");
    assert!(
        err.contains("hint: that file is no codexpool database"),
        "{err}"
    );
    let mode = std::fs::metadata(&notes).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(std::fs::read(&notes).unwrap(), b"{\"not\": \"a database\"}");

    let empty = env.path().join("empty.db");
    std::fs::write(&empty, "").unwrap();
    let o = env
        .cmd_without_db()
        .arg("--db")
        .arg(&empty)
        .args(["key", "list"])
        .output()
        .unwrap();
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("empty.db is an empty file: nothing is stored yet."),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    // Another program's SQLite database: refused, its file as it was (no WAL, no tables).
    let other = env.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE notes (x); INSERT INTO notes VALUES (1);")
        .unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&other).unwrap();
    for args in [&["account", "list"][..], &["key", "create", "--name", "k"]] {
        let o = env
            .cmd_without_db()
            .arg("--db")
            .arg(&other)
            .args(args)
            .output()
            .unwrap();
        let (_, err) = texts(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("another program's SQLite database (its tables: notes)"),
            "{err}"
        );
        assert!(err.contains("hint: pass --db PATH"), "{err}");
        assert_eq!(std::fs::read(&other).unwrap(), before, "{args:?}");
        let mode = std::fs::metadata(&other).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let env = Env::new();
    env.json(&["key", "create", "--name", "k"]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = std::process::Command::new(BIN)
        .env_clear()
        .env("NO_COLOR", "1")
        .current_dir(env.path())
        .args(["--db", env.db().to_str().unwrap(), "config"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", o.status);
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}

#[test]
fn blank_names_and_malformed_model_names_are_usage_errors() {
    let env = Env::new();
    let cases: [(&[&str], &str); 21] = [
        (
            &["key", "create", "--name", "x", "--allow-model", ""],
            "invalid value '' for '--allow-model <MODEL>': must not be empty",
        ),
        (
            &["key", "create", "--name", "x", "--model", "gpt 5"],
            "for '--model <MODEL>': must be one word",
        ),
        (
            &["key", "create", "--name", " "],
            "for '--name <NAME>': must not be empty",
        ),
        (
            &["key", "update", "abc", "--allow-group", ""],
            "for '--allow-group <GROUP>': must not be empty",
        ),
        (
            &["key", "update", "abc", "--name", ""],
            "for '--name <NAME>': must not be empty",
        ),
        (
            &["account", "update", "abc", "--label", ""],
            "invalid value '' for '--label <LABEL>': must not be empty",
        ),
        (
            &["account", "update", "abc", "--tag", "a,b"],
            "for '--tag <TAG>': must not contain a comma",
        ),
        (
            &["account", "login", "--label", "  "],
            "for '--label <LABEL>': must not be empty",
        ),
        (
            &["account", "login", "--tag", ""],
            "for '--tag <TAG>': must not be empty",
        ),
        // An empty id is a usage error too, with clap's pointer to --help.
        (
            &["account", "disable", ""],
            "invalid value '' for '<ID>': must not be empty",
        ),
        (&["key", "delete", " "], "for '<ID>': must not be empty"),
        (
            &["account", "update", "", "--note", "x"],
            "for '<ID>': must not be empty",
        ),
        (
            &["logs", "--key", ""],
            "for '--key <ID>': must not be empty",
        ),
        (
            &["--db", " ", "key", "list"],
            "invalid value ' ' for '--db <PATH>': must not be empty",
        ),
        (
            &["account", "import", ""],
            "for '<FILE|DIR|->': must not be empty",
        ),
        (
            &["account", "complete", " "],
            "for '<REDIRECT_URL>': must not be empty",
        ),
        (
            &["key", "create", "--name", &"é".repeat(201)],
            "for '--name <NAME>': must be at most 200 characters",
        ),
        // An account's label, group and tags are held to 200 characters, its note to 10,000.
        (
            &["account", "update", "a", "--label", &"x".repeat(201)],
            "for '--label <LABEL>': must be at most 200 characters",
        ),
        (
            &["account", "update", "a", "--group", &"x".repeat(201)],
            "for '--group <GROUP>': must be at most 200 characters",
        ),
        (
            &["account", "login", "--tag", &"x".repeat(201)],
            "for '--tag <TAG>': must be at most 200 characters",
        ),
        (
            &["account", "update", "a", "--note", &"x".repeat(10_001)],
            "for '--note <TEXT>': must be at most 10000 characters",
        ),
    ];
    for (args, expect) in cases {
        let (code, out, err) = env.run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(out, "");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(err.contains("try '--help'"), "{args:?}: {err}");
        // A long value is echoed by its start only: the error stays one readable line.
        assert!(
            err.lines().all(|l| l.chars().count() < 160),
            "{args:?}: {err}"
        );
    }
    let (_, _, err) = env.run(&["account", "update", "a", "--note", &"x".repeat(10_001)]);
    assert!(
        err.contains(&format!(
            "invalid value '{}… (10001 characters)'",
            "x".repeat(40)
        )),
        "{err}"
    );
    assert!(!env.db().exists(), "usage errors open nothing");
    // A name is counted in characters: 200 of two bytes each are fine.
    let long = "é".repeat(200);
    assert_eq!(
        env.json(&["key", "create", "--name", &long])["key"]["name"],
        long
    );
    // Clearing stays possible where the flag documents it.
    let id = env.json(&["key", "create", "--name", "k", "--model", "gpt-5"])["key"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let k = env.json(&["key", "update", &id, "--model", ""]);
    assert_eq!(k["model"], Value::Null);
}

/// Where an id goes, a key's exact name or an account's exact label or email does too, when no
/// id or id prefix matches; a name that several records share lists their ids.
#[test]
fn keys_and_accounts_are_found_by_name_too() {
    let env = Env::new();
    let key = env.json(&["key", "create", "--name", "viaflag"])["key"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["-q", "key", "disable", "viaflag"]);
    let listed = env.json(&["key", "list"]);
    assert_eq!(listed[0]["enabled"], false, "{listed}");
    let ids = env.add_accounts(&["acct-1", "acct-2"]);
    env.ok(&["-q", "account", "disable", "acct-2@example.com"]);
    env.ok(&["-q", "account", "update", &ids[0], "--label", "work"]);
    env.ok(&["-q", "account", "update", "work", "--note", "by label"]);
    let list = env.json(&["account", "list"]);
    let by_id = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&ids[0])["note"], "by label", "{list}");
    assert_eq!(by_id(&ids[1])["status"], "disabled", "{list}");

    // Two keys of one name: the error lists both ids, and the hint says to use one.
    let other = env.json(&["key", "create", "--name", "viaflag"])["key"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, err) = env.run(&["key", "delete", "viaflag"]);
    assert_eq!(code, 1, "{err}");
    let mut both = [key.clone(), other];
    both.sort();
    assert_eq!(
        err,
        format!(
            "error: key name \"viaflag\" is ambiguous: it matches {}, {}\n\
             hint: use one of the ids instead; `codexpool key list` shows them\n",
            both[0], both[1]
        )
    );
    env.ok(&["-q", "account", "update", &ids[1], "--label", "work"]);
    let (code, _, err) = env.run(&["account", "enable", "work"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: account label or email \"work\" is ambiguous: it matches "),
        "{err}"
    );
    // Once the name is unique again, it finds the key left.
    env.ok(&["-q", "key", "delete", &key]);
    env.ok(&["-q", "key", "delete", "viaflag"]);
    assert_eq!(env.json(&["key", "list"]), serde_json::json!([]));
}

/// The setting names in `text` written without their `CODEXPOOL_` prefix: a person who sets
/// such a bare name is ignored.
fn bare_settings(text: &str) -> Vec<&'static str> {
    codexpool_core::config::SETTINGS
        .iter()
        .map(|s| s.name)
        .filter(|name| {
            text.match_indices(name).any(|(at, _)| {
                let before = text[..at].chars().next_back();
                !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        })
        .collect()
}

#[test]
fn messages_and_help_name_settings_with_their_prefix() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let login = |addr: &str| {
        let o = env
            .cmd()
            .env("CODEXPOOL_LOGIN_ADDR", addr)
            .args(["account", "login", "--no-browser"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        texts(&o).1
    };
    let in_use = login(&taken);
    assert!(
        in_use.contains(
            "Set CODEXPOOL_LOGIN_ADDR to a free host:port (and CODEXPOOL_REDIRECT_URI to match)"
        ),
        "{in_use}"
    );
    let open = login("0.0.0.0:0");
    assert!(
        open.starts_with("error: CODEXPOOL_LOGIN_ADDR=0.0.0.0:0 is not a loopback address")
            && open.contains("set CODEXPOOL_ALLOW_NON_LOOPBACK_LOGIN_ADDR=1"),
        "{open}"
    );
    let serve = texts(
        &env.cmd()
            .args(["serve", "--addr", &taken])
            .output()
            .unwrap(),
    )
    .1;
    assert!(
        serve.contains("--addr or CODEXPOOL_SERVICE_ADDR"),
        "{serve}"
    );
    let help = texts(&env.cmd().args(["serve", "--help"]).output().unwrap()).0;
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("[default: CODEXPOOL_DB_PATH, else codexpool/codexpool.db in the user data directory: ~/.local/share on Linux"),
        "{help}"
    );
    assert!(
        help.contains("[default: CODEXPOOL_SERVICE_ADDR, else 127.0.0.1:48760]"),
        "{help}"
    );
    for text in [&in_use, &open, &serve, &help] {
        assert_eq!(bare_settings(text), Vec::<&str>::new(), "{text}");
    }
}

/// A damaged database file is named as such, with what can be done about it.
#[test]
fn a_damaged_database_says_so() {
    let env = Env::new();
    env.ok(&["key", "create", "--name", "k"]);
    // Zeroes over the pages after the first (the schema's): the file still opens, its tables
    // do not read.
    let mut bytes = std::fs::read(env.db()).unwrap();
    assert!(bytes.len() > 8192);
    bytes[4096..].fill(0);
    std::fs::write(env.db(), bytes).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.db().display()));
    }
    let (code, _, err) = env.run(&["key", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("malformed"), "{err}");
    assert!(err.contains("hint: the database file is damaged"), "{err}");
}

/// A database this user may not open (another user's, mode 0600) is said to be that, not a
/// folder to make writable. Run as another user through `setpriv` when the tests run as root
/// (root opens any file), else on a file made unreadable.
#[test]
fn a_database_this_user_may_not_open_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let dir = tempfile::Builder::new()
        .prefix("codexpool-perm-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("codexpool.db");
    env.ok(&["--db", db.to_str().unwrap(), "key", "create", "--name", "k"]);
    // What this process makes is its user's: root's, or another's.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).unwrap()) == 0;
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).unwrap();
        std::process::Command::new(BIN)
    };
    cmd.env_clear()
        .env("HOME", dir.path())
        .current_dir("/")
        .args(["--db", db.to_str().unwrap(), "key", "list"]);
    let Ok(o) = cmd.output() else {
        eprintln!("skipped: no setpriv here");
        return;
    };
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("hint: this user may not read and write that file: run as its owner"),
        "{err}"
    );
}
