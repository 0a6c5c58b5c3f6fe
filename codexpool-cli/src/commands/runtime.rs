//! The accounts' runtime state (requests in flight, cooldowns) for listings. Only the serving
//! process knows it: `account list` and `usage` ask the server running on this database (found
//! through `server.json` beside it) and fall back to this process's own view — no requests, no
//! cooldowns — when none answers.

use std::collections::HashMap;

use codexpool_core::Pool;
use codexpool_core::pool::AccountRuntime;
use codexpool_gateway::admin::{AdminClient, AdminError};
use serde::{Deserialize, Serialize};

use super::Ctx;

/// Where the runtime figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Source {
    /// The server running on this database.
    Server,
    /// This process: no requests in flight, no cooldowns.
    Local,
}

/// Runtime state by account id.
pub(super) struct Runtimes {
    /// From the server; `None` when no server answered.
    live: Option<HashMap<String, AccountRuntime>>,
}

#[derive(Deserialize)]
struct Listed {
    id: String,
    runtime: AccountRuntime,
}

impl Runtimes {
    /// This process's own view (it serves, or nothing does).
    pub fn local() -> Self {
        Self { live: None }
    }

    /// Asks the server on this database, if one runs; says so when one should but fails.
    pub async fn load(ctx: &Ctx) -> Self {
        let Some(client) = AdminClient::find(&ctx.config) else {
            return Self::local();
        };
        let live = match client.call("account/list", serde_json::json!({})).await {
            Ok(v) => match serde_json::from_value::<Vec<Listed>>(v) {
                Ok(list) => Some(list.into_iter().map(|a| (a.id, a.runtime)).collect()),
                Err(e) => {
                    ctx.out.warn(format!(
                        "the server at {} answered account/list in an unknown shape ({e}); \
                         showing this process's view (no requests in flight, no cooldowns)",
                        client.url()
                    ));
                    None
                }
            },
            // It stopped without saying so (a crash): nothing is in flight anywhere.
            Err(AdminError::NotRunning { .. }) => None,
            Err(e) => {
                ctx.out.warn(format!(
                    "{e}; showing this process's view (no requests in flight, no cooldowns)"
                ));
                None
            }
        };
        Self { live }
    }

    /// An account's runtime state and where it comes from (an account the server has not
    /// seen yet, added a moment ago, is this process's view).
    pub fn get(&self, pool: &Pool, id: &str) -> Option<(AccountRuntime, Source)> {
        if let Some(rt) = self.live.as_ref().and_then(|m| m.get(id)) {
            return Some((rt.clone(), Source::Server));
        }
        Some((pool.accounts().runtime(id).ok()?, Source::Local))
    }
}
