//! CNI ADD/DEL latency: Weft's plugin (with its router) against the reference `bridge` +
//! `host-local` plugins doing the same work, measured in the same run on the same machine.
//!
//! Run through `bench/cni-latency` (it builds in release mode and runs this as root). Each
//! plugin gets its own host namespace; pods are namespaces created before timing starts. An
//! operation's latency is the wall time from spawning the plugin process to its exit, which is
//! what a container runtime waits for. Weft and the reference are interleaved operation by
//! operation so that machine noise falls on both alike.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use weft_dataplane::netns::{NamedNetNs, NetNs};
use weft_lab::{Lab, LabConfig};

const REFERENCE_DIR: &str = "/usr/lib/cni";

struct Plugin {
    name: &'static str,
    binary: PathBuf,
    cni_path: String,
    conf: String,
    host: NetNs,
}

fn spawn_plugin(p: &Plugin, command: &str, id: &str, netns: &Path) -> anyhow::Result<Duration> {
    let fd: OwnedFd = p.host.fd().try_clone_to_owned()?;
    let mut cmd = Command::new(&p.binary);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &p.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only the setns system call runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_fd().as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", p.binary.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(p.conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} {command} {id} failed: {}{}",
            p.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn row(plugin: &str, op: &str, mode: &str, mut samples: Vec<Duration>) -> (String, Duration) {
    samples.sort();
    let med = percentile(&samples, 0.5);
    let p95 = percentile(&samples, 0.95);
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    (
        format!(
            "| {plugin} | {op} | {mode} | {} | {} | {} |",
            samples.len(),
            ms(med),
            ms(p95)
        ),
        med,
    )
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seq: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let conc: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let exe = std::env::current_exe()?;
    let weft_bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("weft"))
        .filter(|p| p.exists())
        .context("the weft binary is not next to this example: build with `cargo build --release -p weft --examples`")?;
    if !Path::new(REFERENCE_DIR).join("bridge").exists() {
        bail!("the reference plugins are missing from {REFERENCE_DIR}: apt-get install containernetworking-plugins");
    }

    // Weft: a lab host with its router.
    let lab = Lab::build(&LabConfig {
        hosts: 1,
        pods: 0,
        weft_bin: weft_bin.clone(),
        progress: false,
        ..LabConfig::default()
    })?;
    let weft = Plugin {
        name: "weft-net",
        binary: lab.cni_bin_dir().join("weft-net"),
        cni_path: lab.cni_bin_dir().display().to_string(),
        conf: serde_json::json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-net", "socket": lab.router_socket(1)}).to_string(),
        host: NetNs::open(lab.host_netns(1).path())?,
    };
    // Reference: bridge + host-local in a host namespace of its own.
    let pid = std::process::id();
    let ref_host = NamedNetNs::create(&format!("wbench-ref-{pid}"))?;
    let data_dir = tempfile::tempdir()?;
    let reference = Plugin {
        name: "bridge+host-local",
        binary: Path::new(REFERENCE_DIR).join("bridge"),
        cni_path: REFERENCE_DIR.into(),
        conf: serde_json::json!({
            "cniVersion": "1.0.0", "name": "refbench", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "mtu": 1376,
            "ipam": {"type": "host-local", "subnet": "10.88.0.0/16", "dataDir": data_dir.path()}
        })
        .to_string(),
        host: NetNs::open(ref_host.ns().path())?,
    };

    let pods: Vec<NamedNetNs> = (0..(seq + conc) * 2)
        .map(|i| NamedNetNs::create(&format!("wbench-{pid}-{i}")))
        .collect::<Result<_, _>>()?;
    let pod_path = |i: usize| pods[i].ns().path().to_path_buf();

    let mut out = Vec::new();
    // Sequential: interleave the two plugins operation by operation.
    let (mut wa, mut ra, mut wd, mut rd) = (vec![], vec![], vec![], vec![]);
    for i in 0..seq {
        wa.push(spawn_plugin(
            &weft,
            "ADD",
            &format!("seq{i}"),
            &pod_path(2 * i),
        )?);
        ra.push(spawn_plugin(
            &reference,
            "ADD",
            &format!("seq{i}"),
            &pod_path(2 * i + 1),
        )?);
    }
    for i in 0..seq {
        wd.push(spawn_plugin(
            &weft,
            "DEL",
            &format!("seq{i}"),
            &pod_path(2 * i),
        )?);
        rd.push(spawn_plugin(
            &reference,
            "DEL",
            &format!("seq{i}"),
            &pod_path(2 * i + 1),
        )?);
    }
    let weft_add_median;
    let ref_add_median;
    {
        let (r, m) = row(weft.name, "ADD", "sequential", wa);
        weft_add_median = m;
        out.push(r);
        let (r, m) = row(reference.name, "ADD", "sequential", ra);
        ref_add_median = m;
        out.push(r);
        out.push(row(weft.name, "DEL", "sequential", wd).0);
        out.push(row(reference.name, "DEL", "sequential", rd).0);
    }
    // Concurrent: `conc` operations started together, per plugin.
    let base = 2 * seq;
    for (k, plugin) in [&weft, &reference].into_iter().enumerate() {
        for op in ["ADD", "DEL"] {
            let barrier = Arc::new(Barrier::new(conc));
            let results: Vec<anyhow::Result<Duration>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..conc)
                    .map(|j| {
                        let barrier = barrier.clone();
                        let path = pod_path(base + k * conc + j);
                        s.spawn(move || {
                            barrier.wait();
                            spawn_plugin(plugin, op, &format!("conc{j}"), &path)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("bench thread"))
                    .collect()
            });
            let samples = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
            out.push(row(plugin.name, op, &format!("{conc} concurrent"), samples).0);
        }
    }
    println!("| plugin | op | mode | n | median ms | p95 ms |");
    println!("|---|---|---|---|---|---|");
    for r in &out {
        println!("{r}");
    }
    println!();
    println!(
        "ADD median: weft-net {:.2} ms, reference {:.2} ms ({})",
        weft_add_median.as_secs_f64() * 1000.0,
        ref_add_median.as_secs_f64() * 1000.0,
        if weft_add_median < ref_add_median {
            "target met: below the reference"
        } else {
            "target NOT met"
        }
    );
    drop(pods);
    drop(ref_host);
    lab.shutdown()?;
    Ok(())
}
