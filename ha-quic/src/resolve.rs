//! Turning a member's or a node's `HOST:PORT` into the socket address to
//! dial.
//!
//! Owns: [`Resolver`], the one way names are resolved for reaching nodes
//! (peers' senders and clients alike), and [`pick_addr`], the one rule for
//! choosing among the addresses a name resolves to.
//!
//! Invariants:
//! 1. A lookup has a deadline ([`RESOLVE_TIMEOUT`]): a stuck resolver never
//!    holds a sender or a client call forever.
//! 2. An IP literal is never looked up: it is its own answer.
//! 3. The system resolver is the default; a test (or an embedder with its
//!    own discovery) substitutes another with [`Resolver::from_fn`], so
//!    addresses that change, as a recreated container's do, are tested
//!    without touching the machine's DNS.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long one lookup may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Of the addresses a name resolves to, the first IPv4 one when `v4` (the
/// first IPv6 one otherwise), or else the first: `localhost` listed as
/// `::1` first still means the address a node bound to `127.0.0.1`
/// listens on. The one rule for every name resolved for reaching nodes.
pub fn pick_addr(addrs: impl IntoIterator<Item = SocketAddr>, v4: bool) -> Option<SocketAddr> {
    let all: Vec<SocketAddr> = addrs.into_iter().collect();
    all.iter()
        .find(|a| a.is_ipv4() == v4)
        .or(all.first())
        .copied()
}

/// The future a lookup returns.
pub type Lookup = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

type LookupFn = dyn Fn(String) -> Lookup + Send + Sync;

/// Resolves `HOST:PORT` text to socket addresses (see the module docs).
#[derive(Clone)]
pub struct Resolver(Arc<LookupFn>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::system()
    }
}

impl Resolver {
    /// The operating system's resolver (`/etc/hosts`, DNS), through tokio.
    pub fn system() -> Resolver {
        Resolver::from_fn(|text| {
            Box::pin(async move { tokio::net::lookup_host(text).await.map(|a| a.collect()) })
        })
    }

    /// A resolver answering with `f` (given the whole `HOST:PORT` text).
    pub fn from_fn(f: impl Fn(String) -> Lookup + Send + Sync + 'static) -> Resolver {
        Resolver(Arc::new(f))
    }

    /// The address to dial for `text` (`HOST:PORT`): an IP literal as it
    /// is, a name resolved within [`RESOLVE_TIMEOUT`] and chosen by
    /// [`pick_addr`] (an IPv4 address preferred when `v4`). The error says
    /// why, in words.
    pub async fn resolve(&self, text: &str, v4: bool) -> Result<SocketAddr, String> {
        let all = self.lookup(text).await?;
        pick_addr(all, v4).ok_or_else(|| format!("{text} resolves to no address"))
    }

    /// Every address `text` (`HOST:PORT`) resolves to, within
    /// [`RESOLVE_TIMEOUT`] (an IP literal as it is; none is an error).
    pub async fn lookup(&self, text: &str) -> Result<Vec<SocketAddr>, String> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Ok(vec![a]);
        }
        match tokio::time::timeout(RESOLVE_TIMEOUT, (self.0)(text.to_string())).await {
            Ok(Ok(addrs)) if addrs.is_empty() => Err(format!("{text} resolves to no address")),
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(e)) => Err(format!("cannot resolve {text}: {e}")),
            Err(_) => Err(format!(
                "cannot resolve {text}: no answer within {RESOLVE_TIMEOUT:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_are_not_looked_up_and_names_are() {
        let r = Resolver::from_fn(|text| {
            Box::pin(async move {
                match text.as_str() {
                    "two.test:7000" => Ok(vec![
                        "[::1]:7000".parse().unwrap(),
                        "127.0.0.2:7000".parse().unwrap(),
                    ]),
                    "none.test:7000" => Ok(Vec::new()),
                    _ => Err(std::io::Error::other("no such name")),
                }
            })
        });
        assert_eq!(
            r.resolve("127.0.0.9:1", true).await.unwrap(),
            "127.0.0.9:1".parse().unwrap()
        );
        assert_eq!(
            r.resolve("two.test:7000", true).await.unwrap(),
            "127.0.0.2:7000".parse().unwrap()
        );
        assert_eq!(
            r.resolve("two.test:7000", false).await.unwrap(),
            "[::1]:7000".parse().unwrap()
        );
        let e = r.resolve("none.test:7000", true).await.unwrap_err();
        assert!(e.contains("no address"), "{e}");
        let e = r.resolve("other.test:7000", true).await.unwrap_err();
        assert!(
            e.contains("no such name") && e.contains("other.test"),
            "{e}"
        );
    }
}
