//! The maintainability accounting of a rolling restart under client load,
//! checked against what the clients themselves measured. A test binary of
//! its own: cargo runs test binaries one after another, so no other test
//! shares this 2-core machine with the hand-offs it times.
#![allow(dead_code, unused_imports)] // the shared harness has more than this test uses

include!("cli/harness.rs");

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[path = "../src/kv.rs"]
#[allow(dead_code)]
mod kv;

/// Writers in this process, each with its own session through the typed
/// client, writing one key after another until `stop`; the times of their
/// acknowledged writes. (In process, not through `repl`: the gaps between
/// acknowledgments must be far finer than a hand-off.)
fn writers(c: &Cluster, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Instant>> {
    let identity = ha_quic::load_client_identity(&c.tls()).expect("the client's certificate");
    let addrs: Vec<String> = (1..=3).map(|id| c.addr(id)).collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tasks = tokio::task::JoinSet::new();
            for k in 0..n {
                let addrs: Vec<ha_core::client::NodeAddr> = addrs
                    .iter()
                    .map(|a| ha_core::client::NodeAddr::parse(a).unwrap())
                    .collect();
                let client = ha_quic::connect::<kv::Kv>(addrs, &identity, Default::default())
                    .expect("a client");
                let (stop, acks) = (stop.clone(), acks.clone());
                tasks.spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("w{k}-{i}").into_bytes();
                        if client.put(key, i.to_string().into_bytes()).await.is_ok() {
                            acks.lock().unwrap().push(Instant::now());
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            std::mem::take(&mut *acks.lock().unwrap())
        })
    })
}

/// The longest gap between consecutive acknowledgments (of all writers
/// together) that begins within `from..=to`.
fn longest_gap(acks: &[Instant], from: Instant, to: Instant) -> Duration {
    acks.windows(2)
        .filter(|w| w[0] >= from && w[0] <= to)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

#[test]
fn a_rolling_restart_under_load_counts_its_hand_offs_as_planned() {
    let mut c = start();
    c.wait_for_leader();
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(&c, 8, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    // Two rolling restarts: every node once in each, the leader first
    // whenever it has not been restarted yet in that round, so the
    // hand-offs are as many as can be (the comparison is of their sum).
    let mut left: Vec<usize> = Vec::new();
    let mut rounds = 2;
    let mut handoffs = Vec::new();
    while rounds > 0 || !left.is_empty() {
        if left.is_empty() {
            left = vec![1, 2, 3];
            rounds -= 1;
        }
        let leader = c.wait_for_leader();
        let id = if left.contains(&leader) {
            leader
        } else {
            left[0]
        };
        left.retain(|x| *x != id);
        let asked = Instant::now();
        let status = c.sigterm(id);
        let exited = Instant::now();
        assert!(status.success(), "node {id} exited {status:?} on SIGTERM");
        if id == leader {
            handoffs.push((asked, exited));
        }
        // Restarted a little later, so its start (the CPU it takes) does not
        // fall into the hand-off the clients measure.
        std::thread::sleep(Duration::from_millis(300));
        c.start_node(id);
        // Back: it answers, knows the leader and has applied what it knows
        // committed.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let back = c.status().into_iter().any(|s| {
                s["id"] == id && !s["leader"].is_null() && s["commit_index"] == s["applied_index"]
            });
            if back {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::Relaxed);
    let mut acks = load.join().expect("the writers");
    acks.sort();
    assert!(acks.len() > 1000, "only {} writes acknowledged", acks.len());
    // What the clients saw of each hand-off: the longest time without an
    // acknowledgment between the signal and a little after the exit.
    let seen: Vec<Duration> = handoffs
        .iter()
        .map(|(asked, exited)| longest_gap(&acks, *asked, *exited))
        .collect();
    let client_ms = seen.iter().sum::<Duration>().as_secs_f64() * 1e3;
    let statuses = c.status();
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    let field = |f: &str| -> Vec<u64> {
        let mut v: Vec<u64> = statuses
            .iter()
            .map(|s| s["availability"][f].as_u64().expect(f))
            .collect();
        v.sort();
        v
    };
    let (planned, unplanned, counted, own) = (
        field("planned_ms"),
        field("unplanned_ms"),
        field("handoffs"),
        field("handover_ms"),
    );
    let (planned_ms, unplanned_ms) = (planned[1], unplanned[1]);
    // Each hand-off counted once, by the leader that handed over.
    let handover_ms: u64 = own.iter().sum();
    eprintln!(
        "rolling restart: {} hand-offs; reported planned {planned:?} ms, unplanned {unplanned:?} \
         ms, hand-offs {counted:?}, own hand-overs {own:?} ms; the clients saw {seen:?} ({client_ms:.1} ms) without an \
         acknowledgment, of {} writes",
        handoffs.len(),
        acks.len()
    );
    assert!(!handoffs.is_empty(), "the leader was never restarted");
    // A follower may miss a hand-off's sign (its vote request is not
    // needed for the election, and the transport may drop it): most nodes
    // must have counted every hand-off as planned.
    assert!(
        counted[1] as usize >= handoffs.len(),
        "most nodes saw each hand-off: {counted:?} for {}",
        handoffs.len()
    );
    assert!(planned_ms > 0, "hand-offs take some time: {planned:?}");
    let ratio = handover_ms as f64 / client_ms;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "reported hand-off downtime {handover_ms} ms ({own:?}) vs {client_ms:.1} ms measured by \
         the clients (ratio {ratio:.2})"
    );
    assert!(
        ((planned_ms + unplanned_ms) as f64) < 3.0 * planned_ms as f64,
        "total downtime {} ms is not under 3 x the planned {planned_ms} ms",
        planned_ms + unplanned_ms
    );
}
