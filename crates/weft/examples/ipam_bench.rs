//! IPAM throughput and time to the first ring, measured for docs/benchmarks.md.
//!
//! Run through `bench/ipam` (as root). Stores live on a disk-backed directory (`/var/tmp`), so
//! every acknowledged allocation pays a real fsync, as on a node.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use weft_ipam::allocator::{AllocatorConfig, InitMode};
use weft_ipam::node::{take_completion, NodeIpam};
use weft_lab::{Lab, LabConfig};
use weft_wire::PeerName;

fn in_process(n: u64, dir: &Path) -> anyhow::Result<f64> {
    let me: PeerName = "02:00:00:00:00:01".parse()?;
    let (mut node, _) = NodeIpam::open(
        &dir.join("inproc-data.db"),
        AllocatorConfig {
            peer: me,
            uid: 1,
            nickname: "bench".into(),
            universe: "10.32.0.0/12".parse()?,
            default_subnet: "10.32.0.0/12".parse()?,
            init: InitMode::Seed(vec![me]),
        },
    )?;
    let start = Instant::now();
    for i in 0..n {
        let mut actions = node.allocate(&format!("c{i}"), None, true, i, i)?;
        take_completion(&mut actions, i)
            .context("allocation did not complete")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let weft_bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("weft"))
        .filter(|p| p.exists())
        .context("build with `cargo build --release -p weft --bins --examples`")?;
    std::fs::create_dir_all("/var/tmp/weft-bench")?;
    let dir = tempfile::tempdir_in("/var/tmp/weft-bench")?;
    let n = 1000;
    let rate = in_process(n, dir.path())?;
    println!("| in-process NodeIpam::allocate (commit per op) | {n} | {rate:.0} /s |");

    let lab = Lab::build(&LabConfig {
        hosts: 1,
        pods: 0,
        weft_bin: weft_bin.clone(),
        base_dir: Some(dir.path().join("lab1")),
        progress: false,
        ..LabConfig::default()
    })?;
    let http = lab.http(1);
    let start = Instant::now();
    for i in 0..n {
        let r = http.post(&format!("/ip/s{i}"), "text/plain", b"")?;
        anyhow::ensure!(r.status == 200, "allocation failed: {}", r.text());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!("| unix-socket API `POST /ip/{{id}}`, sequential | {n} | {rate:.0} /s |");
    lab.shutdown()?;

    let mut lab = Lab::create(&LabConfig {
        hosts: 3,
        pods: 0,
        weft_bin,
        base_dir: Some(dir.path().join("lab3")),
        progress: false,
        ..LabConfig::default()
    })?;
    let start = Instant::now();
    for h in 1..=3 {
        lab.start_router(h)?;
    }
    let deadline = start + Duration::from_secs(60);
    loop {
        let ready = (1..=3).all(|h| {
            lab.http(h)
                .get_json::<serde_json::Value>("/report")
                .map(|r| {
                    r["IPAM"]["Entries"]
                        .as_array()
                        .is_some_and(|e| !e.is_empty())
                })
                .unwrap_or(false)
        });
        if ready {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no ring after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "| first ring by consensus, 3 real routers (from starting them) | 3 | {:.0} ms |",
        start.elapsed().as_secs_f64() * 1000.0
    );
    lab.shutdown()?;
    Ok(())
}
