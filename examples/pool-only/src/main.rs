//! Example: use the pool without HTTP.
fn main() {}
