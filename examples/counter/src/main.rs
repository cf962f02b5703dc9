//! `ha-counter`: the counter example service.
//!
//! Not yet implemented: it needs the transport and the macros. It says so and
//! exits with status 2 rather than pretending to run.

fn main() {
    eprintln!(
        "ha-counter: not yet supported in this version of ha \
         (the QUIC transport and the macros have not landed yet)"
    );
    std::process::exit(2);
}
