//! The whole lab (`run`, `Lab::build`, routers, CNI ADD/DEL through the `weft-net` symlink,
//! status, teardown) driven with `weft-lab-fake`, a stand-in for the weft binary that serves
//! the router's HTTP API on the unix socket and wires pods with plain routing.
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_lab::{Error, Lab, LabConfig, PingOptions, NETNS_DIR};

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn fake() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft-lab-fake"))
}

fn config(hosts: usize, pods: usize) -> LabConfig {
    LabConfig {
        hosts,
        pods,
        weft_bin: fake(),
        ready_timeout: Duration::from_secs(20),
        settle_timeout: Duration::from_secs(10),
        ping: PingOptions {
            tries: 3,
            timeout: Duration::from_millis(300),
        },
        ..LabConfig::default()
    }
}

fn leftover_netns(id: &str) -> Vec<String> {
    let prefix = format!("{id}-");
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// True if `pid` is a live (not zombie) process running the fake binary.
fn fake_alive(pid: u32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'));
    exe.as_deref() == std::fs::canonicalize(fake()).ok().as_deref() && !zombie
}

fn ipam_count(lab: &Lab, host: usize) -> String {
    lab.http(host).get_text("/status/ipam").unwrap()
}

#[test]
fn build_ping_restart_del_and_teardown() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let mut lab = Lab::build(&config(2, 2)).expect("build lab with fake routers");
    let id = lab.id().to_string();
    let workdir = lab.workdir().to_path_buf();
    // The plugin is a symlink to the weft binary, named weft-net.
    let link = lab.cni_bin_dir().join("weft-net");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::fs::canonicalize(fake()).unwrap()
    );

    let pids: Vec<u32> = (1..=2)
        .map(|n| lab.router_pid(n).expect("router running"))
        .collect();
    assert!(pids.iter().all(|p| fake_alive(*p)));
    // The router runs in its host's netns.
    let router_ns =
        weft_dataplane::netns::NetNs::open(format!("/proc/{}/ns/net", pids[0])).unwrap();
    assert!(router_ns.is_same(lab.host_netns(1)).unwrap());
    // Arguments as documented, peers last.
    let log = std::fs::read_to_string(lab.host(1).router_log()).unwrap();
    assert!(log.contains(&format!(
        "router --nickname h1 --db-prefix {}/h1/weft- --socket {}/h1/weft.sock --metrics-addr 127.0.0.1:6782 --name 02:77:00:00:00:01 198.18.0.2",
        workdir.display(),
        workdir.display()
    )), "{log}");

    // Pods got their addresses from the CNI result.
    assert_eq!(lab.pods().len(), 4);
    assert_eq!(lab.pod(1, 1).addr().to_string(), "10.32.1.1");
    assert_eq!(lab.pod(2, 2).addr().to_string(), "10.32.2.2");
    assert_eq!(
        lab.pod(2, 2).gateway().map(|g| g.to_string()).as_deref(),
        Some("10.32.2.254")
    );
    assert!(lab.pod(1, 2).cni_result().is_some());
    assert!(ipam_count(&lab, 1).contains("2 allocated"));

    let status = lab.status_text();
    assert!(
        status.contains("--- h1 (198.18.0.1) peers ---\nh1 -> 198.18.0.2 established"),
        "{status}"
    );
    assert!(
        status.contains("--- h2 (198.18.0.2) IPAM ---\n10.32.2.0/24 owned by h2"),
        "{status}"
    );

    let m = lab.settled_matrix(Duration::from_secs(20));
    println!("{m}");
    assert!(m.all_ok(), "{m}");
    assert_eq!(m.total(), 12);

    // DEL through the real plugin path releases the address at the router.
    lab.remove_pod("h1p1").unwrap();
    assert!(ipam_count(&lab, 1).contains("1 allocated"));
    // The freed address is reused by the next ADD.
    let again = lab.add_cni_pod(1).unwrap();
    assert_eq!(
        (again.name(), again.addr().to_string().as_str()),
        ("h1p3", "10.32.1.1")
    );

    // Crash and restart a router.
    let status = lab.kill_router(2).unwrap();
    assert!(!status.success());
    assert!(!fake_alive(pids[1]));
    assert!(lab.router_pid(2).is_none());
    assert!(lab.http(2).get("/status").is_err());
    lab.restart_router(2).unwrap();
    let new_pid = lab.router_pid(2).unwrap();
    assert_ne!(new_pid, pids[1]);
    // Starting a running router again is refused.
    assert!(lab
        .start_router(2)
        .unwrap_err()
        .to_string()
        .contains("already running"));
    // Graceful stop.
    lab.stop_router(1).unwrap();
    assert!(!fake_alive(pids[0]));
    lab.start_router(1).unwrap();
    let pid1 = lab.router_pid(1).unwrap();

    lab.shutdown().expect("clean teardown");
    assert!(!fake_alive(pid1) && !fake_alive(new_pid));
    assert_eq!(leftover_netns(&id), Vec::<String>::new());
    assert!(!workdir.exists());
}

#[test]
fn run_check_mode_end_to_end() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let base = std::env::temp_dir().join(format!("wlc{}", std::process::id()));
    let cfg = LabConfig {
        check: true,
        base_dir: Some(base.clone()),
        ipalloc_range: Some("10.40.0.0/16".into()),
        ..config(3, 1)
    };
    let report = weft_lab::run(&cfg).expect("check passes");
    assert_eq!(report.matrix.total(), 6);
    assert!(report.matrix.all_ok());
    assert_eq!(report.pods.len(), 3);
    assert_eq!(report.pods[2].1.to_string(), "10.40.3.1/24");
    assert_eq!(leftover_netns(&report.id), Vec::<String>::new());
    assert!(!report.workdir.exists());
    let _ = std::fs::remove_dir(&base);
}

#[test]
fn run_until_sigint() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let base = std::env::temp_dir().join(format!("wli{}", std::process::id()));
    let cfg = LabConfig {
        base_dir: Some(base.clone()),
        recheck_interval: Duration::from_secs(1),
        ..config(2, 1)
    };
    let runner = std::thread::spawn(move || weft_lab::run(&cfg));
    // Wait until the last pod's netns exists (the build then only finishes its ADD), then
    // send ourselves SIGINT like a Ctrl-C.
    let id = loop {
        let id = std::fs::read_dir(&base)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned());
        if let Some(id) = id {
            if Path::new(NETNS_DIR).join(format!("{id}-h2p1")).exists() {
                break id;
            }
        }
        assert!(!runner.is_finished(), "run() ended early");
        std::thread::sleep(Duration::from_millis(50));
    };
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGINT).unwrap();
    let report = runner.join().unwrap().expect("run ends cleanly on SIGINT");
    assert_eq!(report.id, id);
    assert!(report.matrix.all_ok());
    assert_eq!(leftover_netns(&id), Vec::<String>::new());
    assert!(!report.workdir.exists());
    let _ = std::fs::remove_dir(&base);
}

#[test]
fn plugin_errors_show_its_json_message() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let cfg = LabConfig {
        extra_router_args: vec!["--fail-add".into()],
        ..config(1, 1)
    };
    let e = Lab::build(&cfg).unwrap_err();
    match &e {
        Error::Cni {
            command,
            pod,
            code,
            msg,
            ..
        } => {
            assert_eq!((*command, pod.as_str(), *code), ("ADD", "h1p1", Some(999)));
            assert!(
                msg.contains("IPAM exhausted (injected by --fail-add)"),
                "{msg}"
            );
        }
        other => panic!("expected a CNI error, got {other}"),
    }
    // No namespaces left from the failed build.
    let id = e.to_string();
    assert!(id.contains("code 999"), "{id}");
    assert!(std::fs::read_dir(NETNS_DIR)
        .map(|d| d.flatten().all(|e| !e
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("wl{}-", std::process::id()))))
        .unwrap_or(true));
}

#[test]
fn router_startup_failures_show_the_log() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let cfg = LabConfig {
        extra_router_args: vec!["--exit-early".into()],
        ..config(1, 0)
    };
    let e = Lab::build(&cfg).unwrap_err();
    assert!(matches!(e, Error::RouterExited { .. }), "{e}");
    assert!(
        e.to_string().contains("fatal: injected startup failure"),
        "{e}"
    );

    let cfg = LabConfig {
        extra_router_args: vec!["--fail-ready".into()],
        ready_timeout: Duration::from_secs(1),
        ..config(1, 0)
    };
    let e = Lab::build(&cfg).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::RouterNotReady { .. }), "{e}");
    assert!(
        text.contains("503") && text.contains("fake router h1 serving on"),
        "{text}"
    );
    let prefix = format!("wl{}-", std::process::id());
    assert!(std::fs::read_dir(NETNS_DIR)
        .map(|d| d
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(&prefix)))
        .unwrap_or(true));
}

#[test]
fn stale_labs_of_dead_owners_are_cleaned_up() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let base = std::env::temp_dir().join(format!("wls{}", std::process::id()));
    let cfg = LabConfig {
        base_dir: Some(base.clone()),
        ..config(2, 1)
    };
    let live = Lab::build(&cfg).unwrap();
    let stale = Lab::build(&cfg).unwrap();
    let (stale_id, stale_dir) = (stale.id().to_string(), stale.workdir().to_path_buf());
    let pids: Vec<u32> = (1..=2).map(|n| stale.router_pid(n).unwrap()).collect();
    // Pretend the owner died: a pid that existed once and is gone now.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(stale_dir.join("owner"), format!("{gone_pid} 1\n")).unwrap();
    std::mem::forget(stale); // no teardown: as if we had been SIGKILLed

    let cleaned = weft_lab::cleanup_stale(Some(&base)).unwrap();
    assert_eq!(cleaned, vec![stale_id.clone()]);
    assert!(pids.iter().all(|p| !fake_alive(*p)), "stale routers killed");
    assert_eq!(leftover_netns(&stale_id), Vec::<String>::new());
    assert!(!stale_dir.exists());
    // The live lab is untouched.
    assert!(live.router_pid(1).is_some_and(fake_alive));
    assert!(live.workdir().exists());
    assert!(weft_lab::cleanup_stale(Some(&base)).unwrap().is_empty());
    let live_id = live.id().to_string();
    live.shutdown().unwrap();
    assert_eq!(leftover_netns(&live_id), Vec::<String>::new());
    let _ = std::fs::remove_dir(&base);
}
