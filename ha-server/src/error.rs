//! Why a server could not start or stopped: one typed error, each variant
//! naming the option (as the command line spells it) that needs fixing.
//!
//! Invariant: every message is one line that starts with the option it is
//! about, so the command line can print it as it is and exit 2.

use std::net::SocketAddr;
use std::path::PathBuf;

use ha_core::storage::DataDirError;
use ha_quic::certs::CertError;

/// What went wrong starting a [`crate::Server`].
#[derive(thiserror::Error)]
pub enum ServeError {
    /// An option is missing or holds a value that cannot work.
    #[error("{option}: {reason}")]
    Invalid {
        /// The option, as the command line spells it (`--peers`).
        option: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An address does not parse or resolve.
    #[error("{option}: '{given}' is not a usable HOST:PORT ({reason})")]
    Address {
        /// The option the address came from.
        option: &'static str,
        /// The address as given.
        given: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A socket could not be bound.
    #[error("{option}: cannot listen on {addr}: {source}; choose a free port")]
    Bind {
        /// `--listen` or `--metrics`.
        option: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node's certificates could not be loaded.
    #[error(
        "--tls-dir: {source}; create certificates with `{program} certs --dir {} --nodes ...` \
         including node {node}", dir.display()
    )]
    Certificates {
        /// The directory.
        dir: PathBuf,
        /// The node whose certificate is missing or bad.
        node: u64,
        /// The program to name in the hint.
        program: String,
        /// Why.
        source: CertError,
    },
    /// `--peers` disagrees with the voters the data directory stores.
    #[error(
        "--peers: {source}; restart with --peers {stored}, or without --peers (then the stored \
         voters are used)"
    )]
    PeersMismatch {
        /// The stored voters, `ID=HOST:PORT,...`.
        stored: String,
        /// The refusal.
        source: DataDirError,
    },
    /// The data directory cannot be used (another type, node or cluster,
    /// damage, a lock held by another process).
    #[error("--data-dir: {0}")]
    DataDir(#[from] DataDirError),
    /// The node did not start: its endpoint (`--listen`), its settings
    /// (`--peers`) or its storage (`--data-dir`).
    #[error("{option}: {0}", option = start_option(.0))]
    Start(#[from] ha_quic::node::StartError),
}

/// The option a failed start is about.
fn start_option(e: &ha_quic::node::StartError) -> &'static str {
    use ha_quic::node::StartError;
    match e {
        StartError::Quic(_) => "--listen",
        StartError::Config(_) => "--peers",
        StartError::DataDir(_)
        | StartError::Node(_)
        | StartError::Log(_)
        | StartError::SingleNodeLog { .. }
        | StartError::Snapshots(_)
        | StartError::Recover(_)
        | StartError::Schema(_) => "--data-dir",
    }
}

ha_core::debug_as_display!(ServeError);

impl ServeError {
    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> ServeError {
        ServeError::Invalid {
            option,
            reason: reason.into(),
        }
    }
}
