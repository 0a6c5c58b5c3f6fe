//! The usage endpoint over real HTTP: shapes, free-plan weekly-only, challenge, forced status,
//! account checks, and agreement with the `x-codex-*` headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use codexpool_testkit::{FakeAccount, FakeOpenAi, FakeUsage, FakeWindow, Reply};
use common::{client, codex_frames};
use serde_json::Value;

async fn get_usage(fake: &FakeOpenAi, account: &str) -> reqwest::Response {
    client()
        .get(format!("{}/backend-api/wham/usage", fake.usage_base_url()))
        .bearer_auth(fake.current_tokens(account).access_token)
        .header("ChatGPT-Account-ID", account)
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn usage_has_the_protocol_shape() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1").plan("plus"));
    fake.set_usage(
        "acct-1",
        FakeUsage::new(25.0, 80.0)
            .credits(12.5)
            .primary(FakeWindow::five_hour(25.0).reset_at(4_102_444_800))
            .secondary(FakeWindow::weekly(80.0).reset_at(4_103_049_600)),
    );
    let resp = get_usage(&fake, "acct-1").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["plan_type"], "plus");
    assert_eq!(v["rate_limit"]["allowed"], true);
    assert_eq!(v["rate_limit"]["limit_reached"], false);
    let p = &v["rate_limit"]["primary_window"];
    assert_eq!(p["used_percent"], 25.0);
    assert_eq!(p["limit_window_seconds"], 18000);
    assert_eq!(p["reset_at"], 4_102_444_800_i64);
    let s = &v["rate_limit"]["secondary_window"];
    assert_eq!(s["used_percent"], 80.0);
    assert_eq!(s["limit_window_seconds"], 604_800);
    assert_eq!(s["reset_at"], 4_103_049_600_i64);
    assert_eq!(v["credits"]["balance"], 12.5);
    assert!(v["additional_rate_limits"].is_array());
    let req = fake.last_request("/backend-api/wham/usage").unwrap();
    assert_eq!(req.account_id.as_deref(), Some("acct-1"));
    assert_eq!(req.header("originator"), Some("codex_cli_rs"));
}

#[tokio::test]
async fn free_plan_sends_one_weekly_window_in_the_primary_slot() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-f").plan("free"));
    fake.set_usage("acct-f", FakeUsage::weekly_only(40.0));
    let v: Value = get_usage(&fake, "acct-f").await.json().await.unwrap();
    assert_eq!(v["plan_type"], "free");
    assert_eq!(
        v["rate_limit"]["primary_window"]["limit_window_seconds"],
        604_800
    );
    assert_eq!(v["rate_limit"]["secondary_window"], Value::Null);

    let (_, headers, _) = codex_frames(&fake, "acct-f").await;
    assert_eq!(headers["x-codex-primary-window-minutes"], "10080");
    assert!(headers.get("x-codex-secondary-window-minutes").is_none());
}

#[tokio::test]
async fn challenge_and_forced_status() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.usage_challenge("acct-1", true);
    let resp = get_usage(&fake, "acct-1").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(resp.text().await.unwrap().contains("Just a moment"));
    fake.usage_challenge("acct-1", false);

    fake.usage_status("acct-1", Some(503));
    assert_eq!(get_usage(&fake, "acct-1").await.status(), 503);
    fake.usage_status("acct-1", None);
    assert_eq!(get_usage(&fake, "acct-1").await.status(), 200);
}

#[tokio::test]
async fn wrong_account_header_or_token_is_401() {
    let fake = FakeOpenAi::start().unwrap();
    let t1 = fake.add_account(FakeAccount::new("acct-1"));
    fake.add_account(FakeAccount::new("acct-2"));
    let http = client();
    let url = format!("{}/backend-api/wham/usage", fake.usage_base_url());
    let mismatch = http
        .get(&url)
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0")
        .bearer_auth(&t1.access_token)
        .header("ChatGPT-Account-ID", "acct-2")
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), 401);
    let body: Value = mismatch.json().await.unwrap();
    assert_eq!(body["error"]["code"], "account_mismatch");
    let no_header = http
        .get(&url)
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0")
        .bearer_auth(&t1.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status(), 401);
    let no_token = http
        .get(&url)
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0")
        .header("ChatGPT-Account-ID", "acct-1")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let garbage = http
        .get(&url)
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0")
        .bearer_auth("not-a-token")
        .header("ChatGPT-Account-ID", "acct-1")
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 401);
}

#[tokio::test]
async fn codex_headers_agree_with_usage() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.set_usage(
        "acct-1",
        FakeUsage::new(12.5, 60.0)
            .credits(3.0)
            .primary(FakeWindow::five_hour(12.5).resets_in(Duration::from_secs(3600))),
    );
    let (status, h, _) = codex_frames(&fake, "acct-1").await;
    assert_eq!(status, 200);
    assert_eq!(h["x-codex-primary-used-percent"], "12.5");
    assert_eq!(h["x-codex-primary-window-minutes"], "300");
    let after: i64 = h["x-codex-primary-reset-after-seconds"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&after), "{after}");
    let at: i64 = h["x-codex-primary-reset-at"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(at, fake.usage("acct-1").primary.unwrap().reset_at);
    assert_eq!(h["x-codex-secondary-used-percent"], "60.0");
    assert_eq!(h["x-codex-secondary-window-minutes"], "10080");
    assert!(h.contains_key("x-codex-secondary-reset-after-seconds"));
    assert!(h.contains_key("x-codex-secondary-reset-at"));
    assert_eq!(h["x-codex-credits-balance"], "3.0");
    assert_eq!(h["x-codex-credits-has-credits"], "true");
}

#[tokio::test]
async fn usage_limit_429_exhausts_the_window_everywhere() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.set_usage("acct-1", FakeUsage::new(90.0, 50.0));
    fake.push_reply(
        "acct-1",
        Reply::UsageLimit429 {
            resets_in_secs: 1200,
        },
    );
    let resp = common::codex_post(&fake, "acct-1", &common::codex_body("hi")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-codex-primary-used-percent"], "100.0");
    let body: Value = resp.json().await.unwrap();
    let e = &body["error"];
    assert_eq!(e["type"], "usage_limit_reached");
    assert_eq!(e["resets_in_seconds"], 1200);
    assert_eq!(e["plan_type"], "plus");
    let resets_at = e["resets_at"].as_i64().unwrap();

    let v: Value = get_usage(&fake, "acct-1").await.json().await.unwrap();
    assert_eq!(v["rate_limit"]["limit_reached"], true);
    assert_eq!(v["rate_limit"]["allowed"], false);
    assert_eq!(v["rate_limit"]["primary_window"]["used_percent"], 100.0);
    assert_eq!(v["rate_limit"]["primary_window"]["reset_at"], resets_at);
    assert_eq!(v["rate_limit"]["secondary_window"]["used_percent"], 50.0);

    // Unscripted, the exhausted account is refused until the reset, as the backend does.
    let again = common::codex_post(&fake, "acct-1", &common::codex_body("hi")).await;
    assert_eq!(again.status(), 429);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["type"], "usage_limit_reached");
    assert!(
        (1190..=1200).contains(&body["error"]["resets_in_seconds"].as_i64().unwrap()),
        "{body}"
    );
}

/// Past its reset a window starts again: the usage endpoint, the headers and the backend say
/// the account is fresh (a reading of 100 % is stale then, PROTOCOL.md §3).
#[tokio::test]
async fn a_window_past_its_reset_starts_again() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Exhausted, with a reset 10 s ago: the window after it runs 5 h from then.
    fake.set_usage(
        "acct-1",
        FakeUsage::new(0.0, 40.0).primary(FakeWindow::five_hour(100.0).reset_at(now - 10)),
    );
    let v: Value = get_usage(&fake, "acct-1").await.json().await.unwrap();
    assert_eq!(v["rate_limit"]["limit_reached"], false, "{v}");
    let p = &v["rate_limit"]["primary_window"];
    assert_eq!(p["used_percent"], 0.0);
    assert_eq!(p["reset_at"], now - 10 + 5 * 3600);
    assert_eq!(v["rate_limit"]["secondary_window"]["used_percent"], 40.0);
    let resp = common::codex_post(&fake, "acct-1", &common::codex_body("hi")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-codex-primary-used-percent"], "0.0");
}

/// The usage endpoint wants the Codex CLI's `originator` and `User-Agent` (PROTOCOL.md §3).
#[tokio::test]
async fn the_usage_endpoint_wants_the_codex_headers() {
    let fake = FakeOpenAi::start().unwrap();
    let t = fake.add_account(FakeAccount::new("acct-1"));
    for skip in ["originator", "user-agent"] {
        let mut req = client()
            .get(format!("{}/backend-api/wham/usage", fake.usage_base_url()))
            .bearer_auth(&t.access_token)
            .header("ChatGPT-Account-ID", "acct-1");
        for (name, value) in [
            ("originator", "codex_cli_rs"),
            ("user-agent", "codex_cli_rs/1"),
        ] {
            if name != skip {
                req = req.header(name, value);
            }
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{skip}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["detail"], format!("Missing required header: {skip}"));
    }
}

#[tokio::test]
async fn in_stream_usage_limits_exhaust_the_window_everywhere() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.add_account(FakeAccount::new("acct-2"));
    // The text names its wait: 4 hours 59 minutes.
    fake.set_usage("acct-1", FakeUsage::new(90.0, 50.0));
    fake.push_reply("acct-1", Reply::UsageLimitText);
    let (status, h, frames) = codex_frames(&fake, "acct-1").await;
    assert_eq!(status, 200);
    assert!(common::text_of(&frames).starts_with("You've hit your usage limit."));
    assert_eq!(h["x-codex-primary-used-percent"], "100.0");
    assert_eq!(h["x-codex-secondary-used-percent"], "50.0");
    let after: i64 = h["x-codex-primary-reset-after-seconds"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((17_930..=17_940).contains(&after), "{after}");
    let v: Value = get_usage(&fake, "acct-1").await.json().await.unwrap();
    assert_eq!(v["rate_limit"]["limit_reached"], true);
    assert_eq!(v["rate_limit"]["allowed"], false);
    assert_eq!(v["rate_limit"]["primary_window"]["used_percent"], 100.0);
    assert_eq!(
        v["rate_limit"]["primary_window"]["reset_at"],
        h["x-codex-primary-reset-at"]
            .to_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    );

    // `response.failed` names no wait: the 5-hour window is used up until its own reset.
    let five = FakeWindow::five_hour(70.0).resets_in(Duration::from_secs(1800));
    let reset_at = five.reset_at;
    fake.set_usage("acct-2", FakeUsage::new(0.0, 20.0).primary(five));
    fake.push_reply(
        "acct-2",
        Reply::failed("usage_limit_reached", "The usage limit has been reached"),
    );
    let (status, h, frames) = codex_frames(&fake, "acct-2").await;
    assert_eq!(status, 200);
    assert_eq!(
        frames.last().unwrap().data["response"]["error"]["code"],
        "usage_limit_reached"
    );
    assert_eq!(h["x-codex-primary-used-percent"], "100.0");
    let v: Value = get_usage(&fake, "acct-2").await.json().await.unwrap();
    assert_eq!(v["rate_limit"]["limit_reached"], true);
    assert_eq!(v["rate_limit"]["primary_window"]["used_percent"], 100.0);
    let at = v["rate_limit"]["primary_window"]["reset_at"]
        .as_i64()
        .unwrap();
    assert!(
        (reset_at - 1..=reset_at + 1).contains(&at),
        "{at} vs {reset_at}"
    );
    assert_eq!(v["rate_limit"]["secondary_window"]["used_percent"], 20.0);

    // After output, too; other failures leave the usage alone.
    fake.set_usage("acct-2", FakeUsage::new(10.0, 20.0));
    fake.push_reply("acct-2", Reply::Overloaded);
    fake.push_reply("acct-2", Reply::failed("server_error", "boom"));
    for _ in 0..2 {
        let (_, h, _) = codex_frames(&fake, "acct-2").await;
        assert_eq!(h["x-codex-primary-used-percent"], "10.0");
    }
    assert!(!fake.usage("acct-2").is_limit_reached());
    fake.push_reply(
        "acct-2",
        Reply::FailedAfterText {
            deltas: vec!["Part".into()],
            code: "usage_limit_reached".into(),
            message: "The usage limit has been reached".into(),
        },
    );
    let (_, h, _) = codex_frames(&fake, "acct-2").await;
    assert_eq!(h["x-codex-primary-used-percent"], "100.0");
    assert!(fake.usage("acct-2").is_limit_reached());
}

#[tokio::test]
async fn a_one_shot_status_answers_once_before_the_sticky_one() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.usage_status_once("acct-1", 403);
    fake.usage_status_once("acct-1", 401);
    let r = get_usage(&fake, "acct-1").await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["detail"],
        "Scripted status 403"
    );
    assert_eq!(get_usage(&fake, "acct-1").await.status(), 401);
    assert_eq!(get_usage(&fake, "acct-1").await.status(), 200);
    fake.usage_status("acct-1", Some(503));
    fake.usage_status_once("acct-1", 403);
    assert_eq!(get_usage(&fake, "acct-1").await.status(), 403);
    assert_eq!(get_usage(&fake, "acct-1").await.status(), 503);
    // A request that fails authentication does not use up the scripted status.
    fake.usage_status("acct-1", None);
    fake.usage_status_once("acct-1", 403);
    let bad = client()
        .get(format!("{}/backend-api/wham/usage", fake.usage_base_url()))
        .bearer_auth("not-a-token")
        .header("ChatGPT-Account-ID", "acct-1")
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(get_usage(&fake, "acct-1").await.status(), 403);
}
