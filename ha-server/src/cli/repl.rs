//! The line-at-a-time client every service's `repl` command runs: one
//! client for every line, so a retried command keeps its session and
//! sequence number (exactly once), and one JSON line out for each line
//! in, in order, flushed at once.
//!
//! Owns: [`repl`], [`usage`] and [`MAX_LINE`]. Invariants: no input line
//! is held past [`MAX_LINE`] bytes and its line end (a longer one is read
//! through, dropped and answered as a usage error, nothing sent), nor is
//! one that is not UTF-8 sent; blank lines get no answer (one that is
//! too long gets the usage error); one line end is taken off a line
//! ("\n", then "\r"), no more; the loop ends at the end of input or a
//! read error.

use std::future::Future;
use std::io::Write;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use super::Outcome;

/// The longest input line `repl` takes, in bytes (its newline aside).
pub const MAX_LINE: usize = 64 * 1024;

/// Reads stdin a line at a time and prints, for each line that is not
/// blank, the JSON line of the outcome `answer` gives it. Returns the exit
/// status (0).
pub async fn repl<F, Fut>(answer: F) -> i32
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Outcome>,
{
    lines_to(tokio::io::stdin(), std::io::stdout(), answer).await
}

/// [`repl`] over any input and output.
async fn lines_to<R, W, F, Fut>(input: R, mut out: W, mut answer: F) -> i32
where
    R: AsyncRead + Unpin,
    W: Write,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut input = BufReader::new(input);
    // A line of MAX_LINE bytes with its "\r\n" fits in one read.
    let cap = MAX_LINE as u64 + 2;
    loop {
        let mut buf = Vec::new();
        match (&mut input).take(cap).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return 0,
            Ok(_) => {}
        }
        let whole = buf.ends_with(b"\n");
        if !whole && buf.len() as u64 == cap {
            // Too long: the rest of the line is read through and dropped.
            loop {
                let mut rest = Vec::new();
                match (&mut input).take(cap).read_until(b'\n', &mut rest).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if rest.ends_with(b"\n") => break,
                    Ok(_) => {}
                }
            }
        }
        let mut line = &buf[..];
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        let outcome = if line.len() > MAX_LINE {
            usage_outcome(format!("a line longer than {MAX_LINE} bytes"))
        } else {
            match std::str::from_utf8(line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => answer(text.to_string()).await,
                Err(_) => usage_outcome("a line that is not UTF-8".to_string()),
            }
        };
        let (json, _) = outcome.render();
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }
}

/// The answer to a line `repl` cannot parse (nothing was sent): `why` it
/// cannot, and what it would take.
pub fn usage(line: &str, why: &str) -> Outcome {
    usage_outcome(format!("cannot parse '{line}': {why}"))
}

/// The usage answer, as a line (not [`super::usage_error`], which ends the
/// process).
fn usage_outcome(message: String) -> Outcome {
    Outcome::Done(json!({
        "ok": false,
        "error": "usage",
        "message": message,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8]) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let code = lines_to(input, &mut out, |line| async move {
            Outcome::Done(json!({"ok": true, "value": line}))
        })
        .await;
        assert_eq!(code, 0);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn one_answer_per_line_in_order_blank_lines_skipped() {
        let got = run(b"get a\n\n  \nput a 1\r\nlast").await;
        let values: Vec<&str> = got.iter().map(|v| v["value"].as_str().unwrap()).collect();
        assert_eq!(values, ["get a", "put a 1", "last"]);
    }

    #[tokio::test]
    async fn a_line_past_the_cap_is_a_usage_error_and_the_next_one_is_read() {
        let mut input = vec![b'x'; 3 * MAX_LINE + 7];
        input.extend_from_slice(b"\nget b\n");
        let got = run(&input).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["error"], "usage");
        assert!(got[0]["message"].as_str().unwrap().contains("longer than"));
        assert_eq!(got[1]["value"], "get b");
        // Exactly at the cap is still a line, with either line end; one
        // byte more is not.
        for end in [&b"\n"[..], b"\r\n", b""] {
            let mut input = vec![b'y'; MAX_LINE];
            input.extend_from_slice(end);
            let got = run(&input).await;
            assert_eq!(got[0]["value"].as_str().map(str::len), Some(MAX_LINE));
            let mut input = vec![b'y'; MAX_LINE + 1];
            input.extend_from_slice(end);
            input.extend_from_slice(b"\nnext\n");
            let got = run(&input).await;
            assert_eq!(got[0]["error"], "usage", "{got:?}");
            assert_eq!(got.last().unwrap()["value"], "next", "{got:?}");
        }
    }

    #[tokio::test]
    async fn a_line_that_is_not_utf8_is_a_usage_error_not_a_replacement() {
        let got = run(b"put k \xff\xfe\nget k\n").await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["error"], "usage");
        assert!(got[0]["message"].as_str().unwrap().contains("UTF-8"));
        assert_eq!(got[1]["value"], "get k");
    }
}
