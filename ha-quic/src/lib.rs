//! QUIC transport for ha.
//!
//! This crate will carry peer and client traffic over QUIC with mutual TLS.
//! It exports nothing yet: the transport arrives with its own issue, and until
//! then nothing here pretends to work.
