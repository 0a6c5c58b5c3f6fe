//! What only running servers know. The accounts' runtime state (requests in flight, cooldowns)
//! lives in the serving processes' memory: `account list` and `usage` ask every server running
//! on this database (found through the files in `servers/` beside it) and fall back to this
//! process's own view — no requests, no cooldowns — when none answers. `key create` tells the
//! address a running server really listens on.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use codexpool_core::Pool;
use codexpool_core::pool::AccountRuntime;
use codexpool_gateway::admin::{AdminClient, AdminError};
use serde::{Deserialize, Serialize};

use super::Ctx;

/// Where the runtime figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Source {
    /// The servers running on this database.
    Server,
    /// This process: no requests in flight, no cooldowns.
    Local,
}

/// Runtime state by account id.
pub(super) struct Runtimes {
    /// From the servers; `None` when none answered.
    live: Option<HashMap<String, AccountRuntime>>,
}

#[derive(Deserialize)]
struct Listed {
    id: String,
    runtime: AccountRuntime,
}

const FALLBACK: &str = "showing this process's view (no requests in flight, no cooldowns)";

impl Runtimes {
    /// This process's own view (it serves, or nothing does).
    pub fn local() -> Self {
        Self { live: None }
    }

    /// Asks every server on this database, at once. Several servers (each with its own
    /// requests and cooldowns) add up: requests in flight are summed, the latest cooldown and
    /// exhaustion shown, and an account is usable when every server could use it. A server
    /// that answers wrongly is named in a warning; the file of one that no longer listens (a
    /// crash) is removed, with a warning when something else took its port.
    pub async fn load(ctx: &Ctx) -> Self {
        let mut asked = tokio::task::JoinSet::new();
        for client in AdminClient::find_all(&ctx.config) {
            asked.spawn(async move {
                let answer = client.call("account/list", serde_json::json!({})).await;
                (client, answer)
            });
        }
        let mut live: Option<HashMap<String, AccountRuntime>> = None;
        while let Some(Ok((client, answer))) = asked.join_next().await {
            let list = match answer {
                Ok(v) => match serde_json::from_value::<Vec<Listed>>(v) {
                    Ok(list) => list,
                    Err(e) => {
                        ctx.out.warn(format!(
                            "the server at {} answered account/list in an unknown shape ({e}); \
                             {FALLBACK}",
                            client.url()
                        ));
                        continue;
                    }
                },
                Err(AdminError::NotRunning { .. }) => {
                    client.forget(&ctx.config);
                    continue;
                }
                Err(e @ AdminError::NotOurs { .. }) => {
                    client.forget(&ctx.config);
                    ctx.out.warn(format!("{e}; its file was removed"));
                    continue;
                }
                Err(e) => {
                    ctx.out.warn(format!("{e}; {FALLBACK}"));
                    continue;
                }
            };
            let map = live.get_or_insert_with(HashMap::new);
            for a in list {
                match map.entry(a.id) {
                    Entry::Vacant(v) => {
                        v.insert(a.runtime);
                    }
                    Entry::Occupied(mut o) => {
                        let seen = o.get_mut();
                        seen.inflight += a.runtime.inflight;
                        seen.cooldown_until = seen.cooldown_until.max(a.runtime.cooldown_until);
                        seen.exhausted_until = seen.exhausted_until.max(a.runtime.exhausted_until);
                        seen.usable &= a.runtime.usable;
                    }
                }
            }
        }
        Self { live }
    }

    /// An account's runtime state and where it comes from (an account the servers have not
    /// seen yet, added a moment ago, is this process's view).
    pub fn get(&self, pool: &Pool, id: &str) -> Option<(AccountRuntime, Source)> {
        if let Some(rt) = self.live.as_ref().and_then(|m| m.get(id)) {
            return Some((rt.clone(), Source::Server));
        }
        Some((pool.accounts().runtime(id).ok()?, Source::Local))
    }
}

/// Tells every server on this database that it changed, and waits until each has read it (or
/// could not be asked: it then sees the change by itself within half a second, and a server
/// that is there but refused says so in a warning: a script that uses the change at once would
/// meet the old state there).
pub(super) async fn tell_servers(ctx: &Ctx) {
    let mut told = tokio::task::JoinSet::new();
    for client in AdminClient::find_all(&ctx.config) {
        told.spawn(async move {
            let answer = client.call("pool/catch_up", serde_json::json!({})).await;
            (client, answer)
        });
    }
    while let Some(Ok((client, answer))) = told.join_next().await {
        match answer {
            Ok(_) => {}
            Err(AdminError::NotRunning { .. }) => client.forget(&ctx.config),
            Err(e @ AdminError::NotOurs { .. }) => {
                client.forget(&ctx.config);
                ctx.out.warn(format!("{e}; its file was removed"));
            }
            Err(e) => ctx.out.warn(format!(
                "{e}; that server takes the change within a second, not at once"
            )),
        }
    }
}

/// The `base_url` an OpenAI client on this machine should use: the oldest server running on
/// this database that answers, else `SERVICE_ADDR`.
pub(super) async fn client_base_url(ctx: &Ctx) -> String {
    for client in AdminClient::find_all(&ctx.config) {
        match client.verify().await {
            Ok(()) => return format!("{}/v1", client.url()),
            Err(AdminError::NotRunning { .. } | AdminError::NotOurs { .. }) => {
                client.forget(&ctx.config)
            }
            Err(_) => {}
        }
    }
    format!(
        "{}/v1",
        codexpool_gateway::admin::local_url(ctx.config.service_addr)
    )
}
