//! The agent's HTTP/2 `:authority` rewriter and its HPACK decoder, on whatever a local process
//! sends to the agent's socket: an answer or a closed connection, never a panic, and what h2
//! reads is well-formed (no dynamic-table use, valid authorities only).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wimse_agent::fuzz_authority_rewriter(data));
