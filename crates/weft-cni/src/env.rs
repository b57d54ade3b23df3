//! The CNI_* environment: which verb, which container, which netns, and validation.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::CniError;

/// The verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Garbage-collect stale reservations (1.1.0).
    Gc,
    /// Readiness (1.1.0).
    Status,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// The verb as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// Reads `CNI_COMMAND` (code 4 when missing or unknown).
pub fn command(env: &HashMap<String, String>) -> Result<Command, CniError> {
    match env.get("CNI_COMMAND").map(String::as_str) {
        None | Some("") => Err(
            CniError::env("required env variables [CNI_COMMAND] missing").with_details(
                "the runtime must set CNI_COMMAND to ADD, DEL, CHECK, VERSION, GC or STATUS",
            ),
        ),
        Some(s) => Command::parse(s).ok_or_else(|| {
            CniError::env(format!("unknown CNI_COMMAND: {s:?}"))
                .with_details("expected ADD, DEL, CHECK, VERSION, GC or STATUS")
        }),
    }
}

/// The validated CNI environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID` (validated for ADD/DEL/CHECK; may be empty for GC/STATUS).
    pub container_id: String,
    /// `CNI_NETNS`, `None` when unset or empty.
    pub netns: Option<String>,
    /// `CNI_IFNAME` (validated for ADD/DEL/CHECK).
    pub ifname: String,
    /// `CNI_ARGS` pairs, in order (malformed pairs dropped).
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` directories, in order (empty entries dropped).
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads and validates the environment for `command`. Missing required variables give code 4
    /// naming them all; a malformed container ID or interface name gives code 7.
    pub fn from_map(command: Command, env: &HashMap<String, String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Version | Command::Gc | Command::Status => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|k| get(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::env(format!(
                "required env variables [{}] missing",
                missing.join(",")
            ))
            .with_details(format!(
                "CNI_COMMAND={} needs {}; this plugin must be run by a CNI runtime",
                command.as_str(),
                required.join(", ")
            )));
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if !required.is_empty() {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        Ok(CniEnv {
            command,
            container_id,
            netns: get("CNI_NETNS"),
            ifname,
            args: parse_cni_args(env.get("CNI_ARGS").map(String::as_str).unwrap_or("")),
            path: parse_cni_path(env.get("CNI_PATH").map(String::as_str).unwrap_or("")),
        })
    }

    /// The value of a `CNI_ARGS` key, if present.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `CNI_ARGS` (`K=V;K2=V2`). Unknown keys are kept (the caller ignores what it does not
/// use); pairs without `=` or with an empty key are dropped rather than failing the operation.
pub fn parse_cni_args(s: &str) -> Vec<(String, String)> {
    s.split(';')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Splits `CNI_PATH` on `:`.
pub fn parse_cni_path(s: &str) -> Vec<PathBuf> {
    s.split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The spec's container ID rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (code 7 otherwise).
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut bytes = id.bytes();
    let ok = match bytes.next() {
        Some(first) => {
            first.is_ascii_alphanumeric()
                && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CniError::config(format!("invalid CNI_CONTAINERID {id:?}"))
            .with_details("a container ID must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"))
    }
}

/// The spec's interface name rule: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 characters")
    } else if name == "." || name == ".." {
        Some("it is \".\" or \"..\"")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        Some("it contains '/', ':' or whitespace")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(
            CniError::config(format!("invalid CNI_IFNAME {name:?}: {why}")).with_details(
                "interface names are 1-15 characters, not . or .., without / : or whitespace",
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn command_parsing() {
        assert_eq!(
            command(&map(&[("CNI_COMMAND", "ADD")])).unwrap(),
            Command::Add
        );
        assert_eq!(command(&map(&[])).unwrap_err().code, 4);
        assert_eq!(command(&map(&[("CNI_COMMAND", "")])).unwrap_err().code, 4);
        let e = command(&map(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("FROB"));
        for c in ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"] {
            assert_eq!(Command::parse(c).unwrap().as_str(), c);
        }
    }

    #[test]
    fn missing_vars_are_all_named() {
        let e = CniEnv::from_map(Command::Add, &map(&[("CNI_IFNAME", "eth0")])).unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS] missing"
        );
        // Empty counts as missing.
        let e = CniEnv::from_map(
            Command::Check,
            &map(&[
                ("CNI_CONTAINERID", ""),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.msg, "required env variables [CNI_CONTAINERID] missing");
    }

    #[test]
    fn del_needs_no_netns_and_gc_needs_nothing() {
        let e = CniEnv::from_map(
            Command::Del,
            &map(&[
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", ""),
            ]),
        )
        .unwrap();
        assert_eq!(e.netns, None);
        let e = CniEnv::from_map(Command::Gc, &map(&[("CNI_PATH", "/a::/b")])).unwrap();
        assert_eq!(e.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        CniEnv::from_map(Command::Status, &map(&[])).unwrap();
        CniEnv::from_map(Command::Version, &map(&[])).unwrap();
    }

    #[test]
    fn container_id_rule() {
        for ok in ["a", "abc123", "A.b_c-d", "0123456789abcdef0123"] {
            validate_container_id(ok).unwrap();
        }
        for bad in [
            "",
            "-abc",
            "_a",
            ".a",
            "a/b",
            "a b",
            "weave:expose",
            "a\u{e9}",
            "../x",
        ] {
            assert_eq!(validate_container_id(bad).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn ifname_rule() {
        for ok in ["eth0", "net1", "a", "123456789012345", "e.1"] {
            validate_ifname(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn cni_args_table() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("IgnoreUnknown=1", &[("IgnoreUnknown", "1")]),
            (
                "IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns",
                &[
                    ("IgnoreUnknown", "1"),
                    ("K8S_POD_NAME", "p"),
                    ("K8S_POD_NAMESPACE", "ns"),
                ],
            ),
            ("FOO=bar;;novalue;=x;A=b=c", &[("FOO", "bar"), ("A", "b=c")]),
            ("EMPTY=", &[("EMPTY", "")]),
        ];
        for (input, want) in cases {
            let got = parse_cni_args(input);
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{input}");
        }
        let env = CniEnv::from_map(
            Command::Del,
            &map(&[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "FOO=bar;K8S_POD_NAME=web"),
            ]),
        )
        .unwrap();
        assert_eq!(env.arg("K8S_POD_NAME"), Some("web"));
        assert_eq!(env.arg("NOPE"), None);
    }

    #[test]
    fn bad_ids_are_code_7_after_presence() {
        let e = CniEnv::from_map(
            Command::Add,
            &map(&[
                ("CNI_CONTAINERID", "bad/id"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
        let e = CniEnv::from_map(
            Command::Add,
            &map(&[
                ("CNI_CONTAINERID", "ok"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "way-too-long-name"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
    }
}
