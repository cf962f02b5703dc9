//! The replay check: a command that is not deterministic is reported, and
//! hash collections are not mistaken for one.

use super::*;

/// Reads a global: the same command gives another answer on every run.
pub(super) static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A type whose one command is not deterministic.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Leaky {
    last: u64,
}

#[replicated]
impl Leaky {
    /// Not deterministic, and no syntax says so.
    pub fn draw(&mut self) -> u64 {
        self.last = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.last
    }
    /// The same, claiming only that an iteration order cannot matter: the
    /// replay still checks it.
    #[replicated(allow(hash_iteration))]
    pub fn draw_claimed(&mut self) -> u64 {
        self.last = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.last
    }
    /// The same, with non-determinism allowed: never run twice by the check.
    #[replicated(allow(io))]
    pub fn draw_allowed(&mut self) -> u64 {
        self.last = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.last
    }
}

/// Applies `Leaky::draw` as command `seq` of `session`, at index `1 + seq`.
pub(super) fn draw(s: &mut Sessions<Leaky>, session: u64, seq: u64) -> CommandOutcome {
    let c = in_session(session, seq, seq, 10, &LeakyCommand::Draw {});
    s.apply_log_command(LogIndex(1 + seq), Term(1), c)
}

/// The replay check runs a sampled command again on a copy of the state and
/// reports a command that is not deterministic; a deterministic one passes.
#[test]
fn the_replay_check_reports_a_command_that_is_not_deterministic() {
    let mut s = Sessions::<Leaky>::new().with_determinism_check(1);
    let session = open_session(&mut s, 1, 10);
    for seq in 1..=3 {
        assert!(matches!(
            draw(&mut s, session, seq),
            CommandOutcome::Applied(_)
        ));
    }
    assert_eq!(s.divergences(), 3);

    let mut d = Sessions::<Counter>::new().with_determinism_check(1);
    let c = open_session(&mut d, 1, 10);
    for seq in 1..=3 {
        applied(d.apply_log_command(LogIndex(1 + seq), Term(1), cmd(c, seq, seq, 10, 2)));
    }
    assert_eq!(d.divergences(), 0);
    // Sampling by index: every 2nd index only.
    let mut e = Sessions::<Leaky>::new().with_determinism_check(2);
    let session = open_session(&mut e, 1, 10);
    for seq in 1..=4 {
        draw(&mut e, session, seq);
    }
    assert_eq!(e.divergences(), 2);

    // A method that allowed non-determinism is not replayed (it may do IO).
    let mut f = Sessions::<Leaky>::new().with_determinism_check(1);
    let session = open_session(&mut f, 1, 10);
    let before = DRAWS.load(std::sync::atomic::Ordering::Relaxed);
    let c = in_session(session, 1, 1, 10, &LeakyCommand::DrawAllowed {});
    f.apply_log_command(LogIndex(2), Term(1), c);
    assert_eq!(f.divergences(), 0);
    let c = in_session(session, 2, 2, 10, &LeakyCommand::DrawClaimed {});
    f.apply_log_command(LogIndex(3), Term(1), c);
    assert_eq!(f.divergences(), 1, "allow(hash_iteration) is still checked");
    assert_eq!(
        DRAWS.load(std::sync::atomic::Ordering::Relaxed),
        before + 3,
        "draw_allowed run once, draw_claimed twice"
    );
}

/// A state of hash collections: a copy restored from a snapshot iterates
/// them in another order, which the replay check must not take for a
/// divergence (it compares canonical encodings).
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Indexed {
    by_name: std::collections::HashMap<String, u64>,
    seen: std::collections::HashSet<u64>,
}

#[replicated]
impl Indexed {
    /// Inserts, and answers with a copy of the whole map.
    pub fn put(&mut self, name: String, n: u64) -> std::collections::HashMap<String, u64> {
        self.by_name.insert(name, n);
        self.seen.insert(n);
        self.by_name.clone()
    }
}

#[test]
fn the_replay_check_sees_no_divergence_in_hash_collections() {
    let mut s = Sessions::<Indexed>::new().with_determinism_check(1);
    let session = open_session(&mut s, 1, 10);
    for seq in 1..=40u64 {
        let put = IndexedCommand::Put {
            name: format!("key-{seq}"),
            n: seq,
        };
        let c = in_session(session, seq, seq, 10, &put);
        assert!(matches!(
            s.apply_log_command(LogIndex(1 + seq), Term(1), c),
            CommandOutcome::Applied(_)
        ));
    }
    assert_eq!(s.divergences(), 0);
    // The HashSet shows as differences in order only (said once, counted).
    assert!(s.order_only_differences() > 0);
}
