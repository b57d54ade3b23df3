//! `weft lab`: the local lab cluster (see the `weft-lab` crate for what it builds).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Number of hosts (each a network namespace with its own router).
    #[arg(long, default_value_t = 1)]
    pub hosts: usize,
    /// Pods per host, attached through the real CNI plugin.
    #[arg(long, default_value_t = 3)]
    pub pods: usize,
    /// Run the ping matrix once, tear down, and exit non-zero if any pair failed.
    #[arg(long)]
    pub check: bool,
    /// With --check: also fail unless every connection is established over this overlay.
    #[arg(long, value_parser = ["fastdp", "sleeve"], requires = "check")]
    pub expect_overlay: Option<String>,
    /// IPALLOC_RANGE for every router.
    #[arg(long)]
    pub ipalloc_range: Option<String>,
    /// WEAVE_PASSWORD for every router.
    #[arg(long, env = "WEAVE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Parent of the lab's work directory (router logs and stores).
    #[arg(long)]
    pub base_dir: Option<PathBuf>,
    /// Keep the work directory after teardown (for reading router logs).
    #[arg(long)]
    pub keep_workdir: bool,
    /// Remove what labs killed with SIGKILL left behind (routers, namespaces, work dirs), then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Extra arguments for every router, e.g. `--router-arg=--log-level=debug`.
    #[arg(long = "router-arg", allow_hyphen_values = true)]
    pub router_args: Vec<String>,
}

pub fn run(args: &LabArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("weft lab creates network namespaces and must run as root (try sudo)");
    }
    if args.cleanup {
        for removed in weft_lab::cleanup_stale(args.base_dir.as_deref())? {
            println!("removed stale lab {removed}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = weft_lab::LabConfig {
        hosts: args.hosts,
        pods: args.pods,
        check: args.check,
        weft_bin: std::env::current_exe().context("finding the weft binary")?,
        ipalloc_range: args.ipalloc_range.clone(),
        password: args.password.clone(),
        extra_router_args: args.router_args.clone(),
        base_dir: args.base_dir.clone(),
        keep_workdir: args.keep_workdir,
        expect_overlay: args.expect_overlay.clone(),
        ..weft_lab::LabConfig::default()
    };
    let report = weft_lab::run(&cfg)?;
    if report.matrix.all_ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
