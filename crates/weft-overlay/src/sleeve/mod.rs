//! Sleeve: Weave's userspace UDP encapsulation (UDP 6783), wire-compatible
//! with Weave Net 2.8.
//!
//! - [`codec`]: the datagram format, batching, special frames, encryption;
//! - [`replay`]: the per-channel replay window of encrypted sleeve;
//! - [`forwarder`]: the per-connection state machine (heartbeats, PMTU
//!   discovery, fragmentation test, forwarding decisions).

pub mod codec;
pub mod forwarder;
pub mod replay;

pub use codec::{
    classify_special, decode_frames, parse_sender, CodecError, DatagramBuilder, FrameIter,
    SleeveDecryptor, SleeveEncryptor, SleeveFrame, Special,
};
pub use forwarder::{
    ForwardDrop, ForwardOutcome, ForwarderError, ForwarderParams, ForwarderStats, SleeveAction,
    SleeveConfig, SleeveForwarder,
};
pub use replay::{ReplayError, ReplayWindow};
