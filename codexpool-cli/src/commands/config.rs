//! `codexpool config`: every setting, its effective value and where it came from.
//!
//! JSON: `[{"name", "value", "source", "default", "help"}]`, in the documented order; secrets
//! that are set read `*****`, unset optional values are `""`. An invalid setting shows the value
//! as given (secrets still `*****`) and carries `"error"`; the command then exits 1.

use super::Ctx;
use crate::Failure;
use crate::output::{NONE, Paint, cell};

/// Prints the settings.
pub fn config(ctx: &Ctx) -> anyhow::Result<()> {
    let out = &ctx.out;
    let settings = ctx.config.describe_with_errors(&ctx.invalid);
    if out.json {
        out.json(&settings)?;
        for w in &ctx.config.warnings {
            out.warn(w);
        }
        return invalid(ctx);
    }
    let mut headers = vec!["SETTING", "VALUE", "SOURCE"];
    if !ctx.invalid.is_empty() {
        headers.push("ERROR");
    }
    let mut t = out.table(&headers);
    for s in &settings {
        let value = match &s.error {
            Some(_) => cell(format!("{:?}", s.value), Some(Paint::Red)),
            None if s.value.is_empty() => cell(NONE, Some(Paint::Dim)),
            None => cell(&s.value, None),
        };
        let source = if s.source == "default" {
            cell(&s.source, Some(Paint::Dim))
        } else {
            cell(&s.source, Some(Paint::Cyan))
        };
        let mut row = vec![cell(s.name, None), value, source];
        if let Some(e) = &s.error {
            row.push(cell(format!("invalid: {e}"), Some(Paint::Red)));
        }
        t.add_row(row);
    }
    out.print_table(&t)?;
    for w in &ctx.config.warnings {
        out.warn(w);
    }
    out.note(format!(
        "\nEach setting is read from CODEXPOOL_<SETTING> (GPTTOOLS_<SETTING> also works), then from \
         the first of {} in the current directory or beside the program.",
        codexpool_core::config::ENV_FILE_NAMES.join(", ")
    ));
    invalid(ctx)
}

/// Exit 1 when a setting is invalid, naming it and where to fix it.
fn invalid(ctx: &Ctx) -> anyhow::Result<()> {
    let Some(first) = ctx.invalid.first() else {
        return Ok(());
    };
    let fixes: Vec<String> = ctx.invalid.iter().map(crate::config_fix).collect();
    let message = match ctx.invalid.len() {
        1 => first.to_string(),
        n => format!(
            "{n} settings are invalid: {}",
            ctx.invalid
                .iter()
                .map(|e| e.var.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(Failure::new(message, fixes.join("; ")).into())
}
