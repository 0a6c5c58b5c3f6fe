//! `codexpool config`: every setting, its effective value and where it came from.
//!
//! JSON: `[{"name", "value", "source", "default", "help"}]`, in the documented order; secrets
//! that are set read `*****`, unset optional values are `""`.

use super::Ctx;
use crate::output::{NONE, Paint, cell};

/// Prints the settings.
pub fn config(ctx: &Ctx) -> anyhow::Result<()> {
    let out = &ctx.out;
    let settings = ctx.config.describe();
    if out.json {
        out.json(&settings)?;
        return Ok(());
    }
    let mut t = out.table(&["SETTING", "VALUE", "SOURCE"]);
    for s in &settings {
        let value = if s.value.is_empty() {
            cell(NONE, Some(Paint::Dim))
        } else {
            cell(&s.value, None)
        };
        let source = if s.source == "default" {
            cell(&s.source, Some(Paint::Dim))
        } else {
            cell(&s.source, Some(Paint::Cyan))
        };
        t.add_row(vec![cell(s.name, None), value, source]);
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
    Ok(())
}
