//! Example: embed the gateway in an axum app.
fn main() {}
