//! `Lease`: one request's hold on an account. Holding it counts as inflight; dropping it (on
//! success, error, panic or cancellation alike) gives the slot back. `report` tells the pool how
//! the upstream answered, which drives cooldowns, exhaustion and status.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Slot;
use crate::Pool;
use crate::account::{Account, AccountStatus};
use crate::secret::Secret;
use crate::time::Timestamp;
use crate::usage::UsageLimit;

/// Cooldowns after repeated short rate limits (429 other than usage_limit_reached) that name no
/// `Retry-After`; with one, the first is the upstream's and repeats climb from the first step.
pub const RATE_LIMIT_COOLDOWNS: [Duration; 4] = [
    Duration::from_secs(45),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
];
/// The longest `Retry-After` believed: the ladder's last step (`Retry-After: 999999999` would
/// bench the account for decades).
pub const MAX_RETRY_AFTER: Duration = RATE_LIMIT_COOLDOWNS[RATE_LIMIT_COOLDOWNS.len() - 1];
/// How long a usage limit whose reset is already past by this clock holds the account.
const PAST_RESET_WAIT: Duration = Duration::from_secs(60);
/// Cooldowns after repeated upstream errors (5xx, a broken or silent stream, a connection
/// failure): one error benches the account briefly (the next request goes elsewhere), an
/// upstream that keeps failing a little longer. Never long: such errors are mostly the
/// upstream's, not the account's, and the first request after a cooldown is what finds the
/// upstream back (an outage must not keep every account benched for long after it ended).
pub const UPSTREAM_ERROR_COOLDOWNS: [Duration; 4] = [
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(60),
];
/// The failures whose cooldowns grow on repeats, each counting its own.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ladder {
    /// [`RATE_LIMIT_COOLDOWNS`]
    RateLimit = 0,
    /// [`UPSTREAM_ERROR_COOLDOWNS`]
    UpstreamError = 1,
}

impl Ladder {
    pub(crate) fn steps(self) -> &'static [Duration] {
        match self {
            Self::RateLimit => &RATE_LIMIT_COOLDOWNS,
            Self::UpstreamError => &UPSTREAM_ERROR_COOLDOWNS,
        }
    }
}

/// Cooldown after a Cloudflare challenge.
pub const CHALLENGE_COOLDOWN: Duration = Duration::from_secs(6);
/// Cooldown after a 401 that a token refresh did not cure.
pub const UNAUTHORIZED_COOLDOWN: Duration = Duration::from_secs(30);
/// How long an account whose new status (`needs_login`, `banned`) is on its way to the database
/// is out of use meanwhile: the write may wait on a busy database, or fail.
const STATUS_WRITE_COOLDOWN: Duration = Duration::from_secs(60);

/// How the upstream answered a request made under a lease.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// It worked: the strike count starts over (unless a request that failed meanwhile set a
    /// cooldown that is still running).
    Success,
    /// A short rate limit: cooldown growing on repeats (45 s → 5 min → 30 min → 2 h), or the
    /// upstream's `Retry-After` when longer (believed up to [`MAX_RETRY_AFTER`]).
    RateLimited {
        /// The upstream's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The usage limit is reached: the account is exhausted until the reset (a minute when
    /// that is already past by this clock; five hours when unknown).
    UsageLimit {
        /// When it resets, if known.
        resets_at: Option<Timestamp>,
    },
    /// A 401 that a refresh did not cure.
    Unauthorized,
    /// The sign-in is dead; status becomes `needs_login`.
    NeedsLogin {
        /// Why.
        reason: String,
    },
    /// The account or workspace is deactivated; status becomes `banned`.
    Banned {
        /// Why.
        reason: String,
    },
    /// 5xx, a broken or silent stream, or a connection failure: a cooldown growing on repeats
    /// (5 s → 15 s → 30 s → 1 min).
    UpstreamError,
    /// A Cloudflare challenge: ~6 s cooldown.
    Challenge,
}

/// A hold on one account for one request. See the module docs.
pub struct Lease {
    pub(crate) slot: Arc<Slot>,
    pub(crate) pool: Pool,
    /// The conversation was last served by another account.
    pub(crate) moved: bool,
    /// The conversation ([`Demand::affinity`](crate::Demand)), pinned to this account only
    /// once it serves ([`Lease::commit`]).
    pub(crate) conversation: Option<Box<str>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("account", &self.slot.account.id)
            .finish()
    }
}

impl Lease {
    /// The account, as it was when the lease was taken.
    pub fn account(&self) -> &Account {
        &self.slot.account
    }

    /// The account's id.
    pub fn account_id(&self) -> &str {
        &self.slot.account.id
    }

    /// Whether the conversation ([`Demand::affinity`](crate::Demand)) was last served by another
    /// account, which is now unusable or busy: what that account made for it (encrypted
    /// reasoning, `previous_response_id`) must not be sent to this one.
    pub fn moved(&self) -> bool {
        self.moved
    }

    /// This account serves the request: its conversation is pinned to it from now on. Called
    /// when the answer's first output goes to the client, and by a [`Outcome::Success`] report.
    /// A lease dropped before leaves the pin where it was: an attempt that failed, or whose
    /// client left, does not move the conversation (its next turn would be stripped of what
    /// the account that really served it made).
    pub fn commit(&self) {
        if let Some(key) = &self.conversation {
            let now = self.pool.shared.clock.now();
            crate::sync::lock(&self.pool.shared.affinity).set(
                key,
                &self.slot.account.id,
                now.as_millis(),
            );
        }
    }

    /// The known window nearest to full among those within their guard (5 % / 10 % left) whose
    /// reset is ahead, as refused (at 100 %) until then. A window further from full is no
    /// likely cause: guessing the weekly one would bench the account for days.
    fn fullest_window(&self, now: Timestamp) -> Option<crate::usage::WindowReading> {
        let usage = crate::sync::lock(&self.slot.state.usage);
        [&usage.five_hour, &usage.weekly]
            .into_iter()
            .flatten()
            .filter(|w| w.resets_at.is_some_and(|r| r > now) && w.is_guarded(now))
            .filter_map(|w| Some((w.percent_left(now)?, w)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, w)| crate::usage::WindowReading {
                used_percent: 100.0,
                source: crate::usage::ReadingSource::RateLimit,
                observed_at: now,
                ..w.clone()
            })
    }

    /// The pool's clock now: what a reset given as "in N seconds" is counted from.
    pub fn now(&self) -> Timestamp {
        self.pool.shared.clock.now()
    }

    /// The account's current access token (a refresh since the lease was taken is seen).
    pub fn access_token(&self) -> Secret {
        let t = crate::sync::read(&self.pool.shared.accounts);
        t.get(&self.slot.account.id)
            .map(|s| s.account.tokens.access_token.clone())
            .unwrap_or_else(|| self.slot.account.tokens.access_token.clone())
    }

    /// Records how the upstream answered.
    pub async fn report(&self, outcome: Outcome) {
        let shared = &self.pool.shared;
        let st = &self.slot.state;
        let now = shared.clock.now();
        match outcome {
            Outcome::Success => {
                self.commit();
                // Leases are not handed out while an account cools down, so a cooldown still
                // running now was set by a request that failed after this one started: its verdict
                // is newer than this success, and it keeps the cooldown and the strike count.
                if st.cooldown_until.load(Ordering::Relaxed) <= now.as_millis() {
                    for strikes in &st.strikes {
                        strikes.store(0, Ordering::Relaxed);
                    }
                }
                st.used.touch(now);
            }
            Outcome::RateLimited { retry_after } => {
                let retry_after = retry_after.map(|r| r.min(MAX_RETRY_AFTER));
                st.strike(now, Ladder::RateLimit, retry_after);
            }
            Outcome::UsageLimit { resets_at } => {
                // A limit that names no reset, or one already past by this clock (the
                // upstream's is behind), says less than an exhaustion already known with its
                // reset (e.g. from the same answer's `x-codex-*` headers): keep that one. Else
                // a past reset lies shortly ahead (not at once: the next request would fail).
                let past = resets_at.is_some_and(|r| r <= now);
                if (resets_at.is_none() || past)
                    && self.slot.state.exhausted_until(now.as_millis()).is_some()
                {
                    return;
                }
                let resets_at = if past {
                    Some(now.plus(PAST_RESET_WAIT))
                } else {
                    resets_at
                };
                // No reset named (a `response.failed` in a 200 stream): the limit is most likely
                // that of a known window near full (the backend refuses before 100 % on some
                // plans), until its reset, rather than a whole 5-hour window from now.
                let guessed = resets_at.is_none().then(|| self.fullest_window(now));
                let reading = guessed.flatten().unwrap_or_else(|| {
                    UsageLimit {
                        resets_at,
                        plan_type: None,
                    }
                    .to_reading(now)
                });
                self.pool
                    .usage()
                    .record_readings(&self.slot.account.id, vec![reading], None);
            }
            Outcome::Unauthorized => st.cool_until(now.plus(UNAUTHORIZED_COOLDOWN)),
            Outcome::UpstreamError => st.strike(now, Ladder::UpstreamError, None),
            Outcome::Challenge => st.cool_until(now.plus(CHALLENGE_COOLDOWN)),
            Outcome::NeedsLogin { reason } => {
                self.set_status(AccountStatus::NeedsLogin, reason).await
            }
            Outcome::Banned { reason } => self.set_status(AccountStatus::Banned, reason).await,
        }
    }

    /// Out of use at once (requests meanwhile would try it again), until the status is written,
    /// in a task of its own: a caller that goes away (a client that hung up) does not cut the
    /// write short. Once written, the status keeps the account out, and the cooldown goes (a
    /// sign-in right after must not find the account still cooling down).
    async fn set_status(&self, status: AccountStatus, reason: String) {
        let until = self.pool.now().plus(STATUS_WRITE_COOLDOWN).as_millis();
        self.slot.state.cool_until(Timestamp::from_millis(until));
        let (pool, slot) = (self.pool.clone(), self.slot.clone());
        let write = self.pool.shared.runtime.spawn(async move {
            let id = &slot.account.id;
            match pool
                .accounts()
                .set_automatic_status(id, status, reason)
                .await
            {
                Ok(()) => {
                    let cooldown = &slot.state.cooldown_until;
                    let _ =
                        cooldown.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(account = %id, error = %e, "could not store account status");
                }
            }
        });
        let _ = write.await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.state.inflight.fetch_sub(1, Ordering::SeqCst);
        self.pool.shared.gate.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::flaky::FlakyStore;
    use crate::{Config, Demand};

    /// An account found banned is out of use at once, even while the database will not take
    /// its new status.
    #[tokio::test]
    async fn a_ban_the_database_refused_still_takes_the_account_out() {
        let store = FlakyStore::new();
        for (id, chatgpt) in [("a1", "c1"), ("a2", "c2")] {
            let account = crate::store::conformance::sample_account(id, chatgpt);
            store.inner.insert_account(&account).await.unwrap();
        }
        let pool = Pool::builder(Config::default().with("ROUTE_STRATEGY", "ordered").unwrap())
            .store(store.clone())
            .open()
            .await
            .unwrap();
        let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
        let banned = lease.account_id().to_string();
        store.set_down(true);
        lease
            .report(Outcome::Banned {
                reason: "account_deactivated".into(),
            })
            .await;
        drop(lease);
        store.set_down(false);
        for _ in 0..3 {
            let next = pool.accounts().acquire(&Demand::any()).await.unwrap();
            assert_ne!(next.account_id(), banned);
        }
        // Written, the status keeps it out, and no cooldown is left behind for a person who
        // enables it again.
        let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
        let id = lease.account_id().to_string();
        lease
            .report(Outcome::Banned {
                reason: "account_deactivated".into(),
            })
            .await;
        drop(lease);
        assert_eq!(pool.accounts().runtime(&id).unwrap().cooldown_until, None);
        pool.accounts().enable(&id).await.unwrap();
        let next = pool.accounts().acquire(&Demand::any()).await.unwrap();
        assert_eq!(next.account_id(), id);
    }
}
