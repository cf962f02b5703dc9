//! Membership changes as an operator makes them, on `ha-kv` processes:
//! every node of a 3-node cluster replaced in turn (`serve --join`,
//! `member add`, `member remove`) under 64 `repl` clients writing, every
//! acknowledged write read back at the end; the new nodes catch up by
//! snapshot before they are promoted; a removed node restarted on its old
//! data directory does not disturb the cluster; one change at a time (a
//! change that cannot complete yet is in doubt, never "not applied", and
//! none other starts meanwhile).

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

/// One `repl` client: writes unique keys until told to stop, then reads
/// back every write it saw acknowledged. Returns (acknowledged, read back
/// with the written value).
fn writer(
    c_arg: String,
    tls: PathBuf,
    n: usize,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicUsize>,
) -> (usize, usize) {
    let mut child = Command::new(BIN)
        .args(["repl", "--cluster", &c_arg, "--timeout-ms", "10000"])
        .arg("--tls-dir")
        .arg(&tls)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ha-kv repl");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |line: String| -> Value {
        writeln!(stdin, "{line}").expect("write to repl");
        stdin.flush().unwrap();
        let mut answer = String::new();
        stdout.read_line(&mut answer).expect("read from repl");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
    };
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{n}-{i}");
        if ask(format!("put {key} {i}"))["ok"] == true {
            acked.push((key, i));
            acked_total.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
    }
    let mut found = 0;
    for (key, v) in &acked {
        let answer = ask(format!("get {key}"));
        assert_eq!(answer["ok"], true, "get {key}: {answer}");
        if answer["value"].as_str() == Some(v.to_string().as_str()) {
            found += 1;
        }
    }
    drop(stdin);
    let _ = child.wait();
    (acked.len(), found)
}

/// The term of the leader, asked of every node.
fn leader_term(c: &Cluster) -> Option<u64> {
    c.status()
        .iter()
        .find(|s| s["role"] == "leader")
        .and_then(|s| s["term"].as_u64())
}

#[test]
fn every_node_replaced_under_64_clients_and_nothing_acknowledged_is_lost() {
    // Small snapshots: a node added later catches up by one.
    let mut c = start_with(&["--snapshot-every", "200"]);
    c.wait_for_leader();
    c.add_slots(3);
    // More than a snapshot's worth of history before anyone joins.
    let out = c.client(&[
        "bench",
        "--clients",
        "8",
        "--ops",
        "1000",
        "--value-size",
        "16",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));

    // The writers know every address, the new nodes' too (as a client
    // behind a DNS name for the service would).
    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..64)
        .map(|n| {
            let (c_arg, tls) = (c.cluster_arg(), c.tls());
            let (stop, acked_total) = (stop.clone(), acked_total.clone());
            std::thread::spawn(move || writer(c_arg, tls, n, stop, acked_total))
        })
        .collect();

    let started = Instant::now();
    for (old, new) in [(1, 4), (2, 5), (3, 6)] {
        c.start_joining(new);
        let out = c.client(&[
            "member",
            "add",
            &new.to_string(),
            &c.addr(new),
            "--timeout-ms",
            "60000",
        ]);
        assert_eq!(
            code(&out),
            0,
            "member add {new}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v = json_line(&out);
        let role = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == new as u64)
            .map(|m| (m["role"].clone(), m["addr"].clone()));
        assert_eq!(role, Some(("voter".into(), c.addr(new).into())), "{v}");
        assert!(
            c.log(new).contains("installed a snapshot from the leader"),
            "node {new} was promoted without catching up by snapshot"
        );
        let out = c.client(&[
            "member",
            "remove",
            &old.to_string(),
            "--timeout-ms",
            "60000",
        ]);
        assert_eq!(
            code(&out),
            0,
            "member remove {old}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            json_line(&out)["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["id"] != old as u64),
            "node {old} is gone from the configuration"
        );
        c.sigterm(old);
    }
    let took = started.elapsed();
    let during = acked_total.load(Ordering::Relaxed);
    assert!(
        during > 0,
        "no write was acknowledged during the replacement"
    );

    // The new voters, with the addresses they were added with.
    let out = c.client(&["member", "list"]);
    let v = json_line(&out);
    let want: Vec<Value> = (4..=6)
        .map(|id| serde_json::json!({"id": id, "addr": c.addr(id), "role": "voter"}))
        .collect();
    assert_eq!(v["members"], Value::Array(want), "{v}");

    // A removed node restarted on its old directory stays out of the way:
    // it knows it was removed (if it saw its removal commit before it
    // stopped), or the members refuse it as removed when it dials them
    // (if it did not); either way the leader's term does not move while it
    // runs (several election timeouts).
    let term = leader_term(&c).expect("a leader");
    // Only what the logs say from here on counts (they are appended across
    // the whole test).
    let since: Vec<usize> = (1..=6).map(|id| c.log(id).len()).collect();
    let said = |c: &Cluster, id: usize, what: &str| {
        c.log(id)
            .get(since[id - 1]..)
            .is_some_and(|l| l.contains(what))
    };
    c.start_node_with(1, None);
    // (A member logs its refusals sampled, so after a restart only node
    // 1's own log says it for sure: the refusing peer's close reason.)
    // A node that stopped before its removal committed, holding the
    // configuration without it, says so and stays silent.
    let told_or_refused = |c: &Cluster| {
        said(c, 1, "no longer a member")
            || said(c, 1, "not a voter of its latest configuration")
            || said(c, 1, "names a node removed")
            || (4..=6).any(|id| said(c, id, "names a node removed"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !told_or_refused(&c) {
        if Instant::now() >= deadline {
            let since_restart = |id: usize| {
                let log = c.log(id);
                let tail = log.get(since[id - 1]..).unwrap_or_default();
                let lines: Vec<&str> = tail.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            };
            panic!(
                "node 1 was neither told of its removal nor refused; since its restart:\n\
                 node 1:\n{}\nnode 4:\n{}\nnode 5:\n{}\nnode 6:\n{}",
                since_restart(1),
                since_restart(4),
                since_restart(5),
                since_restart(6)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        leader_term(&c),
        Some(term),
        "the removed node disturbed the cluster"
    );

    // A node that joined repairs a damaged log from its peers (it counts
    // the voters of the cluster it joined, not its empty first
    // configuration).
    #[cfg(target_os = "linux")]
    {
        let leader = c.wait_for_leader();
        let victim = (4..=6).find(|id| *id != leader).unwrap();
        c.stop_and_kill9(victim);
        super::recovery::damage_last_batch(&c, victim);
        // Restarted as any restart is: no --join, no --peers (it recovers
        // the configuration it stored).
        c.start_node_with(victim, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.log(victim).contains("storage repair finished") {
            assert!(
                Instant::now() < deadline,
                "joined node {victim} did not repair its log:\n{}",
                c.log(victim)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut found) = (0, 0);
    for w in writers {
        let (a, f) = w.join().expect("a writer");
        acked += a;
        found += f;
    }
    eprintln!(
        "rolling replacement of 3 ha-kv processes under 64 clients: {:.2} s, {during} writes \
         acknowledged meanwhile, {acked} in all",
        took.as_secs_f64()
    );
    assert_eq!(found, acked, "acknowledged writes were lost");
}

#[test]
fn one_membership_change_at_a_time() {
    let mut c = start();
    let leader = c.wait_for_leader();
    c.add_slots(1);
    // Node 4 is never started: added as a learner, it cannot catch up, so
    // it is not promoted.
    let out = c.client(&["member", "add", "4", &c.addr(4), "--learner"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    let learner = serde_json::json!({"id": 4, "addr": c.addr(4), "role": "learner"});
    let v = json_line(&out);
    assert!(v["members"].as_array().unwrap().contains(&learner), "{v}");
    let out = c.client(&["member", "promote", "4", "--timeout-ms", "1500"]);
    assert_eq!(
        code(&out),
        1,
        "a learner that never answered is not promoted"
    );
    let v = json_line(&out);
    assert!(
        v["message"].as_str().unwrap().contains("not caught up"),
        "{v}"
    );
    // A learner goes in one entry.
    let out = c.client(&["member", "remove", "4"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    // Removing voter b while voter a is down: the joint configuration
    // needs a, so the change cannot complete yet. Its outcome is unknown
    // (exit 3), not "not applied": it is in the log.
    let others: Vec<usize> = (1..=3).filter(|n| *n != leader).collect();
    let (a, b) = (others[0], others[1]);
    c.sigterm(a);
    let out = c.client(&["member", "remove", &b.to_string(), "--timeout-ms", "1500"]);
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stdout));
    // Meanwhile no other change starts (the joint configuration has no
    // quorum without a, so no leader either): not applied, exit 1. (A
    // change refused because another one runs under a live leader is
    // `busy`; the client's tests in ha-core cover that answer.)
    let out = c.client(&["member", "add", "4", &c.addr(4), "--learner"]);
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stdout));
    // Once a is back, the removal completes by itself, and 4 was never
    // added.
    c.start_node_with(a, None);
    let want: Vec<Value> = {
        let mut ids = [leader, a];
        ids.sort_unstable();
        ids.iter()
            .map(|id| serde_json::json!({"id": id, "addr": c.addr(*id), "role": "voter"}))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.client(&["member", "list"]);
        if code(&out) == 0 && json_line(&out)["members"] == Value::Array(want.clone()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removal of {b} never completed: {}; status: {:?}",
            String::from_utf8_lossy(&out.stdout),
            c.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // An id that is no learner cannot be promoted: not applied.
    let out = c.client(&["member", "promote", "9"]);
    assert_eq!(code(&out), 1);
    assert_eq!(json_line(&out)["error"], "not_applied");
}
