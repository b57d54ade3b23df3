//! Pod egress masquerading with nftables, in Weft's own table `ip weft`.
//!
//! The whole table is rendered from a [`MasqConfig`] ([`render`], pure) and applied
//! atomically with `nft -f -`: one transaction that creates the table if missing, deletes
//! it, and creates it again with its full contents, so a reader never sees a half-updated
//! ruleset and no stale rule survives (Kubernetes' knftables works the same way).
//!
//! The rules are Weave's (`net/expose.go`, `ConfigureIPTables`):
//!
//! ```text
//! postrouting (nat, srcnat):
//!   ip daddr @no_masq_local return              (only with NO_MASQ_LOCAL ranges)
//!   ip saddr RANGE ip daddr 224.0.0.0/4 return
//!   ip daddr RANGE ip saddr != RANGE masquerade
//!   ip saddr RANGE ip daddr != RANGE masquerade
//! forward (filter):
//!   iifname "weave" accept
//!   oifname "weave" ct state established,related accept
//! ```
//!
//! An accept in this table does not override a drop in another table at the same hook
//! (e.g. an iptables `FORWARD DROP` policy): that is for the caller to check.

use crate::netlink::validate_ifname;
use crate::{Error, Result};
use ipnet::Ipv4Net;
use std::io::Write;
use std::process::{Command, Stdio};

/// The nftables table Weft owns (family `ip`).
pub const TABLE: &str = "weft";

/// What to masquerade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqConfig {
    /// The pod address range (IPALLOC_RANGE), e.g. 10.32.0.0/12.
    pub range: Ipv4Net,
    /// This node's own IPAM ranges: traffic to them keeps its source address (Weave's
    /// NO_MASQ_LOCAL, for `externalTrafficPolicy: Local`). Empty: no such exception.
    pub no_masq_local: Vec<Ipv4Net>,
    /// The bridge, usually "weave".
    pub bridge: String,
}

fn check(cfg: &MasqConfig) -> Result<()> {
    validate_ifname(&cfg.bridge)?;
    if cfg
        .bridge
        .contains(['"', '\\', '\'', ';', '#', '{', '}', '$'])
    {
        return Err(Error::InvalidArgument(format!(
            "bridge name {:?} contains characters nft cannot take in a quoted name",
            cfg.bridge
        )));
    }
    if cfg.range.prefix_len() == 0 {
        return Err(Error::InvalidArgument(
            "masquerade range 0.0.0.0/0 would match every address; give the pod range".into(),
        ));
    }
    Ok(())
}

/// The nft script for `cfg` (deterministic; the same config renders the same text).
pub fn render(cfg: &MasqConfig) -> Result<String> {
    check(cfg)?;
    let range = cfg.range.trunc();
    let local = Ipv4Net::aggregate(
        &cfg.no_masq_local
            .iter()
            .map(|n| n.trunc())
            .collect::<Vec<_>>(),
    );
    let br = &cfg.bridge;
    let mut s = String::new();
    s.push_str(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n"));
    s.push_str(&format!("table ip {TABLE} {{\n"));
    if !local.is_empty() {
        let elems: Vec<String> = local.iter().map(|n| n.to_string()).collect();
        s.push_str("\tset no_masq_local {\n\t\ttype ipv4_addr\n\t\tflags interval\n");
        s.push_str(&format!(
            "\t\telements = {{ {} }}\n\t}}\n\n",
            elems.join(", ")
        ));
    }
    s.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    if !local.is_empty() {
        s.push_str("\t\tip daddr @no_masq_local return\n");
    }
    s.push_str(&format!(
        "\t\tip saddr {range} ip daddr 224.0.0.0/4 return\n"
    ));
    s.push_str(&format!(
        "\t\tip daddr {range} ip saddr != {range} masquerade\n"
    ));
    s.push_str(&format!(
        "\t\tip saddr {range} ip daddr != {range} masquerade\n"
    ));
    s.push_str("\t}\n\n");
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    s.push_str(&format!("\t\tiifname \"{br}\" accept\n"));
    s.push_str(&format!(
        "\t\toifname \"{br}\" ct state established,related accept\n"
    ));
    s.push_str("\t}\n}\n");
    Ok(s)
}

fn nft(script: &str, what: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(
                "the nft binary (install nftables: apt-get install nftables)".into(),
            ),
            _ => Error::io("run nft", e),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::io("write the ruleset to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("wait for nft", e))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Error::Io {
            op: format!("nft -f - ({what}): {err}"),
            source: std::io::Error::other(format!(
                "nft exited with {}; is the nf_tables/nft_masq module available?",
                out.status
            )),
        })
    }
}

/// Replaces table `ip weft` with the rules for `cfg`, atomically, in the calling
/// thread's network namespace.
pub fn apply(cfg: &MasqConfig) -> Result<()> {
    let script = render(cfg)?;
    nft(&script, &format!("apply masquerading for {}", cfg.range))
}

/// Deletes table `ip weft` (absent -> Ok).
pub fn remove() -> Result<()> {
    nft(
        &format!("table ip {TABLE}\ndelete table ip {TABLE}\n"),
        "remove Weft's table",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(local: &[&str]) -> MasqConfig {
        MasqConfig {
            range: "10.32.0.0/12".parse().unwrap(),
            no_masq_local: local.iter().map(|s| s.parse().unwrap()).collect(),
            bridge: "weave".into(),
        }
    }

    #[test]
    fn renders_weaves_rules() {
        let got = render(&cfg(&[])).unwrap();
        let want = "table ip weft
delete table ip weft
table ip weft {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.32.0.0/12 ip daddr 224.0.0.0/4 return
\t\tip daddr 10.32.0.0/12 ip saddr != 10.32.0.0/12 masquerade
\t\tip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"weave\" accept
\t\toifname \"weave\" ct state established,related accept
\t}
}
";
        assert_eq!(got, want);
    }

    #[test]
    fn no_masq_local_set_comes_first_and_is_merged() {
        let got = render(&cfg(&[
            "10.32.0.0/14",
            "10.36.0.0/14",
            "10.32.1.0/24",
            "10.40.0.7/32",
        ]))
        .unwrap();
        assert!(
            got.contains("\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.32.0.0/13, 10.40.0.7/32 }\n"),
            "{got}"
        );
        let first_rule = got
            .lines()
            .find(|l| l.contains("return") || l.contains("masquerade"))
            .unwrap();
        assert_eq!(first_rule, "\t\tip daddr @no_masq_local return");
        // Host bits in the range are dropped.
        let mut c = cfg(&[]);
        c.range = "10.32.0.1/12".parse().unwrap();
        assert!(render(&c).unwrap().contains("ip saddr 10.32.0.0/12 "));
    }

    #[test]
    fn bad_input_is_refused() {
        let mut c = cfg(&[]);
        c.bridge = "we\"ave".into();
        assert!(matches!(render(&c), Err(Error::InvalidArgument(_))));
        c.bridge = "".into();
        assert!(render(&c).is_err());
        let mut c = cfg(&[]);
        c.range = "0.0.0.0/0".parse().unwrap();
        assert!(matches!(render(&c), Err(Error::InvalidArgument(_))));
    }
}
