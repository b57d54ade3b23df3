//! The pod-to-pod reachability matrix.
use crate::ping::PingOutcome;
use std::fmt;
use std::net::Ipv4Addr;

/// Who pinged whom, and what came back. Row = source pod, column = destination pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Pod names (`h1p1`, ...), in row/column order.
    pub names: Vec<String>,
    /// Pod addresses, same order.
    pub addrs: Vec<Ipv4Addr>,
    /// `cells[from][to]`; `None` on the diagonal.
    pub cells: Vec<Vec<Option<PingOutcome>>>,
}

/// One failed pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPair {
    pub from: String,
    pub to: String,
    pub to_addr: Ipv4Addr,
    pub reason: String,
}

impl Matrix {
    /// Number of ordered pairs (excluding the diagonal).
    pub fn total(&self) -> usize {
        self.cells.iter().flatten().filter(|c| c.is_some()).count()
    }

    /// Number of ordered pairs that got a reply.
    pub fn reachable(&self) -> usize {
        self.cells
            .iter()
            .flatten()
            .filter(|c| matches!(c, Some(o) if o.is_ok()))
            .count()
    }

    /// True when every pair got a reply (vacuously true with fewer than two pods).
    pub fn all_ok(&self) -> bool {
        self.reachable() == self.total()
    }

    /// The outcome for `from` → `to` (pod names); `None` for unknown names or the diagonal.
    pub fn get(&self, from: &str, to: &str) -> Option<&PingOutcome> {
        let f = self.names.iter().position(|n| n == from)?;
        let t = self.names.iter().position(|n| n == to)?;
        self.cells.get(f)?.get(t)?.as_ref()
    }

    /// Every pair that failed, in row order.
    pub fn failed(&self) -> Vec<FailedPair> {
        let mut out = Vec::new();
        for (f, row) in self.cells.iter().enumerate() {
            for (t, cell) in row.iter().enumerate() {
                if let Some(PingOutcome::Failed { reason }) = cell {
                    out.push(FailedPair {
                        from: self.names[f].clone(),
                        to: self.names[t].clone(),
                        to_addr: self.addrs[t],
                        reason: reason.clone(),
                    });
                }
            }
        }
        out
    }

    /// Same reachability (ignoring RTTs and failure reasons).
    pub fn same_reachability(&self, other: &Matrix) -> bool {
        self.names == other.names
            && self.addrs == other.addrs
            && self
                .cells
                .iter()
                .flatten()
                .map(|c| c.as_ref().map(PingOutcome::is_ok))
                .eq(other
                    .cells
                    .iter()
                    .flatten()
                    .map(|c| c.as_ref().map(PingOutcome::is_ok)))
    }

    /// The one-line summary, e.g. `6/6 pairs reachable`.
    pub fn summary(&self) -> String {
        format!("{}/{} pairs reachable", self.reachable(), self.total())
    }
}

fn cell_text(c: &Option<PingOutcome>) -> String {
    match c {
        None => "-".to_string(),
        Some(PingOutcome::Reply { rtt, .. }) => {
            let ms = rtt.as_secs_f64() * 1000.0;
            if ms < 10.0 {
                format!("ok {ms:.2}ms")
            } else {
                format!("ok {ms:.0}ms")
            }
        }
        Some(PingOutcome::Failed { .. }) => "FAIL".to_string(),
    }
}

impl fmt::Display for Matrix {
    /// The table, then the failures with their reasons, then the summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<Vec<String>> = self
            .cells
            .iter()
            .map(|row| row.iter().map(cell_text).collect())
            .collect();
        let first = self
            .names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max("to→".chars().count());
        let width = texts
            .iter()
            .flatten()
            .map(|t| t.chars().count())
            .chain(self.names.iter().map(|n| n.chars().count()))
            .max()
            .unwrap_or(1);
        write!(f, "{:>first$} ", "to→")?;
        for n in &self.names {
            write!(f, " {n:<width$}")?;
        }
        writeln!(f)?;
        for (name, row) in self.names.iter().zip(&texts) {
            write!(f, "{name:<first$} ")?;
            for t in row {
                write!(f, " {t:<width$}")?;
            }
            writeln!(f)?;
        }
        for p in self.failed() {
            writeln!(f, "  {} → {} ({}): {}", p.from, p.to, p.to_addr, p.reason)?;
        }
        write!(f, "{}", self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Matrix {
        let ok = |us| {
            Some(PingOutcome::Reply {
                rtt: Duration::from_micros(us),
                attempt: 1,
            })
        };
        Matrix {
            names: vec!["h1p1".into(), "h1p2".into(), "h2p1".into()],
            addrs: vec![
                Ipv4Addr::new(10, 32, 0, 1),
                Ipv4Addr::new(10, 32, 0, 2),
                Ipv4Addr::new(10, 40, 0, 1),
            ],
            cells: vec![
                vec![None, ok(80), ok(250)],
                vec![
                    ok(70),
                    None,
                    Some(PingOutcome::Failed {
                        reason: "no reply".into(),
                    }),
                ],
                vec![ok(12_345), ok(300), None],
            ],
        }
    }

    #[test]
    fn counts_and_lookup() {
        let m = sample();
        assert_eq!(m.total(), 6);
        assert_eq!(m.reachable(), 5);
        assert!(!m.all_ok());
        assert_eq!(m.summary(), "5/6 pairs reachable");
        assert!(m.get("h1p2", "h2p1").is_some_and(|o| !o.is_ok()));
        assert!(m.get("h1p1", "h1p1").is_none());
        assert!(m.get("h9p9", "h1p1").is_none());
        let failed = m.failed();
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (failed[0].from.as_str(), failed[0].to.as_str()),
            ("h1p2", "h2p1")
        );
    }

    #[test]
    fn renders_table() {
        let text = sample().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], " to→  h1p1      h1p2      h2p1     ");
        assert_eq!(lines[1], "h1p1  -         ok 0.08ms ok 0.25ms");
        assert_eq!(lines[2], "h1p2  ok 0.07ms -         FAIL     ");
        assert_eq!(lines[3], "h2p1  ok 12ms   ok 0.30ms -        ");
        assert_eq!(lines[4], "  h1p2 → h2p1 (10.40.0.1): no reply");
        assert_eq!(lines[5], "5/6 pairs reachable");
    }

    #[test]
    fn reachability_comparison_ignores_rtt() {
        let a = sample();
        let mut b = sample();
        b.cells[0][1] = Some(PingOutcome::Reply {
            rtt: Duration::from_millis(5),
            attempt: 2,
        });
        assert!(a.same_reachability(&b));
        b.cells[0][1] = Some(PingOutcome::Failed { reason: "x".into() });
        assert!(!a.same_reachability(&b));
    }
}
