//! The `codexpool` command.
fn main() {}
