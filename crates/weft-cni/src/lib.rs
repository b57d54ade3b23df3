//! weft-cni: Weft's CNI plugin (`weft-net`).
//!
//! Speaks CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0 with the verbs ADD, DEL, CHECK, VERSION, GC
//! and STATUS. ADD creates a veth pair (host side `vethwepl…` on the `weave` bridge, container
//! side `CNI_IFNAME` created directly in `CNI_NETNS`), takes an address from the weft router
//! (Weave's HTTP API over a unix socket) or from a delegated IPAM plugin, and routes the pod via
//! the bridge.
//!
//! Entry points: [`run`] (environment map + stdin in, stdout bytes + exit code out) and
//! [`main_from_env`] (the process's own environment and stdin). The `weft` binary calls
//! `main_from_env` when invoked as `weft-net`.

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod gc;
pub mod kernel;
pub mod names;
pub mod plugin;
pub mod result;
pub mod router;
pub mod version;

/// The shared unix-socket HTTP client ([`weft_http`]), re-exported for the `weft` binary's CLI.
use std::collections::HashMap;
use std::io::{Read, Write};

pub use error::CniError;
pub use result::CniResult;
pub use version::{Version, SUPPORTED_VERSIONS};

/// The largest stdin we accept (configs are a few KiB).
pub const MAX_STDIN_BYTES: u64 = 16 * 1024 * 1024;

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes for stdout: a result, an error object, or nothing.
    pub stdout: Vec<u8>,
    /// 0 on success, 1 on error.
    pub exit_code: i32,
}

impl Outcome {
    fn ok(v: Option<serde_json::Value>) -> Outcome {
        Outcome {
            stdout: v.map(json_line).unwrap_or_default(),
            exit_code: 0,
        }
    }

    fn err(e: &CniError, cni_version: Option<&str>) -> Outcome {
        eprintln!("weft-net: {e}");
        let ver = cni_version
            .and_then(Version::parse)
            .map(Version::as_str)
            .unwrap_or(version::LATEST);
        Outcome {
            stdout: json_line(e.to_json(Some(ver))),
            exit_code: 1,
        }
    }
}

fn json_line(v: serde_json::Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Runs one CNI invocation. `env` is the environment (at least the `CNI_*` variables; also
/// `WEFT_SOCKET` when set), `stdin` the request bytes.
pub fn run(env: &HashMap<String, String>, stdin: &[u8]) -> Outcome {
    let command = match env::command(env) {
        Ok(c) => c,
        Err(e) => return Outcome::err(&e, None),
    };
    if command == env::Command::Version {
        return Outcome::ok(Some(version::version_answer(stdin)));
    }
    // The request's version, for error replies, even when the rest fails to validate.
    let raw = config::decode_json(stdin);
    let req_version = raw.as_ref().ok().and_then(config::raw_version);
    let req_version = req_version.as_deref();
    let cni_env = match env::CniEnv::from_map(command, env) {
        Ok(e) => e,
        Err(e) => return Outcome::err(&e, req_version),
    };
    let mut raw = match raw {
        Ok(v) => v,
        Err(e) => return Outcome::err(&e, None),
    };
    if command == env::Command::Del {
        // DEL is best-effort and does not use prevResult: a damaged cached result must not
        // stop the address from being released.
        if let Some(o) = raw.as_object_mut() {
            o.remove("prevResult");
        }
    }
    let conf = match config::NetConf::from_value(&raw, env.get("WEFT_SOCKET").map(String::as_str)) {
        Ok(c) => c,
        Err(e) => return Outcome::err(&e, req_version),
    };
    let ctx = plugin::Ctx {
        env: cni_env,
        conf,
        raw_env: env,
        stdin,
    };
    match ctx.dispatch() {
        Ok(v) => Outcome::ok(v),
        Err(e) => Outcome::err(&e.context(command.as_str()), req_version),
    }
}

/// Reads the process environment and stdin, writes stdout, returns the exit code.
pub fn main_from_env() -> i32 {
    let env: HashMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let is_version = env.get("CNI_COMMAND").map(String::as_str) == Some("VERSION");
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut stdin);
    let outcome = match read {
        Err(e) if !is_version => Outcome::err(
            &CniError::io(format!("failed to read the network config from stdin: {e}")),
            None,
        ),
        _ if stdin.len() as u64 > MAX_STDIN_BYTES && !is_version => Outcome::err(
            &CniError::io(format!(
                "network config on stdin is larger than {MAX_STDIN_BYTES} bytes"
            )),
            None,
        ),
        _ => run(&env, &stdin),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(&outcome.stdout)
        .and_then(|_| out.flush())
        .is_err()
    {
        return 1;
    }
    outcome.exit_code
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn env(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn out_json(o: &Outcome) -> Value {
        serde_json::from_slice(&o.stdout).unwrap()
    }

    #[test]
    fn version_needs_only_the_command() {
        let o = run(
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(o.exit_code, 0);
        let j = out_json(&o);
        assert_eq!(j["cniVersion"], "0.4.0");
        assert_eq!(
            j["supportedVersions"],
            serde_json::json!(SUPPORTED_VERSIONS)
        );
        let o = run(
            &env(&[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy")]),
            b"",
        );
        assert_eq!(out_json(&o)["cniVersion"], "1.1.0");
    }

    #[test]
    fn missing_command_and_env() {
        let o = run(&env(&[]), b"{}");
        assert_eq!(o.exit_code, 1);
        assert_eq!(out_json(&o)["code"], 4);
        let o = run(
            &env(&[("CNI_COMMAND", "ADD")]),
            br#"{"cniVersion":"0.4.0","name":"n","type":"weft-net"}"#,
        );
        let j = out_json(&o);
        assert_eq!(j["code"], 4);
        assert_eq!(j["cniVersion"], "0.4.0");
        assert!(j["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME"));
    }

    #[test]
    fn decode_version_config_errors() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(out_json(&run(&e, b"{\"cniVersion\":"))["code"], 6);
        assert_eq!(out_json(&run(&e, b""))["code"], 6);
        let j = out_json(&run(&e, br#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#));
        assert_eq!(j["code"], 1);
        assert_eq!(j["cniVersion"], "1.1.0");
        assert_eq!(
            out_json(&run(&e, br#"{"cniVersion":"1.0.0","type":"t"}"#))["code"],
            7
        );
        assert_eq!(
            out_json(&run(
                &e,
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","ipMasq":true}"#
            ))["code"],
            2
        );
    }

    #[test]
    fn del_ignores_a_damaged_prev_result() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let stdin = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"t","socket":"{}","prevResult":{{"ips":[{{"address":"garbage"}}]}}}}"#,
            sock.display()
        );
        // Gets as far as the (absent) router: code 11, not a decode error.
        assert_eq!(out_json(&run(&e, stdin.as_bytes()))["code"], 11);
    }

    #[test]
    fn check_below_040_and_gc_status_below_110_are_code_1() {
        let e = env(&[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent"),
        ]);
        let j = out_json(&run(&e, br#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#));
        assert_eq!(j["code"], 1);
        for cmd in ["GC", "STATUS"] {
            let j = out_json(&run(
                &env(&[("CNI_COMMAND", cmd)]),
                br#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#,
            ));
            assert_eq!(j["code"], 1, "{cmd}");
        }
    }

    #[test]
    fn status_with_absent_router_is_50() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let stdin = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"t","socket":"{}"}}"#,
            sock.display()
        );
        let o = run(&env(&[("CNI_COMMAND", "STATUS")]), stdin.as_bytes());
        assert_eq!(o.exit_code, 1);
        assert_eq!(out_json(&o)["code"], 50);
    }
}
