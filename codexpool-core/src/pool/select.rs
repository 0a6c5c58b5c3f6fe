//! Account selection: which account serves the next request. In memory, lock-free per account
//! (atomics), with an expected O(1) scan under `ordered` and `round-robin` (the first usable
//! account is usually the first one looked at); `headroom` looks at every account.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Demand, PoolError, Slot, Table};
use crate::account::AccountStatus;
use crate::config::RouteStrategy;
use crate::time::Timestamp;

/// Why an account cannot take a request right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Block {
    Group,
    Status(AccountStatus),
    Cooling(i64),
    Exhausted(i64),
    Busy,
    Tried,
}

/// How an account looks for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    Usable {
        /// Below the quota guard: use only when nothing else is left.
        guarded: bool,
        /// Share left (100 when unknown).
        left: f64,
        /// Earliest reset of a known window (`i64::MAX` when unknown).
        reset: i64,
    },
    Blocked(Block),
}

pub(crate) fn evaluate(slot: &Slot, demand: &Demand<'_>, now: i64, cap: u32) -> Verdict {
    let a = &slot.account;
    if let Some(groups) = demand.groups
        && !groups.is_empty()
        && !a.group.as_ref().is_some_and(|g| groups.contains(g))
    {
        return Verdict::Blocked(Block::Group);
    }
    if a.status != AccountStatus::Active {
        return Verdict::Blocked(Block::Status(a.status));
    }
    let st = &slot.state;
    if let Some(until) = st.exhausted_until(now) {
        return Verdict::Blocked(Block::Exhausted(until));
    }
    let cool = st.cooldown_until.load(Ordering::Relaxed);
    if cool > now {
        return Verdict::Blocked(Block::Cooling(cool));
    }
    if demand.tried.contains(&a.id) {
        return Verdict::Blocked(Block::Tried);
    }
    // SeqCst: a waiter's first look at a full slot is its half of the `Gate` handshake; a
    // Relaxed load could read a count from before a release that saw no waiter.
    if cap > 0 && st.inflight.load(Ordering::SeqCst) >= cap {
        return Verdict::Blocked(Block::Busy);
    }
    let (guarded, left, reset) = st.headroom(now);
    Verdict::Usable {
        guarded,
        left,
        reset,
    }
}

/// Picks a slot and takes an inflight unit on it, or says why none could be taken.
pub(crate) fn pick(
    table: &Table,
    demand: &Demand<'_>,
    strategy: RouteStrategy,
    cursor: &std::sync::atomic::AtomicUsize,
    now: Timestamp,
    cap: u32,
) -> Result<Arc<Slot>, Failure> {
    let now = now.as_millis();
    let n = table.order.len();
    if n == 0 {
        return Err(Failure::Final(PoolError::NoAccounts));
    }
    // Candidates in strategy order; the first usable one not below the guard wins, else the
    // first guarded one. `headroom` ranks every usable account instead. Round-robin: each
    // request starts one further (concurrent ones too), and one that skipped accounts moves the
    // start past them.
    let start = match strategy {
        RouteStrategy::RoundRobin => cursor.fetch_add(1, Ordering::Relaxed) % n,
        _ => 0,
    };
    // Up to three passes: a slot may fill up between evaluation and the inflight increment.
    const PASSES: usize = 3;
    for pass in 0..PASSES {
        let mut guarded_fallback: Option<(usize, f64, i64)> = None;
        let mut best: Option<(usize, f64, i64)> = None;
        for step in 0..n {
            let i = (start + step) % n;
            let slot = &table.order[i];
            let Verdict::Usable {
                guarded,
                left,
                reset,
            } = evaluate(slot, demand, now, cap)
            else {
                continue;
            };
            if guarded {
                if guarded_fallback.is_none_or(|(_, l, r)| better(left, reset, l, r)) {
                    guarded_fallback = Some((i, left, reset));
                }
                continue;
            }
            if strategy != RouteStrategy::Headroom {
                if slot.state.try_take(cap) {
                    if strategy == RouteStrategy::RoundRobin && step > 0 {
                        cursor.fetch_add(step, Ordering::Relaxed);
                    }
                    return Ok(slot.clone());
                }
                continue;
            }
            if best.is_none_or(|(_, l, r)| better(left, reset, l, r)) {
                best = Some((i, left, reset));
            }
        }
        // The best one filled up meanwhile: another pass finds the next best, before an
        // account below its guard is used (in a burst every request ranks the same one first).
        if let Some((i, _, _)) = best {
            if table.order[i].state.try_take(cap) {
                return Ok(table.order[i].clone());
            }
            if pass + 1 < PASSES {
                continue;
            }
        }
        match guarded_fallback {
            Some((i, _, _)) if table.order[i].state.try_take(cap) => {
                return Ok(table.order[i].clone());
            }
            None if best.is_none() => break,
            _ => {}
        }
    }
    Err(classify(table, demand, now, cap))
}

/// More left wins; on a tie, the earlier reset (use what will be refilled soonest).
fn better(left: f64, reset: i64, best_left: f64, best_reset: i64) -> bool {
    left > best_left || (left == best_left && reset < best_reset)
}

/// Why nothing could be picked.
pub(crate) enum Failure {
    /// Every candidate is at its inflight cap: waiting may help.
    Busy,
    /// Waiting will not help.
    Final(PoolError),
}

fn classify(table: &Table, demand: &Demand<'_>, now: i64, cap: u32) -> Failure {
    let mut in_groups = 0usize;
    let mut by_status = [0usize; 4];
    let (mut busy, mut tried) = (0usize, 0usize);
    let mut cooling: Option<i64> = None;
    let mut exhausted: Option<i64> = None;
    let mut cooling_or_exhausted = 0usize;
    for slot in &table.order {
        match evaluate(slot, demand, now, cap) {
            Verdict::Blocked(Block::Group) => continue,
            Verdict::Blocked(Block::Status(s)) => {
                by_status[AccountStatus::ALL.iter().position(|x| *x == s).unwrap_or(0)] += 1;
            }
            Verdict::Blocked(Block::Cooling(t)) => {
                cooling = Some(cooling.map_or(t, |c| c.min(t)));
                cooling_or_exhausted += 1;
            }
            Verdict::Blocked(Block::Exhausted(t)) => {
                exhausted = Some(exhausted.map_or(t, |c| c.min(t)));
                cooling_or_exhausted += 1;
            }
            Verdict::Blocked(Block::Busy) => busy += 1,
            Verdict::Blocked(Block::Tried) => tried += 1,
            // Became usable between the pick and now: let the caller retry.
            Verdict::Usable { .. } => busy += 1,
        }
        in_groups += 1;
    }
    if in_groups == 0 {
        return Failure::Final(PoolError::NoneInGroups {
            groups: demand.groups.map(<[String]>::to_vec).unwrap_or_default(),
        });
    }
    if busy > 0 {
        return Failure::Busy;
    }
    if tried > 0 {
        let back_at = exhausted.into_iter().chain(cooling).min();
        return Failure::Final(PoolError::AllTried {
            tried,
            back_at: back_at.map(Timestamp::from_millis),
        });
    }
    if cooling_or_exhausted == 0 {
        let [_, disabled, needs_login, banned] = by_status;
        return Failure::Final(PoolError::NoneActive {
            disabled,
            needs_login,
            banned,
        });
    }
    match (exhausted, cooling) {
        (Some(e), None) => Failure::Final(PoolError::Exhausted {
            resets_at: Timestamp::from_millis(e),
        }),
        (e, Some(c)) => Failure::Final(PoolError::CoolingDown {
            until: Timestamp::from_millis(e.map_or(c, |e| e.min(c))),
        }),
        (None, None) => Failure::Final(PoolError::NoAccounts),
    }
}
