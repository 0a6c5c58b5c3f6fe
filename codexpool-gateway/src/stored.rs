//! The responses the gateway keeps for its clients, because the Codex backend keeps none.
//!
//! The backend runs every request with `store: false`, so it cannot resolve a
//! `previous_response_id` or an `item_reference` — yet that is how OpenAI's SDKs carry a
//! conversation forward when `store` is left at its default (`true`): the Vercel AI SDK sends
//! earlier turns as `item_reference`s, openai-python and LangChain send `previous_response_id`.
//! So for each `/v1/responses` answer relayed to a client that did not ask for `store: false`,
//! the gateway keeps what OpenAI would have stored — the input items as they went upstream, the
//! output items and the response object — under the platform key that asked (a key never sees
//! another key's responses), and expands later requests of that key from it before they go
//! upstream ([`crate::adapt::responses`]).
//!
//! Each response keeps its whole input, already expanded, so a `previous_response_id` costs one
//! lookup however long the chain behind it, and an entry never depends on another one (evicting
//! turn 3 leaves turn 4 whole). Copying every earlier turn into every entry would cost the square
//! of a conversation's length, so items are shared instead: turn n's input holds the very items
//! of turn n-1's input and output (an [`Arc`] each) plus the new ones, and each item's bytes are
//! counted once however many entries hold it. A conversation of n turns costs its items' bytes
//! plus one pointer per item per turn.
//!
//! A response is kept as the upstream's final `response` object and read into its items only
//! when something refers to it: clients that leave `store` at its default but never come back to
//! an answer (most) pay for one copy of it, not for splitting it up.
//!
//! Bounded by bytes (`RESPONSES_STORE_MB`): past the limit, the least recently used responses go
//! first, except that a key holding more than half of the store while other keys keep responses
//! too loses its own first (one key's agent loop cannot push out everyone's conversations); and
//! each goes [`RESPONSES_TTL`] after its last use. Everything is in memory, per
//! process: a restart forgets it all.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use codexpool_core::{Clock, Pool, Timestamp};

use crate::adapt::responses::{Recall, listed_item, stored_parts};
use crate::adapt::write_json;

/// How long a response is kept after its last use (OpenAI keeps stored responses for 30 days; a
/// gateway that keeps them in memory keeps them for a working session).
pub(crate) const RESPONSES_TTL: Duration = Duration::from_secs(6 * 60 * 60);

/// What an item costs beyond its text: the `Arc` and the item itself, its slot in the id index.
const ITEM_OVERHEAD: usize = 128;
/// What a response costs beyond its items: the entry, its map and LRU slots.
const ENTRY_OVERHEAD: usize = 256;

/// One input or output item of a kept response, as the backend takes it back: its JSON without
/// the top-level `id` (the backend would try to look that id up, and fail).
#[derive(Debug)]
pub(crate) struct Item {
    /// The item's own id (`rs_…`, `msg_…`, `fc_…`), for output items.
    id: Option<Box<str>>,
    json: Box<str>,
    /// Whether it can go upstream again: not a reasoning item without its encrypted content.
    replay: bool,
    /// The account whose encrypted reasoning it carries.
    account: Option<Arc<str>>,
    /// The response it came out of, marked as used when the item is referred to.
    origin: Option<Arc<str>>,
    /// How many kept responses hold it; changed under the store's lock only.
    holders: AtomicUsize,
}

impl Item {
    /// An input item: its JSON exactly as it went upstream.
    pub(crate) fn input(json: impl Into<Box<str>>) -> Arc<Self> {
        Arc::new(Self {
            id: None,
            json: json.into(),
            replay: true,
            account: None,
            origin: None,
            holders: AtomicUsize::new(0),
        })
    }

    /// An output item of an earlier response, for tests.
    #[cfg(test)]
    pub(crate) fn kept(id: &str, json: &str, replay: bool) -> Arc<Self> {
        Arc::new(Self {
            id: Some(id.into()),
            json: json.into(),
            replay,
            account: None,
            origin: None,
            holders: AtomicUsize::new(0),
        })
    }

    /// The JSON that goes upstream.
    pub(crate) fn json(&self) -> &str {
        &self.json
    }

    /// Whether the backend can take it back (a reasoning item without its encrypted content is
    /// only a reference the backend cannot resolve).
    pub(crate) fn replay(&self) -> bool {
        self.replay
    }

    fn size(&self) -> usize {
        // An id is kept twice: in the item and as the index key.
        ITEM_OVERHEAD + self.json.len() + self.id.as_ref().map_or(0, |id| 2 * id.len())
    }

    /// The item as clients see it: its id back in front.
    fn write_for_client(&self, out: &mut Vec<u8>) {
        with_id_first(out, &self.json, self.id.as_deref());
    }
}

/// An item's `json` with `id` in front (as it is without one).
fn with_id_first(out: &mut Vec<u8>, json: &str, id: Option<&str>) {
    let (Some(id), Some(rest)) = (id, json.strip_prefix('{')) else {
        out.extend_from_slice(json.as_bytes());
        return;
    };
    out.extend_from_slice(b"{\"id\":");
    write_json(out, id);
    if !rest.trim_start().starts_with('}') {
        out.push(b',');
    }
    out.extend_from_slice(rest.trim_start().as_bytes());
}

/// Which input items of a kept response are listed (see [`ResponseStore::input_items`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ItemsPage<'a> {
    /// At most this many (OpenAI's default: 20, at most 100).
    pub limit: usize,
    /// The last input item first (`order=desc`, OpenAI's default).
    pub newest_first: bool,
    /// Only items after this one, in the list's order.
    pub after: Option<&'a str>,
    /// Only items before this one.
    pub before: Option<&'a str>,
}

impl ItemsPage<'_> {
    /// The places in `ids` (the items in input order) to list, in the list's order, and
    /// whether more lie beyond them; `Err` names the cursor that is none of `ids`.
    fn of<S: AsRef<str>>(&self, ids: &[S]) -> Result<(Vec<usize>, bool), &'static str> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        if self.newest_first {
            order.reverse();
        }
        let place = |param, cursor: Option<&str>| match cursor {
            None => Ok(None),
            Some(c) => match order.iter().position(|&i| ids[i].as_ref() == c) {
                Some(at) => Ok(Some(at)),
                None => Err(param),
            },
        };
        let start = place("after", self.after)?.map_or(0, |at| at + 1);
        let end = place("before", self.before)?.unwrap_or(order.len());
        let window = order.get(start..end).unwrap_or_default();
        // Only `before`: the items just before it; else those just after the start.
        let shown = match (self.after, self.before) {
            (None, Some(_)) => &window[window.len().saturating_sub(self.limit)..],
            _ => &window[..window.len().min(self.limit)],
        };
        Ok((shown.to_vec(), shown.len() < window.len()))
    }
}

/// One kept response.
struct Entry {
    /// Its place in the LRU order.
    seq: u64,
    used: Timestamp,
    input: Box<[Arc<Item>]>,
    answer: Answer,
    /// The conversation (`session_id`) it was answered in, for the turns that continue it.
    session: Option<Arc<str>>,
    /// What it costs beyond its items.
    size: usize,
}

/// A kept response's own part.
enum Answer {
    /// The final `response` object as the upstream sent it, until something refers to it.
    Unread {
        json: Box<str>,
        /// The account that answered (its encrypted reasoning is readable by that one only).
        account: Option<Arc<str>>,
    },
    Read {
        output: Box<[Arc<Item>]>,
        /// The response object without its `output`, for `GET /v1/responses/{id}`.
        shell: Box<str>,
    },
}

impl Answer {
    fn output(&self) -> &[Arc<Item>] {
        match self {
            Self::Unread { .. } => &[],
            Self::Read { output, .. } => output,
        }
    }
}

/// What an entry costs beyond its items: `own` is its unread JSON or its shell.
fn entry_size(id: &str, own: usize, session: Option<&Arc<str>>, items: usize) -> usize {
    ENTRY_OVERHEAD
        + id.len()
        + own
        + session.map_or(0, |s| s.len())
        + std::mem::size_of::<Arc<Item>>() * items
}

/// One platform key's responses, and their items by id (those of read responses).
#[derive(Default)]
struct Space {
    responses: HashMap<Arc<str>, Entry>,
    /// Its responses, least recently used first (by [`Entry::seq`]).
    order: BTreeMap<u64, Arc<str>>,
    items: HashMap<Box<str>, Arc<Item>>,
    /// How many of `responses` are unread.
    unread: usize,
    /// What its responses and items cost (the share of [`Inner::bytes`] that is this key's).
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    spaces: HashMap<Arc<str>, Space>,
    /// Least recently used first: (key id, response id).
    lru: BTreeMap<u64, (Arc<str>, Arc<str>)>,
    next_seq: u64,
    bytes: usize,
}

impl Inner {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Drops the responses unused for `ttl`: a prefix of the LRU order.
    fn purge(&mut self, now: Timestamp, ttl: Duration) {
        while let Some((seq, (key, id))) = self.lru.first_key_value() {
            let expired = self
                .spaces
                .get(key)
                .and_then(|s| s.responses.get(id))
                .is_none_or(|e| e.used.plus(ttl) <= now);
            if !expired {
                break;
            }
            let (seq, key, id) = (*seq, key.clone(), id.clone());
            if !self.remove(&key, &id) {
                self.lru.remove(&seq);
            }
        }
    }

    /// Drops responses until the bytes fit: the least recently used ones, unless `growing`,
    /// the key that made the store grow, holds more than half of it while other keys keep
    /// responses too: then its own least recently used go first (never `keep`, the response
    /// it is using), so one key's traffic cannot push every other key's conversations out.
    fn evict_to(&mut self, limit: usize, growing: &str, keep: Option<&str>) {
        while self.bytes > limit {
            let own = self
                .spaces
                .get_key_value(growing)
                .filter(|(_, space)| space.bytes > limit / 2 && self.spaces.len() > 1)
                .and_then(|(key, space)| {
                    let oldest = space.order.values().find(|id| Some(&***id) != keep)?;
                    Some((key.clone(), oldest.clone()))
                });
            let (key, id) = match own {
                Some(pair) => pair,
                None => match self.lru.first_key_value() {
                    Some((_, (key, id))) => (key.clone(), id.clone()),
                    None => break,
                },
            };
            if !self.remove(&key, &id) {
                // Not kept any more: only its LRU slot was left.
                self.lru.pop_first();
            }
        }
    }

    /// Marks a response as used now; `None` when it is not kept.
    fn touch(&mut self, key: &str, id: &str, now: Timestamp) -> Option<&Entry> {
        let seq = self.seq();
        let space = self.spaces.get_mut(key)?;
        let entry = space.responses.get_mut(id)?;
        if let Some(pair) = self.lru.remove(&entry.seq) {
            self.lru.insert(seq, pair);
        }
        if let Some(id) = space.order.remove(&entry.seq) {
            space.order.insert(seq, id);
        }
        entry.seq = seq;
        entry.used = now;
        Some(entry)
    }

    /// Reads an unread response into its output items (findable by id from now on) and shell,
    /// and counts its bytes again.
    fn read(&mut self, key: &str, id: &str) {
        let Some(space) = self.spaces.get_mut(key) else {
            return;
        };
        let Some(entry) = space.responses.get_mut(id) else {
            return;
        };
        let Answer::Unread { json, account } = &entry.answer else {
            return;
        };
        let (output, shell): (Box<[Arc<Item>]>, Box<str>) = match stored_parts(json.as_bytes()) {
            Some(parts) => {
                let origin: Arc<str> = Arc::from(id);
                // No account can read what the fallback upstream encrypted: never sent back.
                let fallback = account.as_deref() == Some(FALLBACK);
                let output = parts
                    .output
                    .into_iter()
                    .map(|part| {
                        Arc::new(Item {
                            id: part.id.map(String::into_boxed_str),
                            json: part.json.into_boxed_str(),
                            replay: part.replay && !(fallback && part.encrypted_reasoning),
                            account: part.encrypted_reasoning.then(|| account.clone()).flatten(),
                            origin: Some(origin.clone()),
                            holders: AtomicUsize::new(1),
                        })
                    })
                    .collect();
                (output, parts.shell.into_boxed_str())
            }
            // Kept only when it is an object with an id: not reached, but nothing is lost.
            None => (Box::default(), json.clone()),
        };
        let old = entry.size;
        entry.size = entry_size(
            id,
            shell.len(),
            entry.session.as_ref(),
            entry.input.len() + output.len(),
        );
        let items = output.iter().map(|i| i.size()).sum::<usize>();
        self.bytes = (self.bytes + entry.size + items).saturating_sub(old);
        space.bytes = (space.bytes + entry.size + items).saturating_sub(old);
        for item in &output {
            if let Some(item_id) = &item.id {
                space.items.insert(item_id.clone(), item.clone());
            }
        }
        entry.answer = Answer::Read { output, shell };
        space.unread -= 1;
    }

    /// Reads every unread response of `key`, oldest first (a later response's item wins an id
    /// they share).
    fn read_all(&mut self, key: &str) {
        let Some(space) = self.spaces.get(key) else {
            return;
        };
        let unread: Vec<Arc<str>> = space
            .order
            .values()
            .filter(|id| {
                space
                    .responses
                    .get(*id)
                    .is_some_and(|e| matches!(e.answer, Answer::Unread { .. }))
            })
            .cloned()
            .collect();
        for id in unread {
            self.read(key, &id);
        }
    }

    /// A response marked as used now and read, `None` when it is not kept. Reading may have
    /// made the store larger than `limit`: the least recently used others go.
    fn open(&mut self, key: &str, id: &str, now: Timestamp, limit: usize) -> Option<&Entry> {
        self.touch(key, id, now)?;
        self.read(key, id);
        self.evict_to(limit, key, Some(id));
        self.spaces.get(key)?.responses.get(id)
    }

    fn lru_key(&self, key: &str) -> Arc<str> {
        self.spaces
            .get_key_value(key)
            .map_or_else(|| Arc::from(key), |(k, _)| k.clone())
    }

    /// Takes a response out, letting go of the items no other response holds.
    fn remove(&mut self, key: &str, id: &str) -> bool {
        let Some(space) = self.spaces.get_mut(key) else {
            return false;
        };
        let Some(entry) = space.responses.remove(id) else {
            return false;
        };
        self.lru.remove(&entry.seq);
        space.order.remove(&entry.seq);
        self.bytes = self.bytes.saturating_sub(entry.size);
        space.bytes = space.bytes.saturating_sub(entry.size);
        if matches!(entry.answer, Answer::Unread { .. }) {
            space.unread -= 1;
        }
        for item in entry.input.iter().chain(entry.answer.output()) {
            if item.holders.fetch_sub(1, Ordering::Relaxed) == 1 {
                self.bytes = self.bytes.saturating_sub(item.size());
                space.bytes = space.bytes.saturating_sub(item.size());
                if let Some(item_id) = &item.id
                    && space
                        .items
                        .get(item_id)
                        .is_some_and(|i| Arc::ptr_eq(i, item))
                {
                    space.items.remove(item_id);
                }
            }
        }
        if space.responses.is_empty() {
            self.spaces.remove(key);
        }
        true
    }
}

/// The kept responses of every key, bounded by bytes and age. Cheap to share (`Arc`).
pub(crate) struct ResponseStore {
    inner: Mutex<Inner>,
    limit: usize,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStore")
            .field("limit", &self.limit)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The pool's clock, for the store's ages.
struct PoolClock(Pool);

impl Clock for PoolClock {
    fn now(&self) -> Timestamp {
        self.0.now()
    }
}

impl ResponseStore {
    /// A store of at most `limit` bytes whose responses go `ttl` after their last use.
    pub(crate) fn new(limit: usize, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limit,
            ttl,
            clock,
        }
    }

    /// The store a pool's settings ask for (`RESPONSES_STORE_MB`; `None` when 0), on its clock.
    pub(crate) fn for_pool(pool: &Pool) -> Option<Arc<Self>> {
        let mb = pool.config().responses_store_mb;
        (mb > 0).then(|| {
            let limit = usize::try_from(mb)
                .unwrap_or(usize::MAX)
                .saturating_mul(1024 * 1024);
            Arc::new(Self::new(
                limit,
                RESPONSES_TTL,
                Arc::new(PoolClock(pool.clone())),
            ))
        })
    }

    /// Locked, with the expired responses gone.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent enough to go on with.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.purge(self.clock.now(), self.ttl);
        inner
    }

    /// What the request of `key` may refer to: its own responses and items.
    pub(crate) fn recall<'s>(&'s self, key: &'s str) -> Recaller<'s> {
        Recaller {
            store: self,
            key,
            session: None,
        }
    }

    /// Keeps a response of `key` (unread: `json` as it came, answered by `account`), then drops
    /// the least recently used ones past the limit. One larger than the whole store is not kept
    /// (rather than pushing every other one out first).
    fn insert(
        &self,
        key: &str,
        id: &str,
        input: Vec<Arc<Item>>,
        json: Box<str>,
        account: Option<Arc<str>>,
        session: Option<Arc<str>>,
    ) {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.remove(key, id);
        let size = entry_size(id, json.len(), session.as_ref(), input.len());
        let new_items = input
            .iter()
            .filter(|i| i.holders.load(Ordering::Relaxed) == 0)
            .map(|i| i.size());
        if size + new_items.sum::<usize>() > self.limit {
            return;
        }
        let key: Arc<str> = inner.lru_key(key);
        let id: Arc<str> = Arc::from(id);
        let seq = inner.seq();
        let mut added = size;
        let space = inner.spaces.entry(key.clone()).or_default();
        for item in &input {
            if item.holders.fetch_add(1, Ordering::Relaxed) == 0 {
                added += item.size();
            }
            // An earlier response's item this one holds too: findable as long as one does.
            if let Some(item_id) = &item.id {
                space
                    .items
                    .entry(item_id.clone())
                    .or_insert_with(|| item.clone());
            }
        }
        space.unread += 1;
        space.order.insert(seq, id.clone());
        space.responses.insert(
            id.clone(),
            Entry {
                seq,
                used: now,
                input: input.into(),
                answer: Answer::Unread { json, account },
                session,
                size,
            },
        );
        space.bytes += added;
        inner.lru.insert(seq, (key.clone(), id.clone()));
        inner.bytes += added;
        inner.evict_to(self.limit, &key, Some(&id));
    }

    /// A kept response of `key` as `GET /v1/responses/{id}` answers it (the object with its
    /// output items).
    pub(crate) fn get(&self, key: &str, id: &str) -> Option<Vec<u8>> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let entry = inner.open(key, id, now, self.limit)?;
        let Answer::Read { output, shell } = &entry.answer else {
            return None;
        };
        let shell = shell.trim_end();
        let shell = shell.strip_suffix('}').unwrap_or(shell);
        let size = output.iter().map(|i| i.json.len() + 32).sum::<usize>();
        let mut out = Vec::with_capacity(shell.len() + size + 16);
        out.extend_from_slice(shell.as_bytes());
        if shell.trim_end() != "{" {
            out.push(b',');
        }
        out.extend_from_slice(b"\"output\":[");
        for (i, item) in output.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write_for_client(&mut out);
        }
        out.extend_from_slice(b"]}");
        Some(out)
    }

    /// A page of the input items of a kept response of `key`, as `GET
    /// /v1/responses/{id}/input_items` answers it (OpenAI's list object); `None` when the
    /// response is not kept, `Err` with the parameter (`after`, `before`) naming no item of it.
    ///
    /// Items an earlier answer gave keep their ids. The backend takes no ids, so the others
    /// (the client's, sent with an id or without) are listed under one made from the response
    /// id and their place (`resp_…_in3`), the same on every call, as is a second item of an id
    /// already listed (an `item_reference` to an item the `previous_response_id` brought too):
    /// cursors must name one place.
    pub(crate) fn input_items(
        &self,
        key: &str,
        id: &str,
        page: &ItemsPage<'_>,
    ) -> Option<Result<Vec<u8>, &'static str>> {
        let (shown, more) = {
            let now = self.clock.now();
            let mut inner = self.lock();
            let entry = inner.open(key, id, now, self.limit)?;
            let mut seen = HashSet::new();
            let ids: Vec<Cow<'_, str>> = (entry.input.iter().enumerate())
                .map(|(i, item)| match item.id.as_deref() {
                    Some(own) if seen.insert(own) => Cow::Borrowed(own),
                    _ => Cow::Owned(format!("{id}_in{i}")),
                })
                .collect();
            let (shown, more) = match page.of(&ids) {
                Ok(shown) => shown,
                Err(param) => return Some(Err(param)),
            };
            let shown: Vec<(Arc<Item>, String)> = (shown.into_iter())
                .map(|i| (entry.input[i].clone(), ids[i].to_string()))
                .collect();
            (shown, more)
        };
        // Written without the store's lock.
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
        for (n, (item, id)) in shown.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            with_id_first(&mut out, &listed_item(&item.json), Some(id));
        }
        out.extend_from_slice(b"],\"first_id\":");
        write_json(&mut out, &shown.first().map(|(_, id)| id));
        out.extend_from_slice(b",\"last_id\":");
        write_json(&mut out, &shown.last().map(|(_, id)| id));
        out.extend_from_slice(b",\"has_more\":");
        out.extend_from_slice(if more { b"true}" } else { b"false}" });
        Some(Ok(out))
    }

    /// Forgets a response of `key`; `false` when it was not kept.
    pub(crate) fn delete(&self, key: &str, id: &str) -> bool {
        self.lock().remove(key, id)
    }

    /// The bytes the kept responses take, as counted against the limit.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        let inner = self.lock();
        let spaces: usize = inner.spaces.values().map(|s| s.bytes).sum();
        assert_eq!(spaces, inner.bytes, "each key's share adds up to the whole");
        for space in inner.spaces.values() {
            let order: Vec<(u64, &str)> = space.order.iter().map(|(q, id)| (*q, &**id)).collect();
            let mut by_seq: Vec<(u64, &str)> = space
                .responses
                .iter()
                .map(|(id, e)| (e.seq, &**id))
                .collect();
            by_seq.sort_unstable();
            assert_eq!(
                order, by_seq,
                "each key's order is its responses by last use"
            );
        }
        inner.bytes
    }

    /// Whether `key` still keeps response `id` (without reading or using it).
    #[cfg(test)]
    fn holds(&self, key: &str, id: &str) -> bool {
        self.lock()
            .spaces
            .get(key)
            .is_some_and(|s| s.responses.contains_key(id))
    }
}

/// A request's view of its key's kept responses (see [`ResponseStore::recall`]). Each lookup
/// holds the store's lock for itself only: what it returns is shared (`Arc`), and the body
/// built from it is built without the lock, so other keys' requests do not wait on a long one.
pub(crate) struct Recaller<'s> {
    store: &'s ResponseStore,
    key: &'s str,
    /// The conversation of the response recalled whole (`previous_response_id`).
    session: Option<Arc<str>>,
}

impl Recaller<'_> {
    /// The `session_id` the response the request continues was answered in: the request
    /// belongs to that conversation (and its account) even when its own opening differs — a
    /// client sends `instructions` on the first turn only, OpenAI does not carry them over.
    pub(crate) fn continued_session(&self) -> Option<Arc<str>> {
        self.session.clone()
    }
}

impl Recall for Recaller<'_> {
    fn response(&mut self, id: &str) -> Option<Vec<Arc<Item>>> {
        let now = self.store.clock.now();
        let (key, limit) = (self.key, self.store.limit);
        let mut inner = self.store.lock();
        let entry = inner.open(key, id, now, limit)?;
        let items = entry
            .input
            .iter()
            .chain(entry.answer.output())
            .cloned()
            .collect();
        self.session = entry.session.clone();
        Some(items)
    }

    fn item(&mut self, id: &str) -> Option<Arc<Item>> {
        let now = self.store.clock.now();
        let (key, limit) = (self.key, self.store.limit);
        let mut inner = self.store.lock();
        let space = inner.spaces.get(key)?;
        let read = !space.items.contains_key(id) && space.unread > 0;
        if read {
            inner.read_all(key);
        }
        let item = inner.spaces.get(key).and_then(|s| s.items.get(id)).cloned();
        // Referring to an item is using the response it came from; room made for what reading
        // cost is not made by evicting that one.
        let origin = item.as_ref().and_then(|i| i.origin.clone());
        if let Some(origin) = &origin {
            inner.touch(key, origin, now);
        }
        if read {
            inner.evict_to(limit, key, origin.as_deref());
        }
        item
    }
}

/// Whom a response the fallback upstream answered is kept as answered by: not an account id
/// (those are hex). Its encrypted reasoning is replayed to no account (none can read it).
const FALLBACK: &str = "fallback";

/// A request whose answer is to be kept: its input, until the output is known.
pub(crate) struct Pending {
    store: Arc<ResponseStore>,
    key: Arc<str>,
    input: Vec<Arc<Item>>,
    account: Option<Arc<str>>,
    session: Option<Arc<str>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("input", &self.input.len())
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The request of `key` with this input (as [`crate::adapt::responses`] built it).
    pub(crate) fn new(store: Arc<ResponseStore>, key: &str, input: Vec<Arc<Item>>) -> Box<Self> {
        Box::new(Self {
            store,
            key: Arc::from(key),
            input,
            account: None,
            session: None,
        })
    }

    /// The conversation (`session_id`) the request is sent in; the next turns inherit it.
    pub(crate) fn in_session(&mut self, session: &str) {
        self.session = Some(Arc::from(session));
    }

    /// The account that answers (the last one named: an assembled answer that failed part-way
    /// is asked of another account). Reasoning another account encrypted did not go to it (the
    /// attempt loop left it out, or the backend refused it and it was left out on the resend),
    /// so it is not kept in this response's input either.
    pub(crate) fn served_by(&mut self, account: &str) {
        self.account = Some(Arc::from(account));
    }

    /// The fallback upstream answers (`UPSTREAM_FALLBACK_BASE_URL`): no account's encrypted
    /// reasoning went to it, and the reasoning it encrypts is readable by no account (the
    /// answer is kept as answered by [`FALLBACK`], which no account is).
    pub(crate) fn served_by_fallback(&mut self) {
        self.served_by(FALLBACK);
    }

    /// Keeps the answer, given the final `response` object (JSON) and its `id` (see
    /// [`response_id`](crate::adapt::responses::response_id)).
    pub(crate) fn finish(self, id: &str, response: &[u8]) {
        let Ok(json) = std::str::from_utf8(response) else {
            return;
        };
        let Self {
            store,
            key,
            mut input,
            account,
            session,
        } = self;
        input.retain(|i| i.account.is_none() || i.account == account);
        store.insert(&key, id, input, json.into(), account, session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::responses::response_id;
    use codexpool_core::ManualClock;
    use serde_json::{Value, json};

    #[test]
    fn an_items_page_is_cut_as_openai_cuts_a_list() {
        let ids = ["a", "b", "c", "d", "e"];
        let page = |limit, newest_first, after, before| ItemsPage {
            limit,
            newest_first,
            after,
            before,
        };
        assert_eq!(page(2, true, None, None).of(&ids), Ok((vec![4, 3], true)));
        assert_eq!(
            page(9, true, None, None).of(&ids),
            Ok((vec![4, 3, 2, 1, 0], false))
        );
        assert_eq!(
            page(2, false, Some("b"), None).of(&ids),
            Ok((vec![2, 3], true))
        );
        assert_eq!(
            page(2, true, Some("b"), None).of(&ids),
            Ok((vec![0], false))
        );
        // Only `before`: the items next to it.
        assert_eq!(
            page(2, false, None, Some("d")).of(&ids),
            Ok((vec![1, 2], true))
        );
        assert_eq!(
            page(9, false, Some("a"), Some("d")).of(&ids),
            Ok((vec![1, 2], false))
        );
        // Cursors the wrong way round leave nothing between them.
        assert_eq!(
            page(9, false, Some("d"), Some("b")).of(&ids),
            Ok((vec![], false))
        );
        assert_eq!(
            page(9, false, Some("e"), None).of(&ids),
            Ok((vec![], false))
        );
        assert_eq!(page(9, false, Some("z"), None).of(&ids), Err("after"));
        assert_eq!(page(9, false, None, Some("z")).of(&ids), Err("before"));
        assert_eq!(
            page(9, true, None, None).of::<&str>(&[]),
            Ok((vec![], false))
        );
    }

    fn store(limit: usize) -> (Arc<ResponseStore>, ManualClock) {
        let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
        let store = ResponseStore::new(limit, RESPONSES_TTL, Arc::new(clock.clone()));
        (Arc::new(store), clock)
    }

    /// A final response with one reasoning item and one message of `text`.
    fn response(id: &str, text: &str) -> Vec<u8> {
        json!({"id": id, "object": "response", "status": "completed", "output": [
            {"id": format!("rs_{id}"), "type": "reasoning", "summary": [], "encrypted_content": "gAAA"},
            {"id": format!("msg_{id}"), "type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": text}]},
        ], "usage": {"total_tokens": 3}})
        .to_string()
        .into_bytes()
    }

    fn keep(store: &Arc<ResponseStore>, key: &str, input: Vec<Arc<Item>>, id: &str, text: &str) {
        let mut p = Pending::new(store.clone(), key, input);
        p.served_by("acct-0");
        p.finish(id, &response(id, text));
    }

    fn values(items: &[Arc<Item>]) -> Vec<Value> {
        items
            .iter()
            .map(|i| serde_json::from_str(i.json()).unwrap())
            .collect()
    }

    #[test]
    fn keeps_input_and_output_and_finds_items_by_id() {
        let (s, _) = store(1 << 20);
        keep(
            &s,
            "k1",
            vec![Item::input(r#"{"role":"user","content":"hi"}"#)],
            "resp_1",
            "hello",
        );
        let mut r = s.recall("k1");
        let all = r.response("resp_1").unwrap();
        assert_eq!(
            values(&all),
            [
                json!({"role": "user", "content": "hi"}),
                json!({"type": "reasoning", "summary": [], "encrypted_content": "gAAA"}),
                json!({"type": "message", "role": "assistant",
                       "content": [{"type": "output_text", "text": "hello"}]}),
            ],
            "ids are kept apart"
        );
        let msg = r.item("msg_resp_1").unwrap();
        assert!(Arc::ptr_eq(&msg, &all[2]));
        assert_eq!(all[1].account.as_deref(), Some("acct-0"));
        assert!(r.item("resp_1").is_none() && r.response("msg_resp_1").is_none());
        drop(r);
        // GET puts the ids back.
        let v: Value = serde_json::from_slice(&s.get("k1", "resp_1").unwrap()).unwrap();
        assert_eq!(v["id"], "resp_1");
        assert_eq!(v["usage"]["total_tokens"], 3);
        assert_eq!(v["output"][0]["id"], "rs_resp_1");
        assert_eq!(v["output"][1]["id"], "msg_resp_1");
        assert_eq!(v["output"][1]["content"][0]["text"], "hello");
    }

    #[test]
    fn a_key_sees_only_its_own_responses() {
        let (s, _) = store(1 << 20);
        keep(&s, "k1", vec![], "resp_1", "a");
        let mut other = s.recall("k2");
        assert!(other.response("resp_1").is_none());
        assert!(other.item("msg_resp_1").is_none());
        drop(other);
        assert!(s.get("k2", "resp_1").is_none());
        assert!(!s.delete("k2", "resp_1"));
        assert!(s.get("k1", "resp_1").is_some());
    }

    #[test]
    fn kept_unread_and_read_when_referred_to() {
        let (s, _) = store(1 << 20);
        let input = Item::input("{\"n\":1}");
        keep(&s, "k", vec![input.clone()], "resp_1", "one");
        keep(&s, "k", vec![], "resp_2", "two");
        // Unread, a response costs its JSON as it came.
        let json = response("resp_1", "one").len() + response("resp_2", "two").len();
        let unread = 2 * (ENTRY_OVERHEAD + "resp_1".len()) + json + 8 + input.size();
        assert_eq!(s.bytes(), unread);
        // An item of an unread response is found by its id: every response of the key is read.
        let mut r = s.recall("k");
        let msg = r.item("msg_resp_2").unwrap();
        assert_eq!(values(&[msg])[0]["content"][0]["text"], "two");
        assert!(r.item("rs_resp_1").is_some() && r.item("msg_resp_3").is_none());
        drop(r);
        let read = s.bytes();
        assert_eq!(
            read,
            2 * (ENTRY_OVERHEAD + "resp_1".len() + shell_len("resp_1") + 2 * 8)
                + 8
                + input.size()
                + [("resp_1", "one"), ("resp_2", "two")]
                    .iter()
                    .map(|(id, text)| output_size(id, text))
                    .sum::<usize>()
        );
        // Read once: referring to it again changes nothing.
        assert!(s.recall("k").response("resp_1").is_some());
        assert!(s.get("k", "resp_2").is_some());
        assert_eq!(s.bytes(), read);
        // A response that is not an object with an id is not kept.
        for bad in [&b"[\"resp_3\"]"[..], br#"{"id":3}"#, b"{", b"\xff"] {
            if let Some(id) = response_id(bad) {
                Pending::new(s.clone(), "k", vec![]).finish(&id, bad);
            }
        }
        assert_eq!(s.bytes(), read);
    }

    #[test]
    fn reading_a_response_keeps_the_store_within_its_limit() {
        let (probe, _) = store(usize::MAX);
        keep(&probe, "k", vec![], "resp_x", &"x".repeat(1000));
        let unread = probe.bytes();
        assert!(probe.get("k", "resp_x").is_some());
        let read = probe.bytes();
        assert!(
            read > unread,
            "read, a response costs its items' overhead too"
        );
        // Two unread responses fit; once one is read, the other (least recently used) goes.
        let limit = 2 * unread + (read - unread) / 2;
        let (s, _) = store(limit);
        keep(&s, "k", vec![], "resp_a", &"a".repeat(1000));
        keep(&s, "k", vec![], "resp_b", &"b".repeat(1000));
        assert_eq!(s.bytes(), 2 * unread);
        let items = s.recall("k").response("resp_b").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(s.bytes(), read);
        assert!(s.get("k", "resp_a").is_none());
        // An item lookup that reads every response of the key makes room the same way.
        let (s, _) = store(limit);
        keep(&s, "k", vec![], "resp_a", &"a".repeat(1000));
        keep(&s, "k", vec![], "resp_b", &"b".repeat(1000));
        assert!(s.recall("k").item("msg_resp_b").is_some());
        assert_eq!(s.bytes(), read);
        assert!(
            s.recall("k").item("msg_resp_a").is_none(),
            "read, then evicted"
        );
        // The response the item comes from is not what makes room, though it is the oldest.
        let (s, _) = store(limit);
        keep(&s, "k", vec![], "resp_a", &"a".repeat(1000));
        keep(&s, "k", vec![], "resp_b", &"b".repeat(1000));
        assert!(s.recall("k").item("msg_resp_a").is_some());
        assert!(s.get("k", "resp_b").is_none(), "the other one went");
    }

    /// What the output items of [`response`] cost, read.
    fn output_size(id: &str, text: &str) -> usize {
        stored_parts(&response(id, text))
            .unwrap()
            .output
            .iter()
            .map(|p| Item::kept(p.id.as_deref().unwrap(), &p.json, p.replay).size())
            .sum()
    }

    #[test]
    fn shared_items_are_counted_once_and_freed_with_their_last_holder() {
        let (s, _) = store(1 << 20);
        let empty = s.bytes();
        keep(&s, "k", vec![Item::input("{\"n\":1}")], "resp_1", "one");
        // Turn 2 holds turn 1's items, and adds one input item and its output.
        let mut history = s.recall("k").response("resp_1").unwrap();
        let one = s.bytes();
        history.push(Item::input("{\"n\":2}"));
        keep(&s, "k", history, "resp_2", "two");
        assert!(s.get("k", "resp_2").is_some());
        let two = s.bytes();
        let pointers = 3 * std::mem::size_of::<Arc<Item>>();
        assert_eq!(
            two - one,
            one - empty + pointers,
            "turn 1 is not counted twice"
        );
        // Turn 1 goes: its items stay with turn 2, findable.
        assert!(s.delete("k", "resp_1"));
        assert!(s.recall("k").item("msg_resp_1").is_some());
        assert_eq!(
            s.bytes(),
            two - (ENTRY_OVERHEAD + "resp_1".len() + shell_len("resp_1") + 3 * 8)
        );
        assert!(s.delete("k", "resp_2"));
        assert_eq!(s.bytes(), empty);
        assert!(s.recall("k").item("msg_resp_1").is_none());
    }

    fn shell_len(id: &str) -> usize {
        stored_parts(&response(id, "")).unwrap().shell.len()
    }

    #[test]
    fn least_recently_used_goes_first_past_the_limit() {
        let (probe, _) = store(usize::MAX);
        keep(&probe, "k", vec![], "resp_x", &"x".repeat(1000));
        let one = probe.bytes();
        // Room for two responses of that size, not three.
        let (s, _) = store(2 * one + one / 2);
        keep(&s, "k", vec![], "resp_a", &"a".repeat(1000));
        keep(&s, "k", vec![], "resp_b", &"b".repeat(1000));
        // Using a makes b the least recently used one.
        assert!(s.recall("k").response("resp_a").is_some());
        keep(&s, "k", vec![], "resp_c", &"c".repeat(1000));
        let mut r = s.recall("k");
        assert!(r.response("resp_b").is_none(), "evicted");
        assert!(r.item("msg_resp_b").is_none(), "with its items");
        assert!(r.response("resp_a").is_some() && r.response("resp_c").is_some());
        drop(r);
        assert!(s.bytes() <= 2 * one + one / 2);
        // Referring to an item uses its response too.
        assert!(s.recall("k").item("rs_resp_a").is_some());
        keep(&s, "k", vec![], "resp_d", &"d".repeat(1000));
        assert!(s.get("k", "resp_c").is_none());
        assert!(s.get("k", "resp_a").is_some());
        // One response larger than the whole store is not kept, and pushes none out.
        let before = s.bytes();
        keep(&s, "k", vec![], "resp_big", &"e".repeat(10 * one));
        assert!(s.get("k", "resp_big").is_none());
        assert_eq!(s.bytes(), before);
        assert!(s.get("k", "resp_a").is_some() && s.get("k", "resp_d").is_some());
    }

    /// A key that holds more than half the store pays for its own growth: another key's
    /// conversation, however old, is not pushed out by it.
    #[test]
    fn one_key_past_half_the_store_evicts_its_own_first() {
        let (probe, _) = store(usize::MAX);
        keep(&probe, "k", vec![], "resp_x", &"x".repeat(1000));
        let one = probe.bytes();
        let (s, _) = store(4 * one + one / 2);
        keep(&s, "quiet", vec![], "resp_q", &"q".repeat(1000));
        for n in 0..20 {
            keep(
                &s,
                "noisy",
                vec![],
                &format!("resp_n{n:02}"),
                &"n".repeat(1000),
            );
        }
        assert!(s.holds("quiet", "resp_q"), "the other key's stays");
        assert!((17..20).all(|n| s.holds("noisy", &format!("resp_n{n:02}"))));
        assert!(!s.holds("noisy", "resp_n16"), "its own oldest went");
        assert!(s.bytes() <= 4 * one + one / 2);
        // Under half, the least recently used go whoever they belong to.
        let (s, _) = store(4 * one + one / 2);
        keep(&s, "a", vec![], "resp_a1", &"a".repeat(1000));
        keep(&s, "a", vec![], "resp_a2", &"a".repeat(1000));
        keep(&s, "a", vec![], "resp_a3", &"a".repeat(1000));
        keep(&s, "b", vec![], "resp_b1", &"b".repeat(1000));
        keep(&s, "b", vec![], "resp_b2", &"b".repeat(1000));
        assert!(!s.holds("a", "resp_a1") && s.holds("a", "resp_a2") && s.holds("b", "resp_b1"));
        // Alone in the store, a key has all of it.
        let (s, _) = store(4 * one + one / 2);
        for n in 0..4 {
            keep(&s, "k", vec![], &format!("resp_{n}"), &"k".repeat(1000));
        }
        assert!((0..4).all(|n| s.holds("k", &format!("resp_{n}"))));
    }

    #[test]
    fn responses_go_a_ttl_after_their_last_use() {
        let (s, clock) = store(1 << 20);
        keep(&s, "k", vec![], "resp_1", "a");
        keep(&s, "k", vec![], "resp_2", "b");
        clock.advance(RESPONSES_TTL - Duration::from_secs(60));
        assert!(s.get("k", "resp_2").is_some(), "used: its age starts again");
        clock.advance(Duration::from_secs(120));
        assert!(s.get("k", "resp_1").is_none());
        assert!(s.recall("k").item("msg_resp_1").is_none());
        assert!(s.get("k", "resp_2").is_some());
        clock.advance(RESPONSES_TTL);
        assert!(s.get("k", "resp_2").is_none());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn reasoning_of_another_account_is_not_kept_as_input() {
        let (s, _) = store(1 << 20);
        keep(&s, "k", vec![], "resp_1", "a");
        let history = s.recall("k").response("resp_1").unwrap();
        let mut p = Pending::new(s.clone(), "k", history);
        p.served_by("acct-1");
        p.finish("resp_2", &response("resp_2", "b"));
        let all = s.recall("k").response("resp_2").unwrap();
        let kinds: Vec<Value> = values(&all).iter().map(|v| v["type"].clone()).collect();
        assert_eq!(
            kinds,
            ["message", "reasoning", "message"],
            "acct-0's reasoning left out"
        );
        assert_eq!(all[1].account.as_deref(), Some("acct-1"));

        // Asked of acct-0 first, answered by acct-1: the input kept is what acct-1 got, its
        // own reasoning included.
        let mut history = s.recall("k").response("resp_1").unwrap();
        history.extend(all);
        let mut p = Pending::new(s.clone(), "k", history);
        p.served_by("acct-0");
        p.served_by("acct-1");
        p.finish("resp_3", &response("resp_3", "c"));
        let kept = s.recall("k").response("resp_3").unwrap();
        let reasoning: Vec<Option<&str>> = (kept.iter())
            .filter(|i| i.json().contains("reasoning"))
            .map(|i| i.account.as_deref())
            .collect();
        assert_eq!(
            reasoning,
            [Some("acct-1"), Some("acct-1")],
            "{:?}",
            values(&kept)
        );
    }

    /// A request building its body from what it recalled holds up no other request.
    #[test]
    fn a_recall_does_not_hold_the_store() {
        let (s, _) = store(1 << 20);
        let mut recall = s.recall("k");
        assert!(recall.response("resp_x").is_none());
        assert!(recall.item("msg_x").is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        let other = s.clone();
        std::thread::spawn(move || tx.send(other.get("other", "resp_y")).unwrap());
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(got, Ok(None), "another key's lookup waited for this recall");
        drop(recall);
    }

    #[test]
    fn items_are_shown_with_their_id_first() {
        let item = Item {
            id: Some("msg_\"1".into()),
            json: "{ }".into(),
            replay: true,
            account: None,
            origin: None,
            holders: AtomicUsize::new(0),
        };
        let mut out = Vec::new();
        item.write_for_client(&mut out);
        assert_eq!(out, br#"{"id":"msg_\"1"}"#);
        let item = Item {
            json: r#"{"type":"x"}"#.into(),
            ..item
        };
        let mut out = Vec::new();
        item.write_for_client(&mut out);
        assert_eq!(out, br#"{"id":"msg_\"1","type":"x"}"#);
    }
}
