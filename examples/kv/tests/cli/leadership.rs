//! Leadership moves when an operator asks: `transfer-leader` to a named
//! voter and to the most up-to-date one, its refusals, and the hand-over a
//! leader makes on SIGTERM before it exits.

use super::*;

#[test]
fn leadership_moves_on_request_and_on_sigterm() {
    let mut c = start();
    let first = c.wait_for_leader();
    let out = c.client(&["put", "before", "1"]);
    assert_eq!(code(&out), 0);

    // To a named voter: answered once it leads.
    let target = first % 3 + 1;
    let out = c.client(&["transfer-leader", &target.to_string()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        json_line(&out),
        serde_json::json!({"ok": true, "leader": target})
    );
    assert_eq!(c.wait_for_leader(), target);
    // Asking again for the node that leads changes nothing.
    let out = c.client(&["transfer-leader", &target.to_string()]);
    assert_eq!(
        json_line(&out),
        serde_json::json!({"ok": true, "leader": target})
    );

    // To whichever voter is most up to date: some other node.
    let out = c.client(&["transfer-leader"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let moved = json_line(&out)["leader"].as_u64().expect("a leader id") as usize;
    assert_ne!(moved, target);
    assert_eq!(c.wait_for_leader(), moved);

    // Not a voter: refused, not applied (exit 1), leadership stays.
    let out = c.client(&["transfer-leader", "9"]);
    assert_eq!(code(&out), 1);
    let v = json_line(&out);
    assert_eq!(v["ok"], false);
    assert!(
        v["message"].as_str().unwrap().contains("not another voter"),
        "{v}"
    );
    assert_eq!(c.wait_for_leader(), moved);

    // Writes go on at the new leader.
    let out = c.client(&["put", "after", "2"]);
    assert_eq!(code(&out), 0);

    // SIGTERM on the leader: it hands over, then exits 0; the next leader
    // is elected in the very next term (no election timeout ran out).
    let term_of = |c: &Cluster, id: usize| {
        c.status()
            .iter()
            .find(|s| s["id"] == id as u64)
            .and_then(|s| s["term"].as_u64())
            .expect("a status line with a term")
    };
    let term = term_of(&c, moved);
    let status = c.sigterm(moved);
    assert!(status.success(), "serve exited with {status:?}");
    let log = c.log(moved);
    assert!(
        log.contains("handed leadership over to node"),
        "the leader's log does not show a hand-over:\n{log}"
    );
    let next = c.wait_for_leader();
    assert_ne!(next, moved);
    assert!(
        log.contains(&format!("handed leadership over to node {next}")),
        "{log}"
    );
    assert_eq!(term_of(&c, next), term + 1);
    let out = c.client(&["put", "during", "3"]);
    assert_eq!(code(&out), 0);
    c.start_node(moved);
    for (k, v) in [("before", "1"), ("after", "2"), ("during", "3")] {
        let out = c.client(&["get", k]);
        assert_eq!(json_line(&out), serde_json::json!({"ok": true, "value": v}));
    }
}

/// With `--lease-reads`, the leader serves linearizable gets on its lease:
/// they answer what was written, and its metrics count them as lease reads.
#[test]
fn lease_reads_answer_gets_and_are_counted() {
    let c = start_with(&["--lease-reads"]);
    // Metrics are served by node 1: make it the leader.
    if c.wait_for_leader() != 1 {
        let out = c.client(&["transfer-leader", "1"]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(c.wait_for_leader(), 1);
    }
    for i in 0..20 {
        let v = i.to_string();
        assert_eq!(code(&c.client(&["put", "k", &v])), 0);
        let out = c.client(&["get", "k"]);
        assert_eq!(
            json_line(&out),
            serde_json::json!({"ok": true, "value": v}),
            "a get after a put"
        );
    }
    let body = contract::http_get(c.metrics_port, "/metrics");
    let count = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{body}"))
    };
    let (lease, rounds) = (count("ha_lease_reads_total"), count("ha_round_reads_total"));
    eprintln!("{lease} gets served on the lease, {rounds} by a round");
    assert!(
        lease >= 10,
        "{lease} of 20 gets were served on the lease ({rounds} by a round)"
    );
}
