//! End-to-end tests of the `codexpool` binary: every command run as a child process against a
//! temporary database and a `FakeOpenAi`, with snapshots (insta) of what people see.
//!
//! One test binary (modules below) so the suite links once. Update snapshots with
//! `INSTA_UPDATE=always cargo test -p codexpool-cli` and review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod accounts;
mod config;
mod demo;
mod errors;
mod keys;
mod login;
mod logs;
mod quiet;
mod readme;
mod reliability;
mod serve;
mod support;
mod tokens;
mod upstream_tls;
mod usage;
