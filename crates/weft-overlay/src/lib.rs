//! Sans-IO overlay logic of Weft's data plane.
//!
//! Each mesh connection to a peer runs two overlays in parallel, as Weave's
//! `OverlaySwitch` does, each with its own heartbeat:
//!
//! - **fastdp** ([`fastdp`]): the kernel VXLAN device on UDP 6784 moves the
//!   frames; userspace only proves the path with full-size DF heartbeats sent
//!   through the device and programs FDB flood entries for peers whose fast
//!   path is healthy. Advertised as `weft-vxlan`, so Weave peers never use it.
//! - **sleeve** ([`sleeve`]): Weave-compatible userspace UDP encapsulation on
//!   6783, with NaCl encryption on untrusted connections.
//!
//! The [`switch`] decides per connection which overlay serves the peer (fast
//! path when established and healthy, else sleeve) and why, and frames the
//! overlays' control messages ([`control`]). The [`router`] handles frames
//! captured from the sleeve TAP port and frames received over sleeve: MAC
//! learning, head-end replication of floods to peers not on the fast path, and
//! hop-by-hop relay along the mesh's unicast routes.
//!
//! Nothing here owns a socket, a clock or a thread: every entry point takes
//! the current time ([`Millis`]) and inputs, and returns or queues actions for
//! the driver.

#![warn(missing_docs)]

pub mod control;
pub mod ether;
pub mod fastdp;
pub mod router;
pub mod sleeve;
pub mod switch;

pub use control::{OverlayKind, FASTDP_OVERLAY, SLEEVE_OVERLAY};
pub use ether::MacAddr;
pub use weft_mesh::Millis;
