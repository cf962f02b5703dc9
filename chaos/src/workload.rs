//! What a run needs of a workload, and what every workload shares: the
//! client processes (`<service> repl`, one per client, one JSON answer
//! per line), the run of one operation into the history, and the counts
//! of outcomes.
//!
//! Owns: [`Workload`], [`Repl`], [`Outcomes`], [`run_op`] and
//! [`client_loop`]. Invariants: an answer the contract calls "certainly
//! not applied" leaves the history, one whose outcome is unknown stays in
//! it with no return; times are microseconds since the run began, taken
//! just before the request is written and just after the answer is read,
//! so each operation's real interval contains its effect.

use std::fmt::Debug;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lincheck::{Model, Operation, Verdict};

/// The checker's verdict as a run reports it.
pub fn verdict(v: Verdict) -> Result<(), String> {
    match v {
        Verdict::Linearizable => Ok(()),
        Verdict::NotLinearizable(f) => Err(f.to_string()),
        Verdict::Unknown(why) => Err(format!("the checker gave up: {why}")),
    }
}

/// Whether an `"ok":false` answer's `error` code means the command
/// certainly did not take effect (`ha_core::Error::is_not_applied`:
/// refused before it could reach a log, or a query that found no
/// leader). Every other code breaks a workload's contract: `failed` (the
/// command ran on every replica and panicked, keeping what it changed)
/// cannot happen to these services' methods, and a code this list does
/// not know must not be taken for "not applied".
pub fn not_applied_code(code: &str) -> bool {
    matches!(code, "not_applied" | "unavailable" | "busy")
}

/// Client `id`'s own stream of choices, mixed from (`seed`, `id`) so no
/// two clients' streams are shifted copies of each other; `salt` keeps
/// each workload's streams apart.
pub fn client_rng(seed: u64, id: u64, salt: u32) -> ha_core::rng::SplitMix64 {
    use ha_core::rng::SplitMix64;
    SplitMix64::new(
        SplitMix64::new(seed).next_u64() ^ SplitMix64::new(!id).next_u64().rotate_left(salt),
    )
}

/// What `answer` to the command `line` means, for a service whose done
/// answer carries a value that `value` reads (see [`Workload::outcome`]):
/// done with its value, unknown (`"ok":null`), certainly not applied (a
/// [`not_applied_code`]), or outside the contract (anything else, a
/// refused line included).
#[allow(clippy::type_complexity)]
pub fn valued_outcome<O>(
    line: &str,
    answer: &Value,
    value: impl FnOnce(&Value) -> Option<O>,
) -> Result<Option<Option<O>>, String> {
    let broken = || format!("an answer outside the contract to {line:?}: {answer}");
    match answer.get("ok") {
        Some(Value::Bool(true)) => {
            let v = answer.get("value").and_then(value).ok_or_else(broken)?;
            Ok(Some(Some(v)))
        }
        Some(Value::Bool(false)) => match answer.get("error").and_then(Value::as_str) {
            Some("usage") => Err(format!("the client refused {line:?}: {answer}")),
            Some(code) if not_applied_code(code) => Ok(None),
            _ => Err(broken()),
        },
        Some(Value::Null) => Ok(Some(None)),
        _ => Err(broken()),
    }
}

/// A history entry of workload `W`.
pub type Op<W> = Operation<In<W>, Out<W>>;
/// Workload `W`'s operation inputs.
pub type In<W> = <<W as Workload>::Model as Model>::Input;
/// Workload `W`'s operation outputs.
pub type Out<W> = <<W as Workload>::Model as Model>::Output;

/// A workload: what its clients ask of the service (through its `repl`),
/// how an answer reads, what the final phase writes and reads, and how
/// its history is checked.
pub trait Workload: Clone + Send + 'static {
    /// The checker's model of the service.
    type Model: Model<Input: Send + 'static, Output: Send + 'static>;
    /// One client's own state (its seeded choices, what it saw last).
    type Client: Send + 'static;

    /// Client `id`'s state, seeded from (`seed`, `id`).
    fn client(&self, id: u64, seed: u64) -> Self::Client;
    /// The next operation client `c` runs.
    fn choose(&self, c: &mut Self::Client) -> In<Self>;
    /// The `repl` line for `input`.
    fn line(input: &In<Self>) -> String;
    /// What `answer` to `input` means: `Ok(Some(Some))` an answer for the
    /// history, `Ok(Some(None))` an unknown outcome, `Ok(None)` certainly
    /// not applied, `Err` an answer outside the contract.
    #[allow(clippy::type_complexity)]
    fn outcome(input: &In<Self>, answer: &Value) -> Result<Option<Option<Out<Self>>>, String>;
    /// Notes an answer in the client's state; whether it was a write done.
    fn answered(c: &mut Self::Client, input: &In<Self>, output: &Out<Self>) -> bool;
    /// How many writes the final phase makes before restarting every
    /// node.
    fn canaries(&self) -> u64;
    /// The `k`-th of those writes (below [`Workload::canaries`]), a fresh
    /// input for each attempt (they are made until one is done).
    fn canary(&self, c: &mut Self::Client, k: u64) -> In<Self>;
    /// The reads after that restart (each made until answered).
    fn final_reads(&self) -> Vec<In<Self>>;
    /// Checks a whole history: `Err` says what is wrong with it (see
    /// [`verdict`]).
    fn check(&self, history: &[Op<Self>]) -> Result<(), String>;
}

/// Counts of a client's outcomes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcomes {
    /// Answered (done, or an answer that says what was seen, such as a
    /// cas that did not match).
    pub ok: u64,
    /// Certainly not applied (left out of the history).
    pub not_applied: u64,
    /// Outcome unknown (kept with no return).
    pub unknown: u64,
    /// Of `ok`, writes acknowledged as done ([`Workload::answered`]: a
    /// put, del or cas that wrote; an add; a transfer that moved money).
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

/// The longest answer line a client takes (bytes, newline included).
pub const MAX_ANSWER: usize = 1 << 20;

/// A client: one `<service> repl` process (ha-kv, ha-counter, ha-bank).
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
    /// Starts `BIN repl` against the cluster.
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
                // No line longer than the cap is taken in whole: the
                // client is cut off there (an answer that long is outside
                // every contract).
                let mut bytes = Vec::new();
                let read = (&mut out)
                    .take(MAX_ANSWER as u64 + 1)
                    .read_until(b'\n', &mut bytes)
                    .and_then(|n| {
                        if n > MAX_ANSWER {
                            return Err(io::Error::other(format!(
                                "an answer longer than {MAX_ANSWER} bytes"
                            )));
                        }
                        String::from_utf8(bytes)
                            .map(|line| (n, line))
                            .map_err(|e| io::Error::other(format!("an answer not in UTF-8: {e}")))
                    });
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

/// Runs `input` through `repl`, appending it to `history` unless it
/// certainly did not apply.
pub fn run_op<W: Workload>(
    id: u64,
    client: &mut W::Client,
    repl: &mut Repl,
    input: In<W>,
    start: Instant,
    history: &mut Vec<Op<W>>,
    counts: &mut Outcomes,
) -> Result<(), String> {
    let call = micros(start);
    let answer = repl
        .call(&W::line(&input))
        .map_err(|e| format!("client {id}: {e}"))?;
    let ret = micros(start);
    let Some(output) = W::outcome(&input, &answer)? else {
        counts.not_applied += 1;
        return Ok(());
    };
    match &output {
        Some(out) => {
            counts.ok += 1;
            if W::answered(client, &input, out) {
                counts.writes += 1;
            }
        }
        None => counts.unknown += 1,
    }
    history.push(Operation {
        client: id,
        call,
        ret: output.map(|o| (ret, o)),
        input,
    });
    Ok(())
}

/// Microseconds since `start`.
pub fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Runs client `id` until `until` or until `stop` is set, then returns
/// its history (with the error that ended it early, if one did: the
/// history up to it is kept for the record).
pub fn client_loop<W: Workload>(
    w: W,
    id: u64,
    mut client: W::Client,
    mut repl: Repl,
    start: Instant,
    until: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> (Vec<Op<W>>, Outcomes, Option<String>) {
    let mut history = Vec::new();
    let mut counts = Outcomes::default();
    while start.elapsed() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let input = w.choose(&mut client);
        if let Err(e) = run_op::<W>(
            id,
            &mut client,
            &mut repl,
            input,
            start,
            &mut history,
            &mut counts,
        ) {
            return (history, counts, Some(e));
        }
    }
    (history, counts, None)
}

/// One line of the history file: what was called and answered.
pub fn history_line<W: Workload>(op: &Op<W>) -> String {
    serde_json::json!({
        "client": op.client,
        "call_us": op.call,
        "ret_us": op.ret.as_ref().map(|(t, _)| *t),
        "input": W::line(&op.input),
        "output": op.ret.as_ref().map(|(_, o)| format!("{o:?}")),
    })
    .to_string()
}

/// Writes `history` to `path`, one JSON line per operation.
pub fn write_history<W: Workload>(path: &Path, history: &[Op<W>]) -> io::Result<()> {
    let mut f = io::BufWriter::new(std::fs::File::create(path)?);
    for op in history {
        writeln!(f, "{}", history_line::<W>(op))?;
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose answer runs past [`MAX_ANSWER`] is cut off with an
    /// error, not read into memory whole; a short one still parses.
    #[test]
    fn an_answer_past_the_cap_is_an_error_not_an_allocation() {
        let dir = std::env::temp_dir().join(format!("ha-chaos-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("fake-service");
        // `repl`: one short JSON answer, then one line of 3 MiB.
        std::fs::write(
            &script,
            "#!/bin/sh\nread _l; echo '{\"ok\":true}'\nread _l; head -c 3145728 /dev/zero | tr '\\0' a; echo\n",
        )
        .unwrap();
        let mut perm = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&script, perm).unwrap();
        // A script just written may be busy for a moment (another test's
        // fork holding it open for writing): retried, not failed.
        let mut tries = 0;
        let mut repl = loop {
            match Repl::start(&script, "c", &dir, 100) {
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                started => break started.expect("it starts"),
            }
        };
        assert_eq!(repl.call("get 1").unwrap(), serde_json::json!({"ok": true}));
        let e = repl.call("get 2").expect_err("a 3 MiB line");
        assert!(e.to_string().contains("longer than"), "{e}");
        drop(repl);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
