//! Platform keys through the public API: create (secret once, hashed at rest), verify (every
//! refusal distinct), bindings, update, enable/disable/delete, expiry, last-used batching.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use codexpool_core::keys::{KeyError, KeyPatch, MAX_EXPIRY_AHEAD, NewKey};
use codexpool_core::store::SqliteStore;
use codexpool_core::{Clock, Config, Error, ManualClock, Pool, Timestamp};
use common::{START, pool_with};

#[tokio::test]
async fn create_shows_the_secret_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let pool = Pool::builder(Config::default())
        .store(Arc::new(SqliteStore::open(&path).await.unwrap()))
        .open()
        .await
        .unwrap();
    let created = pool
        .keys()
        .create(
            NewKey::named("ci")
                .model("gpt-5-codex")
                .reasoning_effort("high"),
        )
        .await
        .unwrap();
    let secret = created.secret.expose().to_string();
    assert!(secret.starts_with("sk-cp-") && secret.len() >= 46);
    assert_eq!(
        created.key.hint,
        format!("sk-cp-…{}", &secret[secret.len() - 4..])
    );
    assert_eq!(format!("{:?}", created.secret), "*****");
    assert!(!format!("{created:?}").contains(&secret));
    let key = pool.keys().verify(&secret).unwrap();
    assert_eq!(
        (
            key.name.as_str(),
            key.model.as_deref(),
            key.reasoning_effort.as_deref()
        ),
        ("ci", Some("gpt-5-codex"), Some("high"))
    );
    drop(pool);
    // Nothing in the file contains the secret.
    let raw = std::fs::read(&path).unwrap();
    let wal = std::fs::read(dir.path().join("p.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret reached the database"
        );
    }
}

#[tokio::test]
async fn verify_distinguishes_every_refusal() {
    let (pool, clock) = pool_with(&[]).await;
    let keys = pool.keys();
    assert_eq!(keys.verify("").unwrap_err(), KeyError::Missing);
    assert_eq!(keys.verify("   ").unwrap_err(), KeyError::Missing);
    assert_eq!(keys.verify("sk-cp-unknown").unwrap_err(), KeyError::Unknown);
    let k = keys
        .create(NewKey::named("a").expires_at(START.plus(Duration::from_secs(60))))
        .await
        .unwrap();
    let s = k.secret.expose();
    assert!(keys.verify(s).is_ok());
    assert!(
        keys.verify(&format!(" {s}\n")).is_ok(),
        "whitespace around a pasted key is forgiven"
    );
    keys.disable(&k.key.id).await.unwrap();
    assert_eq!(
        keys.verify(s).unwrap_err(),
        KeyError::Disabled {
            key_id: k.key.id.clone()
        }
    );
    keys.enable(&k.key.id).await.unwrap();
    clock.advance(Duration::from_secs(60));
    let err = keys.verify(s).unwrap_err();
    assert!(matches!(err, KeyError::Expired { .. }), "{err:?}");
    assert!(err.to_string().contains("expired"));
    keys.delete(&k.key.id).await.unwrap();
    assert_eq!(keys.verify(s).unwrap_err(), KeyError::Unknown);
}

#[tokio::test]
async fn bindings_decide_the_model() {
    let (pool, _) = pool_with(&[]).await;
    let keys = pool.keys();
    let bound = keys
        .create(NewKey::named("bound").model("gpt-5-codex"))
        .await
        .unwrap();
    let k = keys.verify(bound.secret.expose()).unwrap();
    assert_eq!(
        k.resolve_model(Some("gpt-4o")).unwrap(),
        Some("gpt-5-codex")
    );
    let allow = keys
        .create(NewKey::named("allow").allow_model("a").allow_model("b"))
        .await
        .unwrap();
    let k = keys.verify(allow.secret.expose()).unwrap();
    assert_eq!(k.resolve_model(Some("b")).unwrap(), Some("b"));
    let err = k.resolve_model(Some("c")).unwrap_err();
    assert!(
        err.to_string().contains("\"c\"") && err.to_string().contains("a, b"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_and_stores_nothing() {
    let (pool, clock) = pool_with(&[]).await;
    let keys = pool.keys();
    let cases = [
        NewKey::named(""),
        NewKey::named("x").model("has space"),
        NewKey::named("x").reasoning_effort("extreme"),
        NewKey::named("x").model("m").allow_model("other"),
        NewKey::named("x").expires_at(clock.now()),
        NewKey::named("x".repeat(201)),
    ];
    for c in cases {
        let e = keys.create(c.clone()).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{c:?} → {e}");
    }
    assert!(keys.list().is_empty());
    let k = keys.create(NewKey::named("ok")).await.unwrap();
    assert!(matches!(
        keys.update(&k.key.id, KeyPatch::default().name(" ")).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        keys.update(
            &k.key.id,
            KeyPatch::default().reasoning_effort(Some("max".into()))
        )
        .await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        keys.update("nope", KeyPatch::default().name("x")).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        keys.delete("nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        keys.update(&k.key.id, KeyPatch::default().expires_at(Some(clock.now())))
            .await,
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(keys.get(&k.key.id).unwrap().name, "ok");

    // An update may not leave the bound model outside the allowed ones, whichever it changes
    // (create refuses that state too); both together into agreement is fine.
    let narrow = keys
        .create(NewKey::named("narrow").allow_model("gpt-5"))
        .await
        .unwrap();
    let bound = keys
        .create(NewKey::named("bound").model("gpt-5"))
        .await
        .unwrap();
    for (id, patch) in [
        (&narrow.key.id, KeyPatch::default().model(Some("o3".into()))),
        (
            &bound.key.id,
            KeyPatch::default().allowed_models(vec!["gpt-5-mini".into()]),
        ),
    ] {
        let before = keys.get(id).unwrap();
        let e = keys.update(id, patch).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput { field, .. } if field == "allowed_models"),
            "{e}"
        );
        assert_eq!(keys.get(id).unwrap(), before, "nothing changed");
    }
    pool.reload().await.unwrap();
    assert_eq!(
        keys.get(&bound.key.id).unwrap().allowed_models,
        Vec::<String>::new()
    );
    let both = KeyPatch::default()
        .model(Some("o3".into()))
        .allowed_models(vec!["o3".into(), "gpt-5".into()]);
    assert_eq!(
        keys.update(&bound.key.id, both)
            .await
            .unwrap()
            .model
            .as_deref(),
        Some("o3")
    );
}

#[tokio::test]
async fn an_expiry_more_than_100_years_ahead_is_refused() {
    let (pool, clock) = pool_with(&[]).await;
    let keys = pool.keys();
    // Epoch milliseconds read as seconds: the year ~58000, which no date type can show.
    let ms_as_secs = Timestamp::from_secs(clock.now().as_millis());
    let too_far = clock.now().plus(MAX_EXPIRY_AHEAD + Duration::from_secs(1));
    for at in [ms_as_secs, too_far] {
        let e = keys
            .create(NewKey::named("x").expires_at(at))
            .await
            .unwrap_err();
        match &e {
            Error::InvalidInput { field, message } => {
                assert_eq!(field, "expires_at");
                assert!(message.contains("100 years"), "{message}");
            }
            other => panic!("{other}"),
        }
    }
    assert!(keys.list().is_empty());

    let edge = clock.now().plus(MAX_EXPIRY_AHEAD);
    let k = keys
        .create(NewKey::named("edge").expires_at(edge))
        .await
        .unwrap();
    assert_eq!(k.key.expires_at, Some(edge));
    let e = keys
        .update(&k.key.id, KeyPatch::default().expires_at(Some(ms_as_secs)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { field, .. } if field == "expires_at"),
        "{e}"
    );
    assert_eq!(keys.get(&k.key.id).unwrap().expires_at, Some(edge));
}

#[tokio::test]
async fn update_list_and_prefixes() {
    let (pool, clock) = pool_with(&[]).await;
    let keys = pool.keys();
    let a = keys.create(NewKey::named("a")).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let b = keys.create(NewKey::named("b")).await.unwrap();
    let k = keys
        .update(
            &a.key.id[..6],
            KeyPatch::default()
                .name("renamed")
                .allowed_models(vec!["m1".into(), "m1".into()])
                .allowed_groups(vec!["g".into()]),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            k.name.as_str(),
            k.allowed_models.as_slice(),
            k.allowed_groups.as_slice()
        ),
        ("renamed", &["m1".to_string()][..], &["g".to_string()][..])
    );
    assert_eq!(
        keys.verify(a.secret.expose()).unwrap().allowed_groups,
        ["g"],
        "verify sees the update"
    );
    let names: Vec<_> = keys.list().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["renamed", "b"]);
    // A blank model or effort clears it (as every front-end says "clear" with an empty value).
    keys.update(
        &b.key.id,
        KeyPatch::default()
            .model(Some("gpt-5".into()))
            .reasoning_effort(Some("high".into())),
    )
    .await
    .unwrap();
    let cleared = keys
        .update(
            &b.key.id,
            KeyPatch::default()
                .model(Some(" ".into()))
                .reasoning_effort(Some(String::new())),
        )
        .await
        .unwrap();
    assert_eq!((cleared.model, cleared.reasoning_effort), (None, None));
    let json = serde_json::to_string(&keys.list()).unwrap();
    assert!(!json.contains(a.secret.expose()) && !json.contains(b.secret.expose()));
    assert!(!json.contains("secret_hash"));
}

/// A secret where an id belongs (`key show sk-cp-…`, `keys.get(secret)` in Python) is refused
/// by every call that looks a key up, and the error shows only the secret's hint.
#[tokio::test]
async fn a_secret_given_as_an_id_is_not_echoed() {
    let (pool, _) = pool_with(&[]).await;
    let keys = pool.keys();
    let k = keys.create(NewKey::named("ci")).await.unwrap();
    let secret = k.secret.expose().to_string();
    let hint = &k.key.hint;
    let errors = [
        keys.get(&secret).unwrap_err(),
        keys.update(&secret, KeyPatch::default().name("x"))
            .await
            .unwrap_err(),
        keys.disable(&secret).await.unwrap_err(),
        keys.delete(&secret).await.unwrap_err(),
        pool.request_log()
            .resolve(&codexpool_core::request_log::RequestLogQuery::latest(10).key(&secret))
            .unwrap_err(),
    ];
    for e in errors {
        let (text, debug) = (e.to_string(), format!("{e:?}"));
        assert!(
            !text.contains(&secret) && !debug.contains(&secret[7..]),
            "{debug}"
        );
        assert!(matches!(e, Error::InvalidInput { .. }), "{debug}");
        assert!(
            text.contains(hint.as_str()) && text.contains("secret"),
            "{text}"
        );
    }
    // Whatever was typed (not text a byte slice can cut anywhere).
    let typed = keys.get("sk-cp-€€").unwrap_err().to_string();
    assert!(typed.contains("sk-cp-…p-€€"), "{typed}");
    // Nothing changed, and a key named like a secret is still found by its name.
    assert_eq!(keys.get(&k.key.id).unwrap().name, "ci");
    let odd = keys.create(NewKey::named("sk-cp-odd")).await.unwrap();
    assert_eq!(keys.get("sk-cp-odd").unwrap().id, odd.key.id);
}

#[tokio::test]
async fn last_used_is_recorded_without_a_write_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let clock = ManualClock::new(START);
    let pool = Pool::builder(
        Config::default()
            .with("DB_PATH", path.to_str().unwrap())
            .unwrap(),
    )
    .clock(Arc::new(clock.clone()))
    .watch_interval(Duration::ZERO)
    .open()
    .await
    .unwrap();
    let k = pool.keys().create(NewKey::named("a")).await.unwrap();
    clock.advance(Duration::from_secs(5));
    for _ in 0..100 {
        pool.keys().verify(k.secret.expose()).unwrap();
    }
    assert_eq!(
        pool.keys().get(&k.key.id).unwrap().last_used_at,
        Some(clock.now()),
        "seen in memory at once"
    );
    let other = SqliteStore::open(&path).await.unwrap();
    use codexpool_core::store::Store;
    assert_eq!(
        other.list_keys().await.unwrap()[0].last_used_at,
        None,
        "not written per request"
    );
    pool.flush().await.unwrap();
    assert_eq!(
        other.list_keys().await.unwrap()[0].last_used_at,
        Some(clock.now()),
        "written by the flush"
    );
}

/// A pool on a database file at `path`, with default settings.
async fn pool_at(path: &std::path::Path) -> Pool {
    let config = Config::default().with("DB_PATH", path.to_str().unwrap());
    Pool::open(config.unwrap()).await.unwrap()
}

/// Uses `key` and an account once, as a request does: their last-used times move.
async fn use_key_and_account(pool: &Pool, key: &codexpool_core::keys::CreatedKey) {
    pool.keys().verify(key.secret.expose()).unwrap();
    let lease = pool
        .accounts()
        .acquire(&codexpool_core::Demand::any())
        .await
        .unwrap();
    lease.report(codexpool_core::Outcome::Success).await;
}

/// A pool dropped without a flush (a script that ends without one) still writes the last-used
/// times it holds, and a [`codexpool_core::WeakPool`] soon no longer gives it.
#[tokio::test]
async fn a_pool_dropped_without_a_flush_writes_its_last_used_times() {
    use codexpool_core::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let pool = pool_at(&path).await;
    let k = pool.keys().create(NewKey::named("a")).await.unwrap();
    let id = common::add_accounts(&pool, 1).await.remove(0);
    use_key_and_account(&pool, &k).await;
    let weak = pool.downgrade();
    assert!(weak.upgrade().is_some());
    drop(pool);
    // Gone once the change watcher's tick under way, if one is, has ended (it holds the pool
    // while it looks at the store).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while weak.upgrade().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool is still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let store = SqliteStore::open(&path).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let key = store.list_keys().await.unwrap()[0].last_used_at;
        let account = store.get_account(&id).await.unwrap().unwrap().last_used_at;
        if key.is_some() && account.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not written: key {key:?}, account {account:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a flush the database's main file holds everything (SQLite's WAL folded in): a copy
/// of `codexpool.db` alone, without its `-wal`, has the keys.
#[tokio::test]
async fn after_a_flush_the_main_file_alone_holds_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let pool = pool_at(&path).await;
    let k = pool.keys().create(NewKey::named("a")).await.unwrap();
    pool.flush().await.unwrap();
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let copied = SqliteStore::open(&copy).await.unwrap();
    use codexpool_core::store::Store;
    let keys = copied.list_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id, k.key.id);
}

#[tokio::test]
async fn a_last_used_time_that_could_not_be_written_is_written_by_the_next_flush() {
    use codexpool_core::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let clock = ManualClock::new(START);
    let pool = Pool::builder(
        Config::default()
            .with("DB_PATH", path.to_str().unwrap())
            .unwrap(),
    )
    .clock(Arc::new(clock.clone()))
    .watch_interval(Duration::ZERO)
    .open()
    .await
    .unwrap();
    let k = pool.keys().create(NewKey::named("a")).await.unwrap();
    let id = common::add_accounts(&pool, 1).await.remove(0);
    clock.advance(Duration::from_secs(5));
    use_key_and_account(&pool, &k).await;

    // Another connection makes the database refuse last-used writes for a while.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER no_key_touch BEFORE UPDATE OF last_used_at ON platform_keys
               BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;
             CREATE TRIGGER no_account_touch BEFORE UPDATE OF last_used_at ON accounts
               BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
        )
        .unwrap();
    assert!(pool.flush().await.is_err());
    other
        .execute_batch("DROP TRIGGER no_key_touch; DROP TRIGGER no_account_touch;")
        .unwrap();

    pool.flush().await.unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.list_keys().await.unwrap()[0].last_used_at,
        Some(clock.now()),
        "the key's time, refused once, is written by the next flush"
    );
    assert_eq!(
        store.get_account(&id).await.unwrap().unwrap().last_used_at,
        Some(clock.now()),
        "so is the account's"
    );
}
