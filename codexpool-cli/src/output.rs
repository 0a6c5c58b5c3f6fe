//! What the user sees: human output on stdout (tables, usage bars), JSON with `--json`, notes,
//! warnings and progress on stderr. Colours only on a terminal, and never with `NO_COLOR`.
//!
//! `-q` keeps what a command exists to output and drops the rest. Data — tables, `--json`
//! documents, [`Output::data`] lines (a usage listing, a followed log, a new key's secret, the
//! URL or code a sign-in needs) — always prints; [`Output::line`] (confirmations such as
//! "Disabled account …", progress, the demo's narration), notes and warnings do not.
//!
//! Every write returns `io::Result`, so a closed stdout (`codexpool logs | head`) surfaces as a
//! `BrokenPipe` error that `main` treats as success, instead of a panic from `println!`.

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use comfy_table::{
    Attribute, Cell, Color, ColumnConstraint, ContentArrangement, Table, Width, presets,
};
use serde::Serialize;

use codexpool_core::Timestamp;

/// Where and how output goes.
#[derive(Debug, Clone)]
pub struct Output {
    /// `--json`: machine-readable stdout, nothing decorative.
    pub json: bool,
    /// `-q`: data only; no confirmations on stdout, no notes or warnings on stderr.
    pub quiet: bool,
    color: bool,
    err_color: bool,
    stderr_tty: bool,
}

/// A colour for text painted by hand (outside tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Good.
    Green,
    /// Needs attention.
    Yellow,
    /// Bad.
    Red,
    /// Less important.
    Dim,
    /// Emphasis.
    Bold,
    /// Links, commands.
    Cyan,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Self::Green => "32",
            Self::Yellow => "33",
            Self::Red => "31",
            Self::Dim => "2",
            Self::Bold => "1",
            Self::Cyan => "36",
        }
    }

    fn table_color(self) -> Option<Color> {
        match self {
            Self::Green => Some(Color::Green),
            Self::Yellow => Some(Color::Yellow),
            Self::Red => Some(Color::Red),
            Self::Cyan => Some(Color::Cyan),
            Self::Dim => Some(Color::DarkGrey),
            Self::Bold => None,
        }
    }
}

/// `NO_COLOR` set to anything but the empty string turns colours off (no-color.org).
fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl Output {
    /// Detects terminals and `NO_COLOR`.
    pub fn new(json: bool, quiet: bool) -> Self {
        let no_color = no_color_env();
        let stderr_tty = io::stderr().is_terminal();
        Self {
            json,
            quiet,
            color: !json && !no_color && io::stdout().is_terminal(),
            err_color: !no_color && stderr_tty,
            stderr_tty,
        }
    }

    /// Whether stderr is a terminal (progress bars need one).
    pub fn stderr_is_tty(&self) -> bool {
        self.stderr_tty
    }

    /// Whether stderr gets colours (logs, errors).
    pub fn stderr_color(&self) -> bool {
        self.err_color
    }

    /// Text painted for stdout (plain when colours are off).
    pub fn paint(&self, text: impl Display, p: Paint) -> String {
        paint(self.color, text, p)
    }

    /// Text painted for stderr.
    pub fn paint_err(&self, text: impl Display, p: Paint) -> String {
        paint(self.err_color, text, p)
    }

    /// A line of what the command exists to output, on stdout (printed even with `-q`).
    pub fn data(&self, text: impl Display) -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{text}")
    }

    /// A confirmation, progress or narration line on stdout (hidden by `-q`).
    pub fn line(&self, text: impl Display) -> io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        self.data(text)
    }

    /// Narration on stdout as is, flushed (for answers streamed word by word; hidden by `-q`).
    pub fn raw(&self, text: &str) -> io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// A value as pretty JSON on stdout (data: printed even with `-q`).
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> io::Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
        self.data(text)
    }

    /// A value as one line of JSON on stdout (JSON Lines, for streams of records; data).
    pub fn json_line<T: Serialize + ?Sized>(&self, value: &T) -> io::Result<()> {
        let text = serde_json::to_string(value).map_err(io::Error::other)?;
        self.data(text)
    }

    /// A note for the person on stderr (hidden by `-q` and `--json`).
    pub fn note(&self, text: impl Display) {
        if !self.quiet && !self.json {
            let _ = writeln!(io::stderr().lock(), "{text}");
        }
    }

    /// A warning on stderr (hidden by `-q`).
    pub fn warn(&self, text: impl Display) {
        if !self.quiet {
            let label = self.paint_err("warning:", Paint::Yellow);
            let _ = writeln!(io::stderr().lock(), "{label} {text}");
        }
    }

    /// A table with these column headers, styled for this output.
    pub fn table(&self, headers: &[&str]) -> Table {
        new_table(headers, self.color, None)
    }

    /// Prints a table on stdout (without trailing spaces; data: printed even with `-q`).
    pub fn print_table(&self, table: &Table) -> io::Result<()> {
        let mut table = table.clone();
        if !matches!(table.content_arrangement(), ContentArrangement::Disabled) {
            fit_words(&mut table);
        }
        let mut out = io::stdout().lock();
        for line in table.lines() {
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// The columns of free text, which may wrap between words to fit the terminal.
const WRAPPABLE: &[&str] = &[
    "NAME",
    "MODELS",
    "GROUPS",
    "GROUP",
    "TAGS",
    "DETAIL",
    "ERROR",
    "VALUE",
    "SOURCE",
    "LAST USED",
    "EXPIRES",
];

/// A table with these column headers, `color`ed or not, as wide as `width` or the terminal.
fn new_table(headers: &[&str], color: bool, width: Option<u16>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(
        headers
            .iter()
            .map(|h| Cell::new(h).add_attribute(Attribute::Bold)),
    );
    if color {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    if let Some(w) = width {
        t.set_width(w);
    }
    // Wrap cells to fit a terminal whose width is known; never squeeze into a terminal that
    // reports no width (a pseudo-terminal without a size reports 0).
    let fit = t.width().is_some_and(|w| w >= 40);
    if fit {
        t.set_content_arrangement(ContentArrangement::Dynamic);
    }
    // Columns sit two spaces apart, flush left, like `gh` and `cargo` listings.
    for (col, header) in t.column_iter_mut().zip(headers) {
        col.set_padding((0, 2));
        // Only free text wraps: an id, a key's hint, a setting's name or a number broken
        // across lines is copied wrong.
        if fit && !WRAPPABLE.contains(header) {
            col.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
    t
}

/// Fits a table to the terminal without breaking a word: a column of free text is at least as
/// wide as its longest word (the others are as wide as their content). When even that is too
/// wide, nothing wraps and the terminal breaks the long lines: a value split across lines is
/// copied wrong, one that runs on is not.
fn fit_words(table: &mut Table) {
    use unicode_width::UnicodeWidthStr;
    let Some(room) = table.width() else {
        return;
    };
    let mut needed = 0usize;
    for i in 0..table.column_count() {
        let header = table.header().and_then(|h| h.cell_iter().nth(i));
        let cells = || {
            header
                .into_iter()
                .chain(table.column_cells_iter(i).flatten())
        };
        let free = table.column(i).is_some_and(|c| c.constraint().is_none());
        let widest = |split: fn(&str) -> Vec<&str>| {
            cells()
                .flat_map(|c| split(&c.content()).iter().map(|w| w.width()).max())
                .max()
                .unwrap_or(0)
        };
        let width = if free {
            widest(|text| text.split_whitespace().collect())
        } else {
            widest(|text| text.lines().collect())
        };
        // Two spaces of padding after each column, which the bound counts too.
        needed += width + 2;
        if free && let Some(col) = table.column_mut(i) {
            let width = u16::try_from(width + 2).unwrap_or(u16::MAX);
            col.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(width)));
        }
    }
    if needed > usize::from(room) {
        table.set_content_arrangement(ContentArrangement::Disabled);
    }
}

fn paint(on: bool, text: impl Display, p: Paint) -> String {
    if on {
        format!("\x1b[{}m{text}\x1b[0m", p.code())
    } else {
        text.to_string()
    }
}

/// Text with its control characters written out (`\u{1b}`, `\n`): what others sent (a model
/// name in the request log, an upstream error) can neither steer the terminal nor break a row.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A table cell in a colour (applied only when the table is styled), control characters
/// written out.
pub fn cell(text: impl Display, p: Option<Paint>) -> Cell {
    let c = Cell::new(visible(&text.to_string()));
    match p {
        Some(Paint::Bold) => c.add_attribute(Attribute::Bold),
        Some(p) => match p.table_color() {
            Some(color) => c.fg(color),
            None => c,
        },
        None => c,
    }
}

/// The colour of a used share: green below 70 %, yellow below 90 %, red above.
pub fn level(used_percent: f64) -> Paint {
    if used_percent >= 90.0 {
        Paint::Red
    } else if used_percent >= 70.0 {
        Paint::Yellow
    } else {
        Paint::Green
    }
}

/// `█████░░░░░` for 48 %: ten cells, rounded to the nearest.
pub fn bar(used_percent: f64) -> String {
    let p = if used_percent.is_finite() {
        used_percent.clamp(0.0, 100.0)
    } else {
        0.0
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let full = ((p / 10.0).round() as usize).min(10);
    format!("{}{}", "█".repeat(full), "░".repeat(10 - full))
}

/// A whole percentage: `48%`.
pub fn percent(used_percent: f64) -> String {
    format!("{:.0}%", used_percent.clamp(0.0, 100.0))
}

/// A duration for people, two units at most: `<1s`, `45s`, `1m 59s`, `12m`, `2h 13m`, `3d 4h`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 if d.is_zero() => "0s".into(),
        0 => "<1s".into(),
        1..60 => format!("{s}s"),
        // "1m" for 1 min 59 s was off by half.
        60..3600 if !s.is_multiple_of(60) => format!("{}m {}s", s / 60, s % 60),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How long ago, for people: `just now`, `5m ago`, `2h ago`, `3d ago`.
pub fn ago(now: Timestamp, then: Timestamp) -> String {
    let s = now.since(then).as_secs();
    match s {
        0..60 => "just now".into(),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A milliseconds figure: `340 ms`, `1.2 s`.
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        #[allow(clippy::cast_precision_loss)]
        let s = ms as f64 / 1000.0;
        format!("{s:.1} s")
    }
}

/// A time as `2026-11-26 12:30:01` (UTC).
pub fn datetime(t: Timestamp) -> String {
    let text = t.to_rfc3339();
    let text = text.trim_end_matches('Z');
    let text = text.split('.').next().unwrap_or(text);
    text.replacen('T', " ", 1)
}

/// `—` for absent values in tables.
pub const NONE: &str = "—";

/// A key's or account's id that no longer names one (rows of the request log and the ledger
/// outlive what they count): `… (deleted)`, so it is not taken for a name.
pub fn deleted(id: &str) -> String {
    format!("{id} (deleted)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines a table prints at `width` columns.
    fn render(width: u16, rows: &[[&str; 3]]) -> Vec<String> {
        let mut t = new_table(&["ID", "NAME", "STATUS"], false, Some(width));
        for row in rows {
            t.add_row(row.to_vec());
        }
        fit_words(&mut t);
        t.lines().map(|l| l.trim_end().to_owned()).collect()
    }

    /// A table narrower than its content wraps free text between words and leaves ids,
    /// statuses and words whole; one that cannot fit even so is not wrapped at all.
    #[test]
    fn tables_wrap_between_words_and_never_inside_a_value() {
        let rows = [["0c06a15645e6", "laptop of the night shift team", "disabled"]];
        let lines = render(40, &rows);
        assert!(lines.len() > 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:?}");
        let text = lines.join("\n");
        for whole in [
            "0c06a15645e6",
            "disabled",
            "laptop",
            "night",
            "shift",
            "team",
            "STATUS",
        ] {
            assert!(text.contains(whole), "{whole}: {lines:?}");
        }
        // A word longer than 40 characters, and words two columns wide each, stay whole too.
        let path = "/home/alice/.local/share/codexpool/codexpool.db";
        for width in [65, 80] {
            let row = ["0c06a15645e6", &format!("{path} 東京の鍵 x"), "active"];
            let text = render(width, &[row]).join("\n");
            assert!(
                text.contains(path) && text.contains("東京の鍵"),
                "{width}: {text}"
            );
        }
        // Wider than the terminal at its narrowest: one line per row, nothing broken.
        let rows = [[
            "0c06a15645e6",
            "gpt-5-codex-with-a-long-name",
            "needs_login_now",
        ]];
        let lines = render(40, &rows);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1].contains("gpt-5-codex-with-a-long-name"),
            "{lines:?}"
        );
    }

    #[test]
    fn bars_and_figures() {
        assert_eq!(bar(48.0), "█████░░░░░");
        assert_eq!(bar(0.0), "░░░░░░░░░░");
        assert_eq!(bar(100.0), "██████████");
        assert_eq!(bar(250.0), "██████████");
        assert_eq!(bar(f64::NAN), "░░░░░░░░░░");
        assert_eq!(percent(47.6), "48%");
        assert_eq!(
            duration(Duration::from_secs(2 * 3600 + 13 * 60 + 59)),
            "2h 13m"
        );
        assert_eq!(
            duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
        assert_eq!(duration(Duration::from_secs(59)), "59s");
        assert_eq!(duration(Duration::from_secs(119)), "1m 59s");
        assert_eq!(duration(Duration::from_secs(720)), "12m");
        assert_eq!(duration(Duration::from_millis(300)), "<1s");
        assert_eq!(millis(340), "340 ms");
        assert_eq!(millis(1250), "1.2 s");
        let now = Timestamp::from_secs(10_000);
        assert_eq!(ago(now, Timestamp::from_secs(9_990)), "just now");
        assert_eq!(ago(now, Timestamp::from_secs(9_700)), "5m ago");
        assert_eq!(
            datetime(Timestamp::from_millis(1_730_947_200_123)),
            "2024-11-07 02:40:00"
        );
    }

    #[test]
    fn paint_is_plain_without_colour() {
        assert_eq!(paint(false, "x", Paint::Red), "x");
        assert_eq!(paint(true, "x", Paint::Red), "\x1b[31mx\x1b[0m");
    }
}
