//! Running the real CNI plugin binary the way a container runtime does.
use crate::exec::{in_netns, run_with_input};
use crate::{Error, Result};
use ipnet::Ipv4Net;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use weft_dataplane::netns::NetNs;

/// The CNI version the lab speaks.
pub const CNI_VERSION: &str = "1.1.0";
/// Cap on what we read from the plugin's stdout/stderr.
const OUTPUT_CAP: usize = 1024 * 1024;

/// One attachment, as the runtime knows it.
#[derive(Debug, Clone)]
pub struct CniRequest {
    /// The plugin executable (e.g. `<workdir>/cni-bin/weft-net`).
    pub plugin: PathBuf,
    /// `CNI_PATH`.
    pub cni_path: PathBuf,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns_path: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The network configuration (stdin), without `prevResult`.
    pub config: Value,
    /// How long the plugin may run.
    pub timeout: Duration,
}

impl CniRequest {
    /// The lab's network config for a router listening on `socket`.
    pub fn weft_config(socket: &Path) -> Value {
        serde_json::json!({
            "cniVersion": CNI_VERSION,
            "name": "weft",
            "type": "weft-net",
            "socket": socket.to_string_lossy(),
        })
    }
}

/// A parsed ADD result.
#[derive(Debug, Clone, PartialEq)]
pub struct CniAddResult {
    /// The whole result object (kept for DEL's `prevResult`).
    pub raw: Value,
    /// The pod's IPv4 address with prefix length (the first IPv4 entry of `ips`, preferring one
    /// on the sandbox interface).
    pub address: Ipv4Net,
    /// Its gateway, if the plugin gave one.
    pub gateway: Option<Ipv4Addr>,
}

/// Runs `ADD` with the plugin in `runtime_ns` and parses the result.
pub fn add(runtime_ns: &NetNs, req: &CniRequest, pod: &str) -> Result<CniAddResult> {
    let out = invoke(runtime_ns, req, "ADD", &req.config, pod)?;
    parse_add_result(&out, &req.ifname).map_err(|msg| Error::Cni {
        command: "ADD",
        pod: pod.to_string(),
        status: "exit 0".into(),
        code: None,
        msg,
    })
}

/// Runs `DEL`, passing `prev_result` like a runtime that cached the ADD result.
pub fn del(
    runtime_ns: &NetNs,
    req: &CniRequest,
    prev_result: Option<&Value>,
    pod: &str,
) -> Result<()> {
    let mut config = req.config.clone();
    if let (Some(prev), Some(obj)) = (prev_result, config.as_object_mut()) {
        obj.insert("prevResult".into(), prev.clone());
    }
    invoke(runtime_ns, req, "DEL", &config, pod).map(|_| ())
}

fn invoke(
    runtime_ns: &NetNs,
    req: &CniRequest,
    command: &'static str,
    config: &Value,
    pod: &str,
) -> Result<Vec<u8>> {
    let mut cmd = Command::new(&req.plugin);
    cmd.env_clear();
    for key in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &req.container_id)
        .env("CNI_NETNS", &req.netns_path)
        .env("CNI_IFNAME", &req.ifname)
        .env("CNI_PATH", &req.cni_path);
    // Our own process group: a Ctrl-C at the terminal must not kill the plugin mid-operation.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    in_netns(&mut cmd, runtime_ns)?;
    let stdin = serde_json::to_vec(config)
        .map_err(|e| Error::Config(format!("cannot encode CNI config: {e}")))?;
    let out = run_with_input(&mut cmd, &stdin, req.timeout, OUTPUT_CAP)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let (code, msg) = describe_failure(&out.stdout, &out.stderr);
    Err(Error::Cni {
        command,
        pod: pod.to_string(),
        status: out.status.to_string(),
        code,
        msg,
    })
}

/// Turns a failed plugin's output into (code, message): the CNI error object on stdout if there
/// is one (`msg` plus `details`), else the raw stdout/stderr.
pub fn describe_failure(stdout: &[u8], stderr: &[u8]) -> (Option<u64>, String) {
    if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(stdout) {
        let code = obj.get("code").and_then(Value::as_u64);
        let msg = obj.get("msg").and_then(Value::as_str).unwrap_or("");
        let details = obj.get("details").and_then(Value::as_str).unwrap_or("");
        let mut text = match code {
            Some(c) => format!("code {c}: {msg}"),
            None => msg.to_string(),
        };
        if !details.is_empty() {
            text.push_str(&format!(" ({details})"));
        }
        if !text.is_empty() {
            return (code, text);
        }
    }
    let out = String::from_utf8_lossy(stdout);
    let err = String::from_utf8_lossy(stderr);
    let mut text = String::new();
    if !out.trim().is_empty() {
        text.push_str(&format!("stdout: {}", out.trim()));
    }
    if !err.trim().is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let tail: Vec<&str> = err.trim().lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        text.push_str(&format!("stderr: {}", tail.join("\n")));
    }
    if text.is_empty() {
        text = "the plugin printed nothing".into();
    }
    (None, text)
}

/// Parses an ADD result (CNI 1.x result JSON).
pub fn parse_add_result(stdout: &[u8], ifname: &str) -> std::result::Result<CniAddResult, String> {
    let raw: Value = serde_json::from_slice(stdout).map_err(|e| {
        format!(
            "the plugin's ADD result is not JSON ({e}): {}",
            String::from_utf8_lossy(stdout)
                .chars()
                .take(500)
                .collect::<String>()
        )
    })?;
    let ips = raw
        .get("ips")
        .and_then(Value::as_array)
        .ok_or("the plugin's ADD result has no \"ips\" list")?;
    let interfaces = raw.get("interfaces").and_then(Value::as_array);
    let on_sandbox = |ip: &Value| -> bool {
        let Some(idx) = ip.get("interface").and_then(Value::as_u64) else {
            return false;
        };
        interfaces
            .and_then(|ifs| ifs.get(usize::try_from(idx).ok()?))
            .map(|i| {
                i.get("sandbox")
                    .is_some_and(|s| s.as_str().is_some_and(|s| !s.is_empty()))
                    && i.get("name").and_then(Value::as_str) == Some(ifname)
            })
            .unwrap_or(false)
    };
    let v4: Vec<(&Value, Ipv4Net)> = ips
        .iter()
        .filter_map(|ip| {
            let a = ip.get("address")?.as_str()?;
            a.parse::<Ipv4Net>().ok().map(|n| (ip, n))
        })
        .collect();
    let (ip, address) = v4
        .iter()
        .find(|(ip, _)| on_sandbox(ip))
        .or_else(|| v4.first())
        .copied()
        .ok_or("the plugin's ADD result has no IPv4 address in \"ips\"")?;
    let gateway = match ip.get("gateway").and_then(Value::as_str) {
        Some(g) => Some(
            g.parse::<Ipv4Addr>()
                .map_err(|_| format!("the plugin's ADD result has a malformed gateway {g:?}"))?,
        ),
        None => None,
    };
    Ok(CniAddResult {
        raw,
        address,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_preferring_sandbox_interface() {
        let r = br#"{"cniVersion":"1.1.0",
            "interfaces":[{"name":"weave","mac":"aa:aa:aa:aa:aa:aa"},{"name":"vethwepl1"},{"name":"eth0","sandbox":"/run/netns/x"}],
            "ips":[{"interface":0,"address":"10.32.0.1/12"},{"interface":2,"address":"10.32.0.3/12","gateway":"10.32.0.1"},{"address":"fd00::1/64"}]}"#;
        let p = parse_add_result(r, "eth0").unwrap();
        assert_eq!(p.address, "10.32.0.3/12".parse::<Ipv4Net>().unwrap());
        assert_eq!(p.gateway, Some(Ipv4Addr::new(10, 32, 0, 1)));
        // Without interface indices: the first IPv4 entry.
        let p = parse_add_result(
            br#"{"ips":[{"address":"fd00::2/64"},{"address":"10.1.2.3/24"}]}"#,
            "eth0",
        )
        .unwrap();
        assert_eq!(p.address.to_string(), "10.1.2.3/24");
        assert_eq!(p.gateway, None);
    }

    #[test]
    fn rejects_bad_results() {
        assert!(parse_add_result(b"not json", "eth0")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_add_result(b"{}", "eth0")
            .unwrap_err()
            .contains("no \"ips\""));
        assert!(
            parse_add_result(br#"{"ips":[{"address":"fd00::1/64"}]}"#, "eth0")
                .unwrap_err()
                .contains("no IPv4")
        );
        assert!(parse_add_result(
            br#"{"ips":[{"address":"10.0.0.1/8","gateway":"nope"}]}"#,
            "eth0"
        )
        .unwrap_err()
        .contains("gateway"));
        // Hostile shapes do not panic.
        let _ = parse_add_result(br#"{"ips":[{"interface":18446744073709551615,"address":"10.0.0.1/8"}],"interfaces":5}"#, "eth0");
    }

    #[test]
    fn describes_failures() {
        let (code, msg) = describe_failure(
            br#"{"cniVersion":"1.1.0","code":11,"msg":"IPAM not ready","details":"waiting for peers"}"#,
            b"log line\n",
        );
        assert_eq!(code, Some(11));
        assert_eq!(msg, "code 11: IPAM not ready (waiting for peers)");
        let (code, msg) = describe_failure(b"", b"thread 'main' panicked\n");
        assert_eq!(code, None);
        assert!(msg.contains("panicked"));
        assert_eq!(describe_failure(b"", b"").1, "the plugin printed nothing");
    }
}
