//! Delegation to a CNI IPAM plugin: find it in CNI_PATH and run it with the same environment
//! (bar CNI_COMMAND where we need another verb) and the same stdin bytes.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use crate::env::Command;
use crate::error::{CniError, ERR_DELEGATE};
use crate::result::CniResult;

/// Finds `plugin` in the `CNI_PATH` directories (first executable regular file wins).
pub fn find_plugin(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    if dirs.is_empty() {
        return Err(CniError::env(format!(
            "required env variables [CNI_PATH] missing: needed to find the IPAM plugin {plugin:?}"
        ))
        .with_details("the runtime must set CNI_PATH to the directories holding CNI plugins"));
    }
    for d in dirs {
        let p = d.join(plugin);
        if let Ok(md) = std::fs::metadata(&p) {
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(p);
            }
        }
    }
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(CniError::new(
        ERR_DELEGATE,
        format!(
            "failed to find IPAM plugin {plugin:?} in CNI_PATH [{}]",
            list.join(":")
        ),
    )
    .with_details(
        "install the plugin named by ipam.type into one of those directories, or fix ipam.type",
    ))
}

/// A delegated IPAM plugin bound to one invocation's environment and stdin.
#[derive(Debug, Clone)]
pub struct Delegate<'a> {
    /// The plugin's name (`ipam.type`).
    pub name: String,
    /// Its path.
    pub binary: PathBuf,
    env: &'a HashMap<String, String>,
    stdin: &'a [u8],
}

impl<'a> Delegate<'a> {
    /// Locates `name` via CNI_PATH (`dirs`).
    pub fn new(
        name: &str,
        dirs: &[PathBuf],
        env: &'a HashMap<String, String>,
        stdin: &'a [u8],
    ) -> Result<Delegate<'a>, CniError> {
        Ok(Delegate {
            name: name.to_string(),
            binary: find_plugin(name, dirs)?,
            env,
            stdin,
        })
    }

    /// Runs the plugin with `command`; returns its stdout on success, its error otherwise.
    pub fn exec(&self, command: Command) -> Result<Vec<u8>, CniError> {
        exec_plugin(&self.binary, &self.name, command, self.env, self.stdin)
    }

    /// ADD: returns the (abbreviated) result.
    pub fn add(&self) -> Result<CniResult, CniError> {
        let out = self.exec(Command::Add)?;
        CniResult::from_slice(&out).map_err(|e| {
            CniError::new(
                ERR_DELEGATE,
                format!(
                    "IPAM plugin {:?} returned an unusable result: {}",
                    self.name, e.msg
                ),
            )
        })
    }

    /// DEL.
    pub fn del(&self) -> Result<(), CniError> {
        self.exec(Command::Del).map(drop)
    }
}

/// Runs a plugin binary. The environment is ours, with every `CNI_*` variable replaced by the
/// invocation's map and `CNI_COMMAND` set to `command`; stdin is passed byte for byte; its stderr
/// goes to ours.
pub fn exec_plugin(
    binary: &Path,
    name: &str,
    command: Command,
    env: &HashMap<String, String>,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let mut p = Proc::new(binary);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CNI_") && !env.contains_key(&*k.to_string_lossy()) {
            p.env_remove(&k);
        }
    }
    p.envs(env.iter());
    p.env("CNI_COMMAND", command.as_str());
    p.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = p.spawn().map_err(|e| {
        CniError::new(
            ERR_DELEGATE,
            format!("failed to run IPAM plugin {}: {e}", binary.display()),
        )
        .with_details("check that the plugin binary is executable and built for this machine")
    })?;
    let mut child_in = child.stdin.take();
    let output = std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(w) = child_in.as_mut() {
                // A plugin that exits without reading stdin gives EPIPE; its exit status tells.
                let _ = w.write_all(stdin);
            }
            drop(child_in);
        });
        child.wait_with_output()
    })
    .map_err(|e| {
        CniError::new(
            ERR_DELEGATE,
            format!("failed to wait for IPAM plugin {name:?}: {e}"),
        )
    })?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    match CniError::from_plugin_output(&output.stdout) {
        Some(e) => Err(e.context(format!("IPAM plugin {name:?} {} failed", command.as_str()))),
        None => Err(CniError::new(
            ERR_DELEGATE,
            format!(
                "IPAM plugin {name:?} {} failed ({}) without a CNI error on stdout: {}",
                command.as_str(),
                output.status,
                String::from_utf8_lossy(&output.stdout).trim()
            ),
        )
        .with_details("see the plugin's messages on stderr (kubelet/containerd logs)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn find_in_path_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::write(a.path().join("ipam"), "not executable").unwrap();
        let want = script(b.path(), "ipam", "exit 0");
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_plugin("ipam", &dirs).unwrap(), want);
        let e = find_plugin("other", &dirs).unwrap_err();
        assert_eq!(e.code, ERR_DELEGATE);
        assert!(e.msg.contains("other"));
        assert_eq!(find_plugin("ipam", &[]).unwrap_err().code, 4);
    }

    #[test]
    fn same_env_and_stdin() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("seen");
        script(
            d.path(),
            "echoer",
            &format!(
                "cat > {o}.stdin\nenv | grep '^CNI_' | sort > {o}.env\necho '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.1.0.9/16\",\"gateway\":\"10.1.0.1\"}}]}}'",
                o = out.display()
            ),
        );
        let env: HashMap<String, String> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", d.path().to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let stdin =
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft-net","ipam":{"type":"echoer"}}"#;
        let dl = Delegate::new("echoer", &[d.path().to_path_buf()], &env, stdin).unwrap();
        let r = dl.add().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.9/16");
        assert_eq!(fs::read(out.with_extension("stdin")).unwrap(), stdin);
        let seen_env = fs::read_to_string(out.with_extension("env")).unwrap();
        assert!(seen_env.contains("CNI_COMMAND=ADD\n"));
        assert!(seen_env.contains("CNI_NETNS=/run/netns/x\n"));
        dl.del().unwrap();
        let seen_env = fs::read_to_string(out.with_extension("env")).unwrap();
        assert!(seen_env.contains("CNI_COMMAND=DEL\n"));
    }

    #[test]
    fn errors_pass_through() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "fails",
            "echo '{\"code\":11,\"msg\":\"busy\"}'; exit 1",
        );
        script(d.path(), "crashes", "echo boom >&2; exit 3");
        script(d.path(), "lies", "echo 'not a result'");
        let env = HashMap::new();
        let dirs = [d.path().to_path_buf()];
        let e = Delegate::new("fails", &dirs, &env, b"{}")
            .unwrap()
            .add()
            .unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("busy") && e.msg.contains("fails"));
        let e = Delegate::new("crashes", &dirs, &env, b"{}")
            .unwrap()
            .del()
            .unwrap_err();
        assert_eq!(e.code, ERR_DELEGATE);
        let e = Delegate::new("lies", &dirs, &env, b"{}")
            .unwrap()
            .add()
            .unwrap_err();
        assert_eq!(e.code, ERR_DELEGATE);
    }
}
