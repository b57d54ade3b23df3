//! Helpers shared by the end-to-end tests: labs built with this package's `weft` binary, and
//! bounded waits on what the routers report.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_lab::{Lab, LabConfig};

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests create network namespaces: run them as root"
    );
}

/// A lab configuration with this package's `weft` binary and no progress output.
pub fn config(hosts: usize, pods: usize) -> LabConfig {
    require_root();
    LabConfig {
        hosts,
        pods,
        weft_bin: env!("CARGO_BIN_EXE_weft").into(),
        progress: false,
        ..LabConfig::default()
    }
}

pub fn report(lab: &Lab, host: usize) -> Value {
    lab.http(host).get_json("/report").expect("GET /report")
}

/// Polls `f` every 100 ms until it holds or `timeout` passes; returns its last answer.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Polls host `host`'s report until `done` holds (bounded); returns the last report.
pub fn wait_report(
    lab: &Lab,
    host: usize,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let r = report(lab, host);
        if done(&r) || start.elapsed() > timeout {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /ip` as a map container ID -> addresses.
pub fn owned(lab: &Lab, host: usize) -> BTreeMap<String, Vec<String>> {
    let v: Value = lab.http(host).get_json("/ip").expect("GET /ip");
    v["owned"]
        .as_array()
        .expect("owned is a list")
        .iter()
        .map(|o| {
            let id = o["containerid"].as_str().unwrap().to_owned();
            let addrs = o["addrs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            (id, addrs)
        })
        .collect()
}
