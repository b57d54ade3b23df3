//! `weft`: the Weft node agent, its CLI, the CNI plugin entry point and the local lab.
//!
//! One binary does every job. Invoked as `weft-net` (the name the CNI runtime knows it by,
//! installed as a link by `weft setup-cni`), it runs the CNI plugin; otherwise the first
//! argument picks a subcommand.

mod cli;
mod client;
mod identity;
mod lab;
mod router;
mod setup_cni;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

/// The name the CNI plugin is installed under (the `type` in the network configuration).
pub const CNI_PLUGIN_NAME: &str = "weft-net";

fn main() -> ExitCode {
    if invoked_as_cni_plugin() {
        let code = weft_cni::main_from_env();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = cli::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn invoked_as_cni_plugin() -> bool {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|a| Path::new(a).file_name().map(|n| n.to_owned()))
        .is_some_and(|n| n == CNI_PLUGIN_NAME)
}
