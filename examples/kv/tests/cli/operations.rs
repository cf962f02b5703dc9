//! What an operator sees: the live page at `/`, loaded in headless
//! Chromium against a real cluster whose leader is killed. (The rolling
//! restart's accounting is checked in `tests/handoff.rs`, a test binary of
//! its own, so no other test shares the machine with its timings.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::start;

/// Where the page's screenshot is kept (a test artifact).
const SCREENSHOT: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/live-page.png");

/// The Chromium binary (Debian's `chromium` package; `scripts/test`
/// installs it).
fn chromium() -> &'static str {
    for bin in ["chromium", "chromium-browser"] {
        if Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return bin;
        }
    }
    panic!(
        "headless Chromium is needed to test the live page: run scripts/test, which installs \
         Debian's chromium package, or `apt-get install chromium`"
    );
}

/// Headless Chromium on `url`, letting the page's timers run for 4 s of
/// virtual time, with `what` (`--dump-dom`, or `--screenshot=PATH`).
fn chromium_on(url: &str, what: &str) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1100,1000",
            "--virtual-time-budget=4000",
            what,
            url,
        ])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with id `id` in `dom`.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let open = format!("id=\"{id}\">");
    let at = dom.find(&open)? + open.len();
    Some(dom[at..].split('<').next()?.to_string())
}

/// `/api/state` of the node whose metrics listen on `port`.
fn page_state(port: u16) -> Value {
    let body = super::contract::http_get(port, "/api/state");
    let json = body.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(json).expect("the page's state is JSON")
}

/// Whether every member answered the page's last poll.
fn all_up(s: &Value) -> bool {
    let m = s["members"].as_array().expect("members");
    m.len() == 3 && m.iter().all(|m| m["status"].is_object())
}

#[test]
fn the_live_page_shows_the_new_leader_and_one_unplanned_leaderless_period() {
    let mut c = start();
    let old = c.wait_for_leader();
    let observer = if old == 1 { 2 } else { 1 };
    let port = c.metrics_ports[observer - 1];
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let s = page_state(port);
        if all_up(&s) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the page never saw every member: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Periods the observer saw already (none, unless the first election
    // was fought over): the kill must add exactly one unplanned one.
    let unplanned_before = before["timeline"]["down"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["planned"] == false)
        .count();
    let dom = chromium_on(&format!("http://127.0.0.1:{port}/"), "--dump-dom");
    assert_eq!(
        text_of(&dom, "leader").as_deref(),
        Some(&*old.to_string()),
        "{dom}"
    );
    assert_eq!(
        text_of(&dom, "unplanned-periods"),
        Some(unplanned_before.to_string())
    );

    c.kill9(old);
    let new = c.wait_for_leader();
    assert_ne!(new, old);
    // The page's poll runs once a second: wait until it saw the new leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = page_state(port);
        let leads = s["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == new && m["status"]["role"] == "leader");
        if leads {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never saw node {new} lead: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dom = chromium_on(&format!("http://127.0.0.1:{port}/"), "--dump-dom");
    assert_eq!(
        text_of(&dom, "leader").as_deref(),
        Some(&*new.to_string()),
        "{dom}"
    );
    assert_eq!(
        text_of(&dom, "unplanned-periods"),
        Some((unplanned_before + 1).to_string()),
        "{dom}"
    );
    assert_eq!(
        text_of(&dom, "planned-periods").as_deref(),
        Some("0"),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("data-id=\"{old}\" data-role=\"unreachable\"")),
        "the killed node is not shown unreachable: {dom}"
    );
    assert_eq!(
        dom.matches("class=\"down unplanned\"").count(),
        unplanned_before + 1,
        "{dom}"
    );
    let refreshes: u32 = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the refresh counter");
    assert!(
        refreshes >= 2,
        "the page refreshed {refreshes} times in 4 s"
    );

    let _ = std::fs::remove_file(SCREENSHOT);
    chromium_on(
        &format!("http://127.0.0.1:{port}/"),
        &format!("--screenshot={SCREENSHOT}"),
    );
    let png = std::fs::read(SCREENSHOT).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{SCREENSHOT}"
    );
    eprintln!("screenshot of the live page: {SCREENSHOT}");
}
