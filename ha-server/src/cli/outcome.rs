//! What a client command ends in, and the one JSON line and exit status
//! for each outcome, in one place: done 0, not applied (or a
//! compare-and-set mismatch) 1, unknown 3.

use serde_json::{Value, json};

/// What a client command ends in.
pub enum Outcome {
    /// Done; the JSON line.
    Done(Value),
    /// A compare-and-set saw another value (the one it saw).
    Mismatch(Option<String>),
    /// An error.
    Failed(ha_core::Error),
}

impl Outcome {
    /// The JSON line and the exit status.
    pub fn render(self) -> (Value, i32) {
        match self {
            Outcome::Done(v) => (v, 0),
            Outcome::Mismatch(cur) => (json!({"ok": false, "error": "mismatch", "value": cur}), 1),
            Outcome::Failed(e) if e.is_unknown() => (
                json!({"ok": null, "error": "unknown", "message": e.to_string()}),
                3,
            ),
            Outcome::Failed(e) => {
                let code = match e {
                    ha_core::Error::Query(_) => "unavailable",
                    ha_core::Error::Failed(_) => "failed",
                    ha_core::Error::Busy(_) => "busy",
                    _ => "not_applied",
                };
                (
                    json!({"ok": false, "error": code, "message": e.to_string()}),
                    1,
                )
            }
        }
    }

    /// `Done({"ok":true,"value":v})` for a result, `Failed` for an error.
    pub fn value<V: serde::Serialize>(r: Result<V, ha_core::Error>) -> Outcome {
        match r {
            Ok(v) => Outcome::Done(json!({"ok": true, "value": v})),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// Prints the outcome's JSON line on stdout; returns its exit status.
pub fn emit(o: Outcome) -> i32 {
    let (line, code) = o.render();
    println!("{line}");
    code
}
