//! The register workload: clients run get, put, cas and del on a few keys
//! through `ha-kv repl` (the shipped client, one process per client), and
//! every call and answer is recorded for the checker.
//!
//! Owns: the client processes and the history they produce. Invariants:
//! every value written is distinct (client and sequence number), so a
//! read names the one write it saw; an answer the contract calls
//! "certainly not applied" leaves the history, one whose outcome is
//! unknown stays in it with no return; times are microseconds since the
//! run began, taken just before the request is written and just after the
//! answer is read, so each operation's real interval contains its effect.

use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use ha_core::rng::SplitMix64;
use serde_json::Value;

use crate::lincheck::{KvInput, KvOutput, Operation};

/// One recorded operation.
pub type KvOp = Operation<KvInput, KvOutput>;

/// Counts of a client's outcomes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcomes {
    /// Answered (done, or a cas that did not match).
    pub ok: u64,
    /// Certainly not applied (left out of the history).
    pub not_applied: u64,
    /// Outcome unknown (kept with no return).
    pub unknown: u64,
    /// Of `ok`, writes acknowledged as done (put, del, cas that wrote).
    pub writes: u64,
}

impl std::ops::AddAssign for Outcomes {
    fn add_assign(&mut self, o: Outcomes) {
        self.ok += o.ok;
        self.not_applied += o.not_applied;
        self.unknown += o.unknown;
        self.writes += o.writes;
    }
}

/// A client: one `ha-kv repl` process.
pub struct Repl {
    child: Child,
    stdin: ChildStdin,
    /// Lines of its output, read by a thread of their own so that an
    /// answer that never comes is a timeout here, not a hang.
    lines: std::sync::mpsc::Receiver<io::Result<String>>,
    /// How long an answer may take: three request timeouts and 5 s.
    patience: Duration,
}

impl Repl {
    /// Starts `ha-kv repl` against the cluster.
    pub fn start(bin: &Path, cluster: &str, tls: &Path, timeout_ms: u64) -> io::Result<Repl> {
        let mut child = Command::new(bin)
            .args(["repl", "--cluster", cluster, "--tls-dir"])
            .arg(tls)
            .args(["--timeout-ms", &timeout_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                let read = out.read_line(&mut line).map(|n| (n, line));
                let end = !matches!(read, Ok((n, _)) if n > 0);
                if tx.send(read.map(|(_, l)| l)).is_err() || end {
                    return;
                }
            }
        });
        let patience = Duration::from_millis(timeout_ms.saturating_mul(3).saturating_add(5000));
        Ok(Repl {
            child,
            stdin,
            lines,
            patience,
        })
    }

    /// The process id (to kill a client that stopped answering).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line and reads its one JSON answer.
    pub fn call(&mut self, line: &str) -> io::Result<Value> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let answer = match self.lines.recv_timeout(self.patience) {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(io::Error::other(format!(
                    "no answer to {line:?} within {} ms",
                    self.patience.as_millis()
                )));
            }
        };
        if answer.is_empty() {
            return Err(io::Error::other("the client process closed its output"));
        }
        serde_json::from_str(&answer)
            .map_err(|e| io::Error::other(format!("not a JSON line ({e}): {answer:?}")))
    }
}

impl Drop for Repl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command line for `input`.
fn line(input: &KvInput) -> String {
    match *input {
        KvInput::Get { key } => format!("get k{key}"),
        KvInput::Put { key, value } => format!("put k{key} {value}"),
        KvInput::Del { key } => format!("del k{key}"),
        KvInput::Cas { key, expected, new } => match expected {
            Some(e) => format!("cas k{key} {e} {new}"),
            None => format!("cas k{key} --absent {new}"),
        },
    }
}

/// A value as the checker knows it: the decimal number written, or a
/// token no write uses (so a value nobody wrote fails the check).
fn value(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.parse().unwrap_or(u64::MAX - 1))),
        other => Err(format!(
            "a value that is neither a string nor null: {other}"
        )),
    }
}

/// What an answer means: `Ok(Some)` an answer for the history, `Ok(None)`
/// certainly not applied, `Err` a broken contract. An unknown outcome is
/// `Ok(Some(None))`.
#[allow(clippy::type_complexity)]
fn outcome(input: &KvInput, answer: &Value) -> Result<Option<Option<KvOutput>>, String> {
    let broken = || {
        format!(
            "an answer outside the contract to {:?}: {answer}",
            line(input)
        )
    };
    // A get's value and a mismatch's current value must be there (null
    // for absent); a missing one is not read as absent.
    let field = |name: &str| answer.get(name).ok_or_else(broken).and_then(value);
    match answer.get("ok") {
        Some(Value::Bool(true)) => Ok(Some(Some(match input {
            KvInput::Get { .. } => KvOutput::Value(field("value")?),
            KvInput::Cas { .. } => KvOutput::Cas(Ok(())),
            KvInput::Put { .. } | KvInput::Del { .. } => KvOutput::Done,
        }))),
        Some(Value::Bool(false)) => match answer.get("error").and_then(Value::as_str) {
            Some("mismatch") if matches!(input, KvInput::Cas { .. }) => {
                Ok(Some(Some(KvOutput::Cas(Err(field("value")?)))))
            }
            Some("mismatch") => Err(broken()),
            Some("usage") => Err(format!("the client refused {:?}: {answer}", line(input))),
            Some(_) => Ok(None),
            None => Err(broken()),
        },
        Some(Value::Null) => Ok(Some(None)),
        _ => Err(broken()),
    }
}

/// One client's part of a run.
pub struct Client {
    /// Its id in the history.
    pub id: u64,
    /// Its choices.
    pub rng: SplitMix64,
    /// Keys to pick from.
    pub keys: u64,
    /// The values it last saw, per key (cas expects them).
    pub last_seen: Vec<Option<u64>>,
    /// Writes so far (values are `(id + 1) << 32 | n`).
    pub writes: u64,
}

impl Client {
    /// A client with id `id`, seeded from the run's seed.
    pub fn new(id: u64, seed: u64, keys: u64) -> Client {
        Client {
            id,
            // Each client's stream starts from a mix of (seed, id), so no
            // two clients' streams are shifted copies of each other.
            rng: SplitMix64::new(
                SplitMix64::new(seed).next_u64() ^ SplitMix64::new(!id).next_u64().rotate_left(17),
            ),
            keys,
            last_seen: vec![None; keys as usize],
            writes: 0,
        }
    }

    /// A value no other write of the run uses.
    pub fn next_value(&mut self) -> u64 {
        self.writes += 1;
        ((self.id + 1) << 32) | self.writes
    }

    /// The next operation.
    pub fn choose(&mut self) -> KvInput {
        let key = self.rng.range(0, self.keys);
        match self.rng.range(0, 10) {
            0..=3 => KvInput::Get { key },
            4..=5 => KvInput::Put {
                key,
                value: self.next_value(),
            },
            6..=8 => KvInput::Cas {
                key,
                expected: self.last_seen[key as usize],
                new: self.next_value(),
            },
            _ => KvInput::Del { key },
        }
    }

    /// Runs `input` through `repl`, appending it to `history` unless it
    /// certainly did not apply.
    pub fn run(
        &mut self,
        repl: &mut Repl,
        input: KvInput,
        start: Instant,
        history: &mut Vec<KvOp>,
        counts: &mut Outcomes,
    ) -> Result<(), String> {
        let call = micros(start);
        let answer = repl
            .call(&line(&input))
            .map_err(|e| format!("client {}: {e}", self.id))?;
        let ret = micros(start);
        let Some(output) = outcome(&input, &answer)? else {
            counts.not_applied += 1;
            return Ok(());
        };
        match &output {
            Some(KvOutput::Value(v) | KvOutput::Cas(Err(v))) => {
                if let Some(seen) = self.last_seen.get_mut(input.key() as usize) {
                    *seen = *v;
                }
                counts.ok += 1;
            }
            Some(_) => {
                counts.ok += 1;
                counts.writes += 1;
            }
            None => counts.unknown += 1,
        }
        history.push(Operation {
            client: self.id,
            call,
            ret: output.map(|o| (ret, o)),
            input,
        });
        Ok(())
    }
}

/// Microseconds since `start`.
pub fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Runs one client until `until` or until `stop` is set, then returns
/// its history (with the error that ended it early, if one did: the
/// history up to it is kept for the record).
pub fn client_loop(
    mut client: Client,
    mut repl: Repl,
    start: Instant,
    until: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> (Vec<KvOp>, Outcomes, Option<String>) {
    let mut history = Vec::new();
    let mut counts = Outcomes::default();
    while start.elapsed() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let input = client.choose();
        if let Err(e) = client.run(&mut repl, input, start, &mut history, &mut counts) {
            return (history, counts, Some(e));
        }
    }
    (history, counts, None)
}

/// One line of the history file: what was called and answered.
pub fn history_line(op: &KvOp) -> String {
    serde_json::json!({
        "client": op.client,
        "call_us": op.call,
        "ret_us": op.ret.as_ref().map(|(t, _)| *t),
        "input": line(&op.input),
        "output": op.ret.as_ref().map(|(_, o)| format!("{o:?}")),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_map_to_the_history_as_the_contract_says() {
        let get = KvInput::Get { key: 1 };
        let put = KvInput::Put { key: 1, value: 7 };
        let cas = KvInput::Cas {
            key: 1,
            expected: None,
            new: 8,
        };
        let out = |i: &KvInput, v: Value| outcome(i, &v);
        assert_eq!(
            out(&get, json!({"ok": true, "value": "7"})),
            Ok(Some(Some(KvOutput::Value(Some(7)))))
        );
        assert_eq!(
            out(&get, json!({"ok": true, "value": null})),
            Ok(Some(Some(KvOutput::Value(None))))
        );
        // A value no write wrote cannot pass as any written one.
        assert_eq!(
            out(&get, json!({"ok": true, "value": "x"})),
            Ok(Some(Some(KvOutput::Value(Some(u64::MAX - 1)))))
        );
        assert_eq!(
            out(&put, json!({"ok": true})),
            Ok(Some(Some(KvOutput::Done)))
        );
        assert_eq!(
            out(&cas, json!({"ok": true})),
            Ok(Some(Some(KvOutput::Cas(Ok(())))))
        );
        assert_eq!(
            out(
                &cas,
                json!({"ok": false, "error": "mismatch", "value": "3"})
            ),
            Ok(Some(Some(KvOutput::Cas(Err(Some(3))))))
        );
        // Certainly not applied: out of the history. Unknown: no return.
        assert_eq!(
            out(
                &put,
                json!({"ok": false, "error": "not_leader", "message": "m"})
            ),
            Ok(None)
        );
        assert_eq!(
            out(
                &put,
                json!({"ok": null, "error": "timeout", "message": "m"})
            ),
            Ok(Some(None))
        );
        // A refused line, no "ok", a value of the wrong type, a get or a
        // mismatch without its value, a mismatch of anything but a cas, or
        // a refusal without a code break the contract.
        assert!(out(&put, json!({"ok": false, "error": "usage", "message": "m"})).is_err());
        assert!(out(&put, json!({"value": "1"})).is_err());
        assert!(out(&get, json!({"ok": true, "value": 5})).is_err());
        assert!(out(&get, json!({"ok": true})).is_err());
        assert!(out(&cas, json!({"ok": false, "error": "mismatch"})).is_err());
        assert!(
            out(
                &put,
                json!({"ok": false, "error": "mismatch", "value": "3"})
            )
            .is_err()
        );
        assert!(out(&put, json!({"ok": false, "message": "m"})).is_err());
    }

    #[test]
    fn command_lines_are_the_repl_grammar() {
        assert_eq!(line(&KvInput::Get { key: 3 }), "get k3");
        assert_eq!(line(&KvInput::Put { key: 3, value: 9 }), "put k3 9");
        assert_eq!(line(&KvInput::Del { key: 3 }), "del k3");
        let cas = |expected| KvInput::Cas {
            key: 3,
            expected,
            new: 4,
        };
        assert_eq!(line(&cas(None)), "cas k3 --absent 4");
        assert_eq!(line(&cas(Some(2))), "cas k3 2 4");
    }

    #[test]
    fn clients_write_distinct_values_and_choose_by_seed() {
        let mut a = Client::new(0, 5, 4);
        let mut b = Client::new(1, 5, 4);
        let (va, vb) = (a.next_value(), b.next_value());
        assert_ne!(va, vb);
        assert_ne!(a.next_value(), va);
        let picks = |seed| {
            let mut c = Client::new(3, seed, 4);
            (0..20).map(|_| c.choose()).collect::<Vec<_>>()
        };
        assert_eq!(picks(9), picks(9));
        assert_ne!(picks(9), picks(10));
    }
}
