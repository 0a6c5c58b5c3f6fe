//! `codexpool tokens`: the token ledger summed per key, account, model or day (UTC), largest
//! total first (days oldest first), with a total row when there are several; `--since` counts
//! only later requests. The ledger holds the requests whose token usage the upstream reported
//! (the request log also has the refused and the broken ones).
//!
//! JSON: an array of `{"group", "name", "requests", "input_tokens", "cached_tokens",
//! "output_tokens", "reasoning_tokens", "total_tokens"}`, where `group` is the key or account id,
//! the model or the day (`-` for requests without one) and `name` the key's name or the
//! account's label (`null` for the other groupings and for keys or accounts since deleted).

use std::collections::HashMap;

use codexpool_core::usage::{LedgerGroup, LedgerQuery, LedgerRow};
use codexpool_core::{AccountFilter, Pool, Timestamp};
use comfy_table::{Cell, CellAlignment};
use serde::Serialize;

use super::Ctx;
use crate::args::TokensArgs;
use crate::output::{NONE, Output, Paint, cell, datetime, deleted};

/// One row of `--json`: the ledger row (`group` and the sums) and a name.
#[derive(Serialize)]
struct RowView<'a> {
    #[serde(flatten)]
    row: &'a LedgerRow,
    name: Option<&'a str>,
}

/// `tokens`.
pub async fn tokens(ctx: &Ctx, pool: &Pool, a: TokensArgs) -> anyhow::Result<()> {
    let out = &ctx.out;
    let group: LedgerGroup = a.by.parse()?;
    let (rows, names) = summed(pool, group, a.since).await?;
    if out.json {
        let views: Vec<RowView<'_>> = rows
            .iter()
            .map(|row| RowView {
                row,
                name: names.get(&row.group).map(String::as_str),
            })
            .collect();
        out.json(&views)?;
        return Ok(());
    }
    if rows.is_empty() {
        out.note(match a.since {
            Some(t) => format!(
                "No requests counted since {}; `codexpool tokens` counts them all.",
                datetime(t)
            ),
            None => "No requests counted yet. Point a client at `codexpool serve`, or try \
                     `codexpool demo`."
                .to_owned(),
        });
        return Ok(());
    }
    print_table(out, group, &rows, &names)?;
    if let Some(since) = a.since {
        out.note(format!("Requests since {}.", datetime(since)));
    }
    Ok(())
}

/// The table of `codexpool tokens` for all requests, per key (the demo shows it).
pub async fn print_per_key(out: &Output, pool: &Pool) -> anyhow::Result<()> {
    let (rows, names) = summed(pool, LedgerGroup::Key, None).await?;
    print_table(out, LedgerGroup::Key, &rows, &names)?;
    Ok(())
}

/// The ledger's sums (days oldest first, else largest total first) and, for keys and
/// accounts, their names by id.
async fn summed(
    pool: &Pool,
    group: LedgerGroup,
    since: Option<Timestamp>,
) -> anyhow::Result<(Vec<LedgerRow>, HashMap<String, String>)> {
    let mut query = LedgerQuery::by(group);
    query.since = since;
    let mut rows = pool.usage().ledger(&query).await?;
    if group == LedgerGroup::Day {
        rows.sort_by(|x, y| x.group.cmp(&y.group));
    }
    let names = match group {
        LedgerGroup::Key => pool
            .keys()
            .list()
            .into_iter()
            .map(|k| (k.id, k.name))
            .collect(),
        LedgerGroup::Account => pool
            .accounts()
            .list(&AccountFilter::default())
            .into_iter()
            .map(|a| (a.id, a.label))
            .collect(),
        _ => HashMap::new(),
    };
    Ok((rows, names))
}

fn print_table(
    out: &Output,
    group: LedgerGroup,
    rows: &[LedgerRow],
    names: &HashMap<String, String>,
) -> std::io::Result<()> {
    let first = match group {
        LedgerGroup::Key => "KEY",
        LedgerGroup::Account => "ACCOUNT",
        LedgerGroup::Model => "MODEL",
        LedgerGroup::Day => "DAY (UTC)",
    };
    let mut t = out.table(&[
        first,
        "REQUESTS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "TOTAL",
    ]);
    for i in 1..7 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut total = [0u64; 6];
    for r in rows {
        let label = match (names.get(&r.group), r.group.as_str()) {
            (Some(n), id) => format!("{n} ({id})"),
            (None, "-") => NONE.to_owned(),
            (None, id) if matches!(group, LedgerGroup::Key | LedgerGroup::Account) => deleted(id),
            (None, g) => g.to_owned(),
        };
        let n = counts(r);
        for (sum, x) in total.iter_mut().zip(n) {
            *sum = sum.saturating_add(x);
        }
        t.add_row(cells(cell(label, Some(Paint::Bold)), n));
    }
    if rows.len() > 1 {
        t.add_row(cells(cell("total", Some(Paint::Dim)), total));
    }
    out.print_table(&t)
}

/// A row's numbers, in the order of the columns.
fn counts(r: &LedgerRow) -> [u64; 6] {
    let n = &r.tokens;
    [
        r.requests,
        n.input_tokens,
        n.cached_tokens,
        n.output_tokens,
        n.reasoning_tokens,
        r.total_tokens,
    ]
}

/// A row: its first cell, then its numbers.
fn cells(first: Cell, counts: [u64; 6]) -> Vec<Cell> {
    std::iter::once(first)
        .chain(counts.map(|x| cell(grouped(x), None)))
        .collect()
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::grouped;

    #[test]
    fn thousands_are_grouped() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(grouped(n), s);
        }
    }
}
