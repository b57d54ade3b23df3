//! The routers' connections as the lab sees them: which overlay carries each one (the fast
//! path or sleeve), encrypted or not, and why, read from every router's `GET /report`.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::Lab;
use crate::signal;

/// One connection reported by one host's router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConnection {
    /// The host whose router reports it (`h1`, ...).
    pub host: String,
    /// The remote peer as the router names it, e.g. `02:77:00:00:00:02(h2)`.
    pub peer: String,
    /// The connection state: `established`, `pending`, `failed`, ...
    pub state: String,
    /// The overlay serving it (`fastdp`, `sleeve`), once the data plane has attached it.
    pub overlay: Option<String>,
    /// Whether the overlay encrypts, when known.
    pub encrypted: Option<bool>,
    /// The overlay MTU, when known.
    pub mtu: Option<u32>,
    /// Why this overlay (for sleeve: why not the fast path).
    pub why: Option<String>,
}

impl LabConnection {
    /// The connection is up.
    pub fn is_established(&self) -> bool {
        self.state == "established"
    }

    /// The connection is up and carried by `overlay`.
    pub fn served_by(&self, overlay: &str) -> bool {
        self.is_established() && self.overlay.as_deref() == Some(overlay)
    }
}

impl fmt::Display for LabConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {:<24} {:<11} {:<7}",
            self.host,
            self.peer,
            self.state,
            self.overlay.as_deref().unwrap_or("-")
        )?;
        match self.encrypted {
            Some(true) => write!(f, " encrypted  ")?,
            Some(false) => write!(f, " unencrypted")?,
            None => write!(f, " -          ")?,
        }
        if let Some(mtu) = self.mtu {
            write!(f, " mtu={mtu}")?;
        }
        if let Some(why) = &self.why {
            write!(f, " ({why})")?;
        }
        Ok(())
    }
}

/// The connections of every host's router; a router that could not be asked is listed in
/// `unavailable` with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connections {
    /// Every connection, host by host.
    pub list: Vec<LabConnection>,
    /// `host: why` for each router whose report could not be read.
    pub unavailable: Vec<String>,
}

impl Connections {
    /// Every router answered and every connection is up.
    pub fn all_established(&self) -> bool {
        self.unavailable.is_empty() && self.list.iter().all(LabConnection::is_established)
    }

    /// Every router answered and every connection is up and carried by `overlay`.
    pub fn all_served_by(&self, overlay: &str) -> bool {
        self.unavailable.is_empty() && self.list.iter().all(|c| c.served_by(overlay))
    }

    /// One line: how many connections, how many are up, and by which overlay.
    pub fn summary(&self) -> String {
        let up: Vec<&LabConnection> = self.list.iter().filter(|c| c.is_established()).collect();
        let mut overlays: Vec<(String, usize)> = Vec::new();
        for c in &up {
            let name = c.overlay.clone().unwrap_or_else(|| "no overlay yet".into());
            match overlays.iter_mut().find(|(n, _)| *n == name) {
                Some((_, k)) => *k += 1,
                None => overlays.push((name, 1)),
            }
        }
        let by: Vec<String> = overlays.iter().map(|(n, k)| format!("{n} {k}")).collect();
        let mut s = format!("{}/{} connections established", up.len(), self.list.len());
        if !by.is_empty() {
            s.push_str(&format!(" ({})", by.join(", ")));
        }
        if !self.unavailable.is_empty() {
            s.push_str(&format!(
                "; {} router(s) did not report",
                self.unavailable.len()
            ));
        }
        s
    }
}

impl fmt::Display for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.list {
            writeln!(f, "{c}")?;
        }
        for u in &self.unavailable {
            writeln!(f, "{u}")?;
        }
        Ok(())
    }
}

/// The connections in a router's `/report` (`Router.Connections`), reported by `host`.
pub fn parse_report(host: &str, report: &Value) -> Result<Vec<LabConnection>, String> {
    let conns = report
        .pointer("/Router/Connections")
        .ok_or("the report has no Router.Connections")?;
    let Some(conns) = conns.as_array() else {
        // Go's encoding of an empty slice.
        return if conns.is_null() {
            Ok(Vec::new())
        } else {
            Err("Router.Connections is not a list".into())
        };
    };
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    conns
        .iter()
        .map(|c| {
            let attrs = c.get("Attrs").filter(|a| a.is_object());
            let attr = |key: &str| attrs.and_then(|a| text(a, key));
            Ok(LabConnection {
                host: host.to_string(),
                peer: text(c, "Info")
                    .or_else(|| text(c, "Address"))
                    .ok_or("a connection has neither Info nor Address")?,
                state: text(c, "State").ok_or("a connection has no State")?,
                overlay: attr("name"),
                encrypted: attr("encrypted").and_then(|e| e.parse().ok()),
                mtu: attr("mtu").and_then(|m| m.parse().ok()),
                why: attr("why"),
            })
        })
        .collect()
}

impl Lab {
    /// Every running router's connections, from its `GET /report`.
    pub fn connections(&self) -> Connections {
        let mut out = Connections::default();
        for h in self.hosts() {
            if self.router_pid(h.number()).is_none() {
                continue;
            }
            let parsed = self
                .http(h.number())
                .get_json::<Value>("/report")
                .map_err(|e| e.to_string())
                .and_then(|r| parse_report(h.name(), &r));
            match parsed {
                Ok(list) => out.list.extend(list),
                Err(e) => out
                    .unavailable
                    .push(format!("{}: no connection report: {e}", h.name())),
            }
        }
        out
    }

    /// Asks for the connections until `done` holds, `timeout` passes, a router cannot report
    /// (waiting would not change that), or a stop is requested; returns the last answer.
    pub fn wait_connections(
        &self,
        timeout: Duration,
        done: impl Fn(&Connections) -> bool,
    ) -> Connections {
        let start = Instant::now();
        loop {
            let c = self.connections();
            if done(&c)
                || !c.unavailable.is_empty()
                || start.elapsed() >= timeout
                || signal::stop_requested()
            {
                return c;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(conns: Value) -> Value {
        json!({"Ready": true, "Router": {"Name": "02:77:00:00:00:01", "Connections": conns}})
    }

    #[test]
    fn parses_what_the_router_reports() {
        let r = report(json!([
            {"Address": "198.18.0.2:58264", "Info": "02:77:00:00:00:02(h2)", "Outbound": false,
             "State": "established",
             "Attrs": {"encrypted": "false", "mtu": "1438", "name": "fastdp",
                       "why": "fastdp: heartbeats healthy"}},
            {"Address": "198.18.0.3:6783", "Info": "02:77:00:00:00:03(h3)", "Outbound": true,
             "State": "pending", "Attrs": null}
        ]));
        let list = parse_report("h1", &r).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].served_by("fastdp"));
        assert_eq!(list[0].mtu, Some(1438));
        assert_eq!(list[0].encrypted, Some(false));
        assert!(!list[1].is_established());
        assert_eq!(list[1].overlay, None);
        let line = list[0].to_string();
        assert!(line.starts_with("h1 -> 02:77:00:00:00:02(h2)"), "{line}");
        assert!(
            line.contains("fastdp") && line.contains("mtu=1438"),
            "{line}"
        );

        let c = Connections {
            list,
            unavailable: Vec::new(),
        };
        assert!(!c.all_established());
        assert!(!c.all_served_by("fastdp"));
        assert_eq!(c.summary(), "1/2 connections established (fastdp 1)");
    }

    #[test]
    fn empty_and_malformed_reports() {
        assert_eq!(
            parse_report("h1", &report(Value::Null)).unwrap(),
            Vec::new()
        );
        assert_eq!(parse_report("h1", &report(json!([]))).unwrap(), Vec::new());
        assert!(parse_report("h1", &json!({"Router": {}})).is_err());
        assert!(parse_report("h1", &report(json!("x"))).is_err());
        assert!(parse_report("h1", &report(json!([{"Info": "p"}]))).is_err());
        let none = Connections {
            list: Vec::new(),
            unavailable: vec!["h2: no connection report: 404".into()],
        };
        assert!(!none.all_established());
        assert!(!none.all_served_by("sleeve"));
        assert_eq!(
            none.summary(),
            "0/0 connections established; 1 router(s) did not report"
        );
        // A single-host lab has nothing to wait for.
        assert!(Connections::default().all_served_by("fastdp"));
    }
}
