//! Command-line surface: subcommands and their flags. Each subcommand lives in its own module;
//! this file only parses and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::{client, lab, router, setup_cni};

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "Weft: a Weave-compatible Kubernetes overlay network"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent (router, IPAM, HTTP API) in the current network namespace.
    Router(router::RouterArgs),
    /// Show the router's status (Weave's `weave status` layout).
    Status(StatusArgs),
    /// Print the router's full report as JSON (Weave's `weave report`).
    Report(ClientArgs),
    /// Add peers to connect to (Weave's `weave connect`); `--replace` replaces the list.
    Connect(ConnectArgs),
    /// Stop connecting to peers (Weave's `weave forget`).
    Forget(ForgetArgs),
    /// Take over the address ranges of a peer that is gone for good (Weave's `weave rmpeer`).
    /// Run it on exactly one peer per dead peer.
    Rmpeer(RmpeerArgs),
    /// Hand this peer's address ranges to another peer before removing the node (the IPAM part
    /// of Weave's `weave reset`); stop the router afterwards.
    Reset(ClientArgs),
    /// Install the CNI plugin and write the network configuration.
    SetupCni(setup_cni::SetupCniArgs),
    /// Build a local cluster in network namespaces and show pods reaching each other.
    Lab(lab::LabArgs),
}

/// How the CLI reaches a running router.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The router's unix socket.
    #[arg(long, env = "WEFT_SOCKET", default_value = router::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Args, Debug)]
struct ConnectArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Replace the current list of direct peers instead of adding to it.
    #[arg(long)]
    replace: bool,
    /// Peers (host[:port]).
    peers: Vec<String>,
}

#[derive(Args, Debug)]
struct RmpeerArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The peer's name (MAC) or nickname.
    peer: String,
}

#[derive(Args, Debug)]
struct ForgetArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Peers (host[:port]).
    #[arg(required = true)]
    peers: Vec<String>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print JSON (the matching part of the report) instead of text.
    #[arg(long)]
    json: bool,
    /// One of: peers, connections, targets, ipam.
    what: Option<String>,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Router(args) => router::run(args).map(|()| ExitCode::SUCCESS),
            Command::Status(s) => client::status(&s.client, s.what.as_deref(), s.json),
            Command::Report(c) => client::report(&c),
            Command::Connect(a) => client::connect(&a.client, &a.peers, a.replace),
            Command::Forget(a) => client::forget(&a.client, &a.peers),
            Command::Rmpeer(a) => client::rmpeer(&a.client, &a.peer),
            Command::Reset(c) => client::reset(&c),
            Command::SetupCni(args) => setup_cni::run(&args).map(|()| ExitCode::SUCCESS),
            Command::Lab(args) => lab::run(&args),
        }
    }
}
