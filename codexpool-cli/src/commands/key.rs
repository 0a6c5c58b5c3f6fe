//! `codexpool key …`: platform keys, the API keys clients present to the gateway.
//!
//! JSON shapes:
//! - `key create`: `{"key": Key, "secret": "sk-cp-…", "base_url": "http://…/v1"}` — the only
//!   place a secret is ever printed;
//! - `key list`: `[Key]`, oldest first;
//! - `key update|enable|disable|delete`: `Key`.
//!
//! where `Key` is `{"id", "name", "hint", "model", "allowed_models", "allowed_groups",
//! "reasoning_effort", "enabled", "expires_at", "created_at", "updated_at", "last_used_at",
//! "status"}` (times RFC 3339, absent ones `null`; `status` is `active`, `disabled` or
//! `expired`, as the table's STATUS column: whether the gateway accepts the key now).

use codexpool_core::keys::{CreatedKey, KeyPatch, NewKey, PlatformKey};
use codexpool_core::{AccountStatus, Pool, Timestamp};

use super::Ctx;
use super::runtime::client_base_url;
use crate::Failure;
use crate::args::{KeyCreateArgs, KeyUpdateArgs};
use crate::output::{NONE, Paint, ago, cell, datetime, duration, visible};

/// A key as JSON shows it: the stored fields and its status now.
#[derive(serde::Serialize)]
struct KeyView<'a> {
    #[serde(flatten)]
    key: &'a PlatformKey,
    status: &'static str,
}

impl<'a> KeyView<'a> {
    fn new(key: &'a PlatformKey, now: Timestamp) -> Self {
        Self {
            key,
            status: status(key, now),
        }
    }
}

/// `disabled` (by a person), `expired`, or `active`.
fn status(k: &PlatformKey, now: Timestamp) -> &'static str {
    if !k.enabled {
        "disabled"
    } else if k.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    }
}

/// `key create`.
pub async fn create(ctx: &Ctx, pool: &Pool, a: KeyCreateArgs) -> anyhow::Result<()> {
    let mut new = NewKey::named(a.name);
    new.model = a.model;
    new.allowed_models = a.allow_models;
    new.allowed_groups = a.allow_groups;
    new.reasoning_effort = a.effort;
    new.expires_at = a.expires.and_then(|e| e.resolve(pool.now()));
    // Asked first (it may wait on a server for a few seconds): between the key's creation and
    // its secret's output nothing waits, so a Ctrl-C cannot leave a key whose secret nobody saw.
    let base_url = client_base_url(ctx).await;
    let created = pool.keys().create(new).await?;
    let Err(e) = show_created(ctx, pool, &created, &base_url) else {
        warn_unusable(ctx, pool, &created.key);
        warn_shared_name(ctx, pool, &created.key);
        return Ok(());
    };
    // The secret was in this process only: a key nobody can ever use is taken back (and the
    // failure is one, even for a reader that went away: the key it wanted does not exist).
    let id = &created.key.id;
    Err(match pool.keys().delete(id).await {
        Ok(_) => Failure::new(
            format!("the new key's secret could not be written ({e}); the key was deleted again"),
            "run `codexpool key create` where its output is read",
        ),
        Err(d) => Failure::new(
            format!(
                "the new key's secret could not be written ({e}), and key {id} could not be \
                 deleted ({d})"
            ),
            format!("nobody has its secret: delete it with `codexpool key delete {id}`"),
        ),
    }
    .into())
}

/// What `key create` outputs: the key, its secret (only here, only once) and where to use it;
/// `Err` when the secret could not be written whole.
fn show_created(
    ctx: &Ctx,
    pool: &Pool,
    created: &CreatedKey,
    base_url: &str,
) -> std::io::Result<()> {
    let out = &ctx.out;
    if out.json {
        #[derive(serde::Serialize)]
        struct Created<'a> {
            key: KeyView<'a>,
            secret: &'a str,
            base_url: &'a str,
        }
        return out.json(&Created {
            key: KeyView::new(&created.key, pool.now()),
            secret: created.secret.expose(),
            base_url,
        });
    }
    if out.quiet {
        // The secret is what `key create` exists to output: alone, for `$(codexpool -q …)`.
        return out.data(created.secret.expose());
    }
    let k = &created.key;
    out.line(format!(
        "Created key {} {}",
        out.paint(&k.id, Paint::Bold),
        out.paint(format!("({})", visible(&k.name)), Paint::Dim)
    ))?;
    let limits = limits(k);
    if !limits.is_empty() {
        out.line(format!("  {}", limits.join(" · ")))?;
    }
    out.line("")?;
    out.line("Give these to your OpenAI client (the secret is shown only this once):")?;
    out.line("")?;
    out.line(format!("  export OPENAI_BASE_URL={base_url}"))?;
    out.line(format!(
        "  export OPENAI_API_KEY={}",
        out.paint(created.secret.expose(), Paint::Green)
    ))?;
    // The secret is out: a reader that stopped there (`sed '/API_KEY/q'`) has what it needs.
    let _ = out.line("");
    out.note("It is stored hashed: if you lose it, delete the key and create another.");
    Ok(())
}

/// What a key is limited to, for people.
fn limits(k: &PlatformKey) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(m) = &k.model {
        v.push(format!("model {m}"));
    }
    if !k.allowed_models.is_empty() {
        v.push(format!("models {}", k.allowed_models.join(", ")));
    }
    if !k.allowed_groups.is_empty() {
        v.push(format!("groups {}", k.allowed_groups.join(", ")));
    }
    if let Some(e) = &k.reasoning_effort {
        v.push(format!("effort {e}"));
    }
    if let Some(t) = k.expires_at {
        v.push(format!("expires {} UTC", datetime(t)));
    }
    v
}

/// `key list`.
pub fn list(ctx: &Ctx, pool: &Pool) -> anyhow::Result<()> {
    let keys = pool.keys().list();
    let out = &ctx.out;
    let now = pool.now();
    if out.json {
        let views: Vec<KeyView<'_>> = keys.iter().map(|k| KeyView::new(k, now)).collect();
        out.json(&views)?;
        return Ok(());
    }
    if keys.is_empty() {
        out.note("No keys yet. Create one with `codexpool key create --name NAME`.");
        return Ok(());
    }
    let mut t = out.table(&[
        "ID",
        "NAME",
        "KEY",
        "MODELS",
        "GROUPS",
        "EFFORT",
        "STATUS",
        "EXPIRES",
        "LAST USED",
    ]);
    for k in &keys {
        let models = match (&k.model, k.allowed_models.is_empty()) {
            (Some(m), _) => format!("{m} (bound)"),
            (None, false) => k.allowed_models.join(", "),
            (None, true) => "any".into(),
        };
        let groups = if k.allowed_groups.is_empty() {
            "any".into()
        } else {
            k.allowed_groups.join(", ")
        };
        let status = match status(k, now) {
            "disabled" => cell("disabled", Some(Paint::Yellow)),
            "expired" => cell("expired", Some(Paint::Red)),
            s => cell(s, Some(Paint::Green)),
        };
        let expires = match k.expires_at {
            None => cell("never", Some(Paint::Dim)),
            Some(t) if t <= now => cell(datetime(t), Some(Paint::Red)),
            Some(t) => cell(format!("in {}", duration(t.since(now))), None),
        };
        t.add_row(vec![
            cell(&k.id, None),
            cell(&k.name, Some(Paint::Bold)),
            cell(&k.hint, Some(Paint::Dim)),
            cell(models, None),
            cell(groups, None),
            cell(k.reasoning_effort.as_deref().unwrap_or(NONE), None),
            status,
            expires,
            cell(
                k.last_used_at
                    .map_or_else(|| "never".into(), |t| ago(now, t)),
                None,
            ),
        ]);
    }
    out.print_table(&t)?;
    Ok(())
}

/// `key update`.
pub async fn update(ctx: &Ctx, pool: &Pool, a: KeyUpdateArgs) -> anyhow::Result<()> {
    let mut p = KeyPatch::default();
    if let Some(n) = a.name {
        p = p.name(n);
    }
    if let Some(m) = a.model {
        p = p.model(Some(m));
    }
    if !a.allow_models.is_empty() || a.clear_allowed_models {
        p = p.allowed_models(a.allow_models);
    }
    if !a.allow_groups.is_empty() || a.clear_allowed_groups {
        p = p.allowed_groups(a.allow_groups);
    }
    if let Some(e) = a.effort {
        p = p.reasoning_effort(Some(e));
    }
    if a.clear_effort {
        p = p.reasoning_effort(None);
    }
    if let Some(e) = a.expires {
        p = p.expires_at(e.resolve(pool.now()));
    }
    let k = pool.keys().update(&a.id, p).await?;
    done(ctx, pool, &k, "Updated")
}

/// `key enable`.
pub async fn enable(ctx: &Ctx, pool: &Pool, id: &str) -> anyhow::Result<()> {
    let k = pool.keys().enable(id).await?;
    done(ctx, pool, &k, "Enabled")
}

/// `key disable`.
pub async fn disable(ctx: &Ctx, pool: &Pool, id: &str) -> anyhow::Result<()> {
    let k = pool.keys().disable(id).await?;
    done(ctx, pool, &k, "Disabled")
}

/// `key delete`.
pub async fn delete(ctx: &Ctx, pool: &Pool, id: &str) -> anyhow::Result<()> {
    let k = pool.keys().delete(id).await?;
    done(ctx, pool, &k, "Deleted")
}

fn done(ctx: &Ctx, pool: &Pool, k: &PlatformKey, verb: &str) -> anyhow::Result<()> {
    let out = &ctx.out;
    if out.json {
        out.json(&KeyView::new(k, pool.now()))?;
    } else {
        let mut line = format!("{verb} key {} ({}, {})", k.id, visible(&k.name), k.hint);
        if verb == "Updated" {
            // What the key is now, an expiry taken away too.
            let mut limits = limits(k);
            if k.expires_at.is_none() {
                limits.push("no expiry".into());
            }
            line.push_str(&format!(": {}", limits.join(" · ")));
        }
        out.line(line)?;
    }
    if verb != "Deleted" {
        warn_unusable(ctx, pool, k);
    }
    if verb == "Updated" {
        warn_shared_name(ctx, pool, k);
    }
    Ok(())
}

/// A name another key has too no longer names either: said when it happens, not when a later
/// command finds it ambiguous.
fn warn_shared_name(ctx: &Ctx, pool: &Pool, k: &PlatformKey) {
    let others: Vec<String> = pool
        .keys()
        .list()
        .into_iter()
        .filter(|o| o.id != k.id && o.name == k.name)
        .map(|o| o.id)
        .collect();
    if !others.is_empty() {
        let who = match others.len() {
            1 => "another key is".to_string(),
            n => format!("{n} other keys are"),
        };
        ctx.out.warn(format!(
            "{who} named {} too ({}): commands must name these keys by id",
            visible(&k.name),
            others.join(", ")
        ));
    }
}

/// A key made, enabled or changed is not always usable: says why its requests will fail.
fn warn_unusable(ctx: &Ctx, pool: &Pool, k: &PlatformKey) {
    if let Some(at) = k.expires_at
        && k.enabled
        && at <= pool.now()
    {
        ctx.out.warn(format!(
            "key {} expired at {at}: it is still refused; give it a new expiry with \
             `codexpool key update {} --expires <WHEN>` (`never` for none)",
            k.id, k.id
        ));
    }
    // A disabled key is refused (403) whatever its groups.
    if k.allowed_groups.is_empty() || !k.enabled {
        return;
    }
    let accounts = pool.accounts().list(&Default::default());
    let served = |g: &String| {
        accounts
            .iter()
            .any(|a| a.status == AccountStatus::Active && a.group.as_ref() == Some(g))
    };
    if !k.allowed_groups.iter().any(served) {
        ctx.out.warn(format!(
            "no active account is in group {}: the key's requests get 503 until one is \
             (`codexpool account update <ID> --group <GROUP>`)",
            k.allowed_groups.join(" or ")
        ));
    }
}
