//! weft-lab: a local Weft cluster in network namespaces (`weft lab`).
//!
//! The lab builds, on this machine:
//! - an **underlay** netns `<id>-ul` holding a Linux bridge `ul0`;
//! - N **host** netns `<id>-h<n>`, each joined to `ul0` by a veth (`eth0` in the host, `h<n>` on
//!   the bridge), address 198.18.0.`n`/24;
//! - in each host, a `weft router` process (in its own process group, log in
//!   `<workdir>/h<n>/router.log`), waited for through `GET /status` on its unix socket;
//! - M **pods** per host, netns `<id>-h<n>p<j>`, attached by running the real CNI plugin
//!   (`<workdir>/cni-bin/weft-net`, a symlink to the weft binary) inside the host netns.
//!
//! [`run`] is the `weft lab` command. [`Lab`] is the lower-level API for tests: build the
//! topology with or without routers, add pods through CNI or by hand, ping, run commands in any
//! namespace, stop/kill/restart routers, talk HTTP to a router. Dropping a [`Lab`] tears it all
//! down (CNI DEL for each pod, routers SIGTERM then SIGKILL, netns, work directory).
//!
//! Numbering: hosts and pods are 1-based, matching their names (`host(1)` is `h1`).

pub mod cni;
mod conns;
mod error;
pub mod exec;
mod lab;
pub mod matrix;
pub mod ping;
mod run;
pub mod signal;
mod stale;

pub use conns::{parse_report, Connections, LabConnection};
pub use error::{Error, Result};
pub use lab::{
    lab_peer_name, log_tail, netlink_in, ping_in, ping_until, Host, Lab, LabConfig, LabReport, Pod,
    DEFAULT_BASE_DIR, METRICS_ADDR, NETNS_DIR, UNDERLAY_BRIDGE,
};
pub use matrix::{FailedPair, Matrix};
pub use ping::{PingOptions, PingOutcome};
pub use run::run;
pub use stale::cleanup_stale;
pub use weft_http::{HttpError, Response as HttpResponse, UnixHttp};
