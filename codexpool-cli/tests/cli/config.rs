//! `config`.

use codexpool_core::config::SETTINGS;
use serde_json::Value;

use crate::support::{Env, texts};

#[test]
fn every_setting_with_value_and_source_and_secrets_hidden() {
    let env = Env::new();
    std::fs::write(
        env.path().join("codexpool.env"),
        "CODEXPOOL_ROUTE_STRATEGY=headroom\n",
    )
    .unwrap();
    let o = env
        .cmd()
        .env("CODEXPOOL_RPC_TOKEN", "tok-very-secret")
        .env("GPTTOOLS_ACCOUNT_MAX_INFLIGHT", "3")
        .env("CODEXPOOL_USAGE_POLL_INTERVAL_SECS", "5")
        // A relative path keeps the table's columns independent of the temporary directory.
        .args(["--db", "data/codexpool.db", "config"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(!stdout.contains("tok-very-secret") && !stderr.contains("tok-very-secret"));
    // The clamped value is reported once.
    assert_eq!(
        stderr.matches("USAGE_POLL_INTERVAL_SECS").count(),
        1,
        "{stderr}"
    );
    env.settings()
        .bind(|| insta::assert_snapshot!("config", stdout));

    let o = env
        .cmd()
        .env("CODEXPOOL_RPC_TOKEN", "tok-very-secret")
        .args(["config", "--json"])
        .output()
        .unwrap();
    let text = texts(&o).0;
    assert!(!text.contains("tok-very-secret"));
    let v: Value = serde_json::from_str(&text).unwrap();
    let row = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(row("RPC_TOKEN")["value"], "*****");
    assert_eq!(row("DB_PATH")["source"], "flag");
    assert_eq!(row("ROUTE_STRATEGY")["value"], "headroom");
    assert!(
        row("ROUTE_STRATEGY")["source"]
            .as_str()
            .unwrap()
            .ends_with("codexpool.env (CODEXPOOL_ROUTE_STRATEGY)")
    );
    assert_eq!(row("SERVICE_ADDR")["default"], "127.0.0.1:48760");
    // The token is made once and kept, not made anew per start (what `serve` does).
    assert_eq!(
        row("RPC_TOKEN")["default"],
        "random, made on the first start and kept in <db dir>/rpc-token (shared by every \
         server on the database)"
    );
    for r in v.as_array().unwrap() {
        for field in ["name", "value", "source", "default", "help"] {
            assert!(r[field].is_string(), "{field} in {r}");
        }
    }
}

#[test]
fn an_invalid_setting_is_listed_marked_and_exits_1() {
    let env = Env::new();
    let o = env
        .cmd()
        .env("CODEXPOOL_ROUTE_STRATEGY", "bogus")
        .env("CODEXPOOL_ISSUER", "ftp://user:p4ssw0rd@example.com")
        .env("CODEXPOOL_RPC_TOKEN", "tok-very-secret")
        .args(["--db", "data/codexpool.db", "config"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        1 + SETTINGS.len(),
        "every setting: {stdout}"
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap()
            .to_string()
    };
    let strategy = row("ROUTE_STRATEGY");
    assert!(
        strategy.contains("\"bogus\"")
            && strategy.contains("env CODEXPOOL_ROUTE_STRATEGY")
            && strategy.contains("invalid: unknown strategy"),
        "{strategy}"
    );
    assert!(
        row("ISSUER").contains("\"ftp://user:*****@example.com\""),
        "{stdout}"
    );
    assert!(row("RPC_TOKEN").contains("*****"), "{stdout}");
    assert!(row("ACCOUNT_MAX_INFLIGHT").ends_with("default"), "{stdout}");
    for shown in [&stdout, &stderr] {
        assert!(
            !shown.contains("p4ssw0rd") && !shown.contains("tok-very-secret"),
            "{shown}"
        );
    }
    assert!(
        stderr
            .contains("error: 2 settings are invalid: CODEXPOOL_ISSUER, CODEXPOOL_ROUTE_STRATEGY"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("hint: fix or unset CODEXPOOL_ISSUER; fix or unset CODEXPOOL_ROUTE_STRATEGY"),
        "{stderr}"
    );
    assert!(!stderr.contains("`codexpool config`"), "{stderr}");

    // JSON: the same rows, the invalid one with its error.
    let o = env
        .cmd()
        .env("CODEXPOOL_ROUTE_STRATEGY", "bogus")
        .args(["config", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), SETTINGS.len());
    let strategy = rows.iter().find(|r| r["name"] == "ROUTE_STRATEGY").unwrap();
    assert_eq!(strategy["value"], "bogus");
    assert!(
        strategy["error"]
            .as_str()
            .unwrap()
            .contains("unknown strategy")
    );
    assert!(rows.iter().filter(|r| r.get("error").is_some()).count() == 1);

    // Other commands fail early, naming the variable and the env file it came from.
    std::fs::write(
        env.path().join("codexpool.env"),
        "CODEXPOOL_ROUTE_STRATEGY=bogus\n",
    )
    .unwrap();
    let o = env.cmd().args(["key", "list"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let file = env.path().join("codexpool.env");
    let err = texts(&o).1;
    assert!(
        err.starts_with(&format!(
            "error: invalid CODEXPOOL_ROUTE_STRATEGY=\"bogus\" in {}: unknown strategy",
            file.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: fix or remove CODEXPOOL_ROUTE_STRATEGY in {}; `codexpool config` lists",
            file.display()
        )),
        "{err}"
    );
    assert!(!env.db().exists(), "nothing was opened");

    // An env file that cannot be parsed stops other commands; `config` still lists every
    // setting (as the environment gives them) and exits 1 naming the file and its line.
    std::fs::write(
        env.path().join("codexpool.env"),
        "CODEXPOOL_ROUTE_STRATEGY=headroom\nthis is not valid\n",
    )
    .unwrap();
    let o = env.cmd().args(["key", "list"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        texts(&o).1.contains("line 2 cannot be parsed"),
        "{}",
        texts(&o).1
    );
    let o = env.cmd().args(["--json", "config"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let (out, err) = texts(&o);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), codexpool_core::config::SETTINGS.len());
    let strategy = rows.iter().find(|r| r["name"] == "ROUTE_STRATEGY").unwrap();
    assert_eq!(strategy["source"], "default", "{strategy}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains("line 2 cannot be parsed"),
        "{err}"
    );
}

/// A value that is not UTF-8 is an error naming its variable: read as absent, a `DB_PATH`
/// would have put the command on the default database.
#[test]
#[cfg(unix)]
fn a_value_that_is_not_utf8_is_an_error() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let path = env.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.db"));
    let o = env
        .cmd_without_db()
        .env("CODEXPOOL_DB_PATH", &path)
        .args(["key", "list"])
        .output()
        .unwrap();
    let (_, stderr) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("CODEXPOOL_DB_PATH") && stderr.contains("not valid UTF-8"),
        "{stderr}"
    );
    assert!(!path.exists());
    // `config` marks it also when the env file cannot be parsed (its own error comes first).
    std::fs::write(env.path().join("codexpool.env"), "not valid\n").unwrap();
    let o = env
        .cmd_without_db()
        .env("CODEXPOOL_DB_PATH", &path)
        .args(["--json", "config"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let db = rows.iter().find(|r| r["name"] == "DB_PATH").unwrap();
    assert!(db["error"].as_str().unwrap().contains("UTF-8"), "{db}");
}

#[test]
fn unknown_variables_are_warned_about() {
    let env = Env::new();
    std::fs::write(
        env.path().join("codexpool.env"),
        "ROUTE_STRATEGY=headroom\nCODEXPOOL_ACOUNT_MAX_INFLIGHT=2\n",
    )
    .unwrap();
    let file = env.path().join("codexpool.env");
    let o = env
        .cmd()
        .env("CODEXPOOL_ROUTE_STRATEGI", "headroom")
        .env("ROUTE_STRATEGY_OF_ANOTHER_TOOL", "x")
        .env("CODEXPOOL_KEY", "sk-cp-for-the-codex-cli")
        .args(["key", "list"])
        .output()
        .unwrap();
    let (_, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(
        warnings,
        [
            format!(
                "warning: unknown variable CODEXPOOL_ACOUNT_MAX_INFLIGHT in {} is ignored (did \
                 you mean CODEXPOOL_ACCOUNT_MAX_INFLIGHT?)",
                file.display()
            ),
            format!(
                "warning: ROUTE_STRATEGY in {} is ignored: settings need the CODEXPOOL_ prefix \
                 (CODEXPOOL_ROUTE_STRATEGY)",
                file.display()
            ),
            "warning: unknown variable CODEXPOOL_ROUTE_STRATEGI in the environment is ignored \
             (did you mean CODEXPOOL_ROUTE_STRATEGY?)"
                .to_string(),
        ],
        "{stderr}"
    );
    // `config` shows them once, after its listing.
    let o = env
        .cmd()
        .env("CODEXPOOL_ROUTE_STRATEGI", "headroom")
        .arg("config")
        .output()
        .unwrap();
    let (_, stderr) = texts(&o);
    assert_eq!(
        stderr.matches("CODEXPOOL_ROUTE_STRATEGI ").count(),
        1,
        "{stderr}"
    );
}

/// The help names every env file that is read, as the README does.
#[test]
fn the_help_names_every_env_file() {
    let env = Env::new();
    let help = texts(&env.cmd().arg("--help").output().unwrap()).0;
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains(
            "the first env file found among codexpool.env, gpttools.env, CodexManager.env and \
             .env (in the current directory, then beside the executable)"
        ),
        "{help}"
    );
    for name in codexpool_core::config::ENV_FILE_NAMES {
        assert!(help.contains(name), "{name}: {help}");
    }
}

/// A `~` in `DB_PATH` is the home directory wherever the value comes from (an env file gets no
/// shell expansion): not a folder named `~`, where a new, empty pool would be made.
#[test]
fn a_db_path_may_start_with_a_tilde() {
    let env = Env::new();
    std::fs::write(
        env.path().join("codexpool.env"),
        "CODEXPOOL_DB_PATH=~/pools/home.db\n",
    )
    .unwrap();
    let o = env
        .cmd_without_db()
        .args(["key", "create", "--name", "ci"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", texts(&o).1);
    // HOME is the test's directory, which is also where the command runs.
    assert!(env.path().join("pools/home.db").exists());
    assert!(!env.path().join("~").exists());
}
