//! `weft lab`: build, show, check or wait for Ctrl-C, tear down.
use crate::conns::Connections;
use crate::lab::{Lab, LabConfig, LabReport};
use crate::{signal, Error, Result};
use std::time::{Duration, Instant};

/// Builds the lab described by `cfg`, waits until the routers' connections are established
/// (over `cfg.expect_overlay`, if given), prints the routers' peers and IPAM status, the pod
/// ping matrix and every router's connections with the overlay carrying each (stdout;
/// progress goes to stderr). The connections and then the matrix (re-run until every pair
/// answers) get at most `settle_timeout` each. Then:
/// - with `cfg.check`: tears down, and fails with [`Error::CheckFailed`] if any pair is
///   unreachable, or [`Error::OverlayCheckFailed`] if `cfg.expect_overlay` is given and a
///   connection is not established over it;
/// - otherwise: keeps the lab up, re-running the matrix every `recheck_interval` and printing it
///   when reachability changes, until SIGINT/SIGTERM; then tears down.
///
/// Teardown always happens (on error and panic too). A teardown problem is returned as
/// [`Error::Teardown`].
pub fn run(cfg: &LabConfig) -> Result<LabReport> {
    let _signals = signal::install_stop_handler()?;
    let lab = Lab::build(cfg)?;
    println!(
        "lab {} ({} hosts, {} pods)",
        lab.id(),
        lab.host_count(),
        lab.pods().len()
    );
    settle_connections(&lab, cfg);
    print!("{}", lab.status_text());
    if cfg.progress {
        eprintln!("[4/4] ping matrix ({} pods)", lab.pods().len());
    }
    let matrix = lab.settled_matrix(cfg.settle_timeout);
    println!("{matrix}");
    let conns = print_connections(&lab);
    if cfg.check {
        let report = lab.report(&matrix, &conns);
        lab.shutdown()?;
        if !matrix.all_ok() {
            return Err(Error::CheckFailed {
                failed: matrix.total() - matrix.reachable(),
                total: matrix.total(),
            });
        }
        if let Some(expected) = &cfg.expect_overlay {
            if !conns.all_served_by(expected) {
                return Err(Error::OverlayCheckFailed {
                    expected: expected.clone(),
                    summary: conns.summary(),
                });
            }
        }
        return Ok(report);
    }

    println!(
        "lab {} is up; work directory {}",
        lab.id(),
        lab.workdir().display()
    );
    for h in lab.hosts() {
        println!(
            "  {} {:<12} ip netns exec {} sh    (router socket {})",
            h.name(),
            h.addr().to_string(),
            h.netns_name(),
            h.socket().display()
        );
    }
    for p in lab.pods() {
        println!(
            "  {:<6} {:<15} ip netns exec {} sh",
            p.name(),
            p.cidr().to_string(),
            p.netns_name()
        );
    }
    println!("press Ctrl-C to tear it down");
    let mut last = matrix;
    'outer: loop {
        let until = Instant::now() + cfg.recheck_interval.max(Duration::from_secs(1));
        while Instant::now() < until {
            if signal::stop_requested() {
                break 'outer;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let m = lab.ping_matrix();
        if signal::stop_requested() {
            break;
        }
        if !m.same_reachability(&last) {
            println!("reachability changed:\n{m}");
        }
        last = m;
    }
    if cfg.progress {
        eprintln!("stopping: tearing down lab {}", lab.id());
    }
    let report = lab.report(&last, &conns);
    lab.shutdown()?;
    Ok(report)
}

/// Waits (bounded by `settle_timeout`) until every router's connections are established, over
/// `cfg.expect_overlay` if given, so that the status and the matrix show the settled network.
fn settle_connections(lab: &Lab, cfg: &LabConfig) {
    if lab.host_count() < 2 {
        return;
    }
    if cfg.progress {
        eprintln!("[4/4] waiting for the routers' connections");
    }
    lab.wait_connections(cfg.settle_timeout, |c| match &cfg.expect_overlay {
        Some(o) => c.all_served_by(o),
        None => c.all_established(),
    });
}

/// Prints every router's connections (with the overlay carrying each) and a summary line.
fn print_connections(lab: &Lab) -> Connections {
    if lab.host_count() < 2 {
        return Connections::default();
    }
    let conns = lab.connections();
    println!("connections:");
    print!("{conns}");
    println!("{}", conns.summary());
    conns
}
