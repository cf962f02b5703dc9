//! The README's Rust examples, compiled and run as a reader would use them.
//!
//! Each ```rust block of README.md is copied below, verbatim but for its
//! indentation, and `readme_blocks_are_the_ones_compiled_here` fails when a
//! block changes without its copy: an example in the README that no longer
//! compiles, or does something else, is caught here.

/// README block 1: the replicated type.
#[rustfmt::skip]
mod counter {
    use ha_core::{replicated, ApplyContext, Replicated};
    use serde::{Deserialize, Serialize};

    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Counter { value: i64, changed_at_ms: u64 }

    #[replicated]
    impl Counter {
        /// A command (`&mut self`): replicated through the log, applied exactly once.
        pub fn add(&mut self, delta: i64, ctx: &ApplyContext) -> i64 {
            self.value += delta;
            self.changed_at_ms = ctx.time_ms; // leader-stamped: the same on every replica
            self.value
        }
        /// A query (`&self`): a linearizable read, no log entry.
        pub fn get(&self) -> i64 { self.value }
    }
}

use counter::Counter;

/// README block 2: a cluster in one process, used through the client.
#[rustfmt::skip]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cluster_in_one_process_runs() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = ha_quic::LocalCluster::<Counter>::start(3).await?;
    let client = cluster.client();                 // finds the leader itself
    client.add(5).await?;                          // exactly once, even across failovers
    let v = client.get().await?;                   // linearizable (ReadIndex)
    let stale = client.with_consistency(ha_core::Consistency::Stale).get().await?;
    assert_eq!(v, 5);
    assert!(stale <= 5, "a stale read never sees a future: {stale}");
    Ok(())
}

/// README block 3: the operator command line (compiled, not run).
#[allow(dead_code)]
#[rustfmt::skip]
mod command_line {
    use super::Counter;
    fn main() { ha_server::cli::main::<Counter>() }
}

/// README block 4: a node from Rust (compiled, not run: it binds fixed
/// ports and waits for a signal).
#[allow(dead_code)]
#[rustfmt::skip]
async fn a_node_from_rust() -> Result<(), Box<dyn std::error::Error>> {
    let server = ha_server::Server::<Counter>::builder()
        .id(1)
        .listen("127.0.0.1:7001")
        .peers(["1=127.0.0.1:7001", "2=127.0.0.1:7002", "3=127.0.0.1:7003"])
        .data_dir("data-1")
        .tls_dir("tls")
        .http("127.0.0.1:9101")            // /metrics, /healthz, /readyz
        .start()
        .await?;                           // ServeError names the option to fix
    server.run_until_signal().await?;      // SIGINT/SIGTERM: a clean shutdown
    Ok(())
}

/// The README's ```toml dependency lines: the crate names they declare.
fn readme_dependencies() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let mut names = Vec::new();
    let mut inside = false;
    for line in readme.lines() {
        match line.trim() {
            l if l.starts_with("```toml") => inside = true,
            "```" => inside = false,
            l if inside => {
                if let Some((name, _)) = l.split_once('=') {
                    names.push(name.trim().replace('-', "_"));
                }
            }
            _ => {}
        }
    }
    names
}

/// Every crate the README's Rust examples name is in its `Cargo.toml`
/// lines, so a reader copying both gets a crate that builds.
#[test]
fn readme_dependencies_name_every_crate_its_examples_use() {
    let declared = readme_dependencies();
    let local = ["std", "core", "alloc", "self", "super", "crate"];
    for block in readme_blocks() {
        for line in &block {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("::") {
                let root: String = code[..at]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let preceded_by_path = code[..at - root.len()].ends_with("::")
                    || code[..at - root.len()].ends_with('<');
                if root.is_empty()
                    || preceded_by_path
                    || !root.starts_with(|c: char| c.is_ascii_lowercase())
                    || local.contains(&root.as_str())
                {
                    continue;
                }
                assert!(
                    declared.contains(&root),
                    "the README's examples use `{root}` but its Cargo.toml lines ({declared:?}) do not declare it"
                );
            }
        }
    }
}

/// The README's ```rust blocks, each as trimmed lines.
fn readme_blocks() -> Vec<Vec<String>> {
    let readme = include_str!("../../README.md");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```rust") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => b.push(l.trim_end().to_string()),
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn readme_blocks_are_the_ones_compiled_here() {
    let here: Vec<String> = include_str!("readme.rs")
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    let blocks = readme_blocks();
    assert_eq!(
        blocks.len(),
        4,
        "a README block was added or removed: copy it here"
    );
    for block in blocks {
        let lines: Vec<String> = block.iter().map(|l| l.trim().to_string()).collect();
        let found = here.windows(lines.len()).any(|w| w == lines.as_slice());
        assert!(
            found,
            "this README block is not compiled here (copy it, verbatim but for indentation):\n{}",
            block.join("\n")
        );
    }
}
