//! Where a client reaches a node.
//!
//! Owns: [`NodeAddr`], the `HOST:PORT` a client dials, kept as text: the
//! host (a DNS name or an IP address) is resolved when a connection is
//! made, so a node that comes back at a new address under its name is
//! found again, and it is the name the node's certificate must carry, so a
//! client checks it reached the node it meant.
//!
//! Invariant: a `NodeAddr` always passes
//! [`check_addr`](crate::raft::check_addr) (printable ASCII, at most
//! [`MAX_ADDR_BYTES`](crate::raft::MAX_ADDR_BYTES), a port from 1 to
//! 65535, IPv6 in brackets, not an unspecified address), whether it came
//! from the user or from a node's answer.

use std::net::SocketAddr;

/// A node's `HOST:PORT` as a client dials it (see the module docs).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr(String);

impl NodeAddr {
    /// `text` if it is a valid `HOST:PORT`; why not otherwise. Kept in
    /// lower case (DNS names are case-insensitive: one node, one entry).
    pub fn parse(text: &str) -> Result<NodeAddr, String> {
        crate::raft::check_addr(text)?;
        Ok(NodeAddr(text.to_ascii_lowercase()))
    }

    /// The text (lower-cased).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host: a DNS name, or an IP address (IPv6 without its
    /// brackets). It is what the node's certificate must name.
    pub fn host(&self) -> &str {
        let host = self.0.rsplit_once(':').map_or(self.0.as_str(), |(h, _)| h);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }
}

impl From<SocketAddr> for NodeAddr {
    fn from(a: SocketAddr) -> NodeAddr {
        NodeAddr(a.to_string())
    }
}

impl std::str::FromStr for NodeAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<NodeAddr, String> {
        NodeAddr::parse(s)
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_split_into_host_and_port() {
        let a = NodeAddr::parse("ha-kv-0.ha-kv.default.svc:7000").unwrap();
        assert_eq!((a.host(), a.port()), ("ha-kv-0.ha-kv.default.svc", 7000));
        assert_eq!(a.socket_addr(), None);
        assert_eq!(
            NodeAddr::parse("DB-1.Example:7").unwrap(),
            NodeAddr::parse("db-1.example:7").unwrap()
        );
        let a = NodeAddr::parse("[::1]:9").unwrap();
        assert_eq!((a.host(), a.port()), ("::1", 9));
        assert_eq!(a.socket_addr(), Some("[::1]:9".parse().unwrap()));
        let a = NodeAddr::from("10.1.2.3:7001".parse::<SocketAddr>().unwrap());
        assert_eq!((a.host(), a.port()), ("10.1.2.3", 7001));
        for bad in ["", "host", "host:0", "0.0.0.0:1", "::1:7", "[h]:1", "a b:1"] {
            assert!(NodeAddr::parse(bad).is_err(), "{bad:?}");
        }
    }
}
