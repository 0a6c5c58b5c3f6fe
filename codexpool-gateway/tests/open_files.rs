//! The server raises the process's soft limit of open files to the hard one: at the common soft
//! limit of 1024 the files run out long before `HTTP_QUEUE_*` sheds load, and then new
//! connections (health checks too) wait unanswered. One test in its own process, since it
//! changes a limit of the process.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(unix)]

mod common;

use codexpool_core::Pool;
use codexpool_testkit::FakeOpenAi;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

#[tokio::test]
async fn starting_a_server_raises_the_open_files_limit() {
    let Rlimit {
        maximum: Some(hard),
        ..
    } = getrlimit(Resource::Nofile)
    else {
        return; // Unlimited: nothing to raise to.
    };
    if hard <= 256 {
        return; // Nothing to see on a host this tight.
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(256),
            maximum: Some(hard),
        },
    )
    .unwrap();
    let fake = FakeOpenAi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_for(&fake, &[]);
    config
        .set("DB_PATH", dir.path().join("pool.db").to_str().unwrap())
        .unwrap();
    let pool = Pool::open(config).await.unwrap();
    let srv = common::serve(&pool).await;
    assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    srv.stop().await.unwrap();
}
