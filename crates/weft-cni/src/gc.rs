//! GC: which of the router's reservations are stale.

use std::collections::HashSet;

use crate::config::Attachment;
use crate::router::Owned;

/// The container IDs the router holds that are not among the valid attachments. Entries that
/// are not containers (`weave:expose`, …) are never stale. Duplicates are reported once, in the
/// router's order.
pub fn stale_ids(owned: &[Owned], valid: &[Attachment]) -> Vec<String> {
    let keep: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let mut seen = HashSet::new();
    owned
        .iter()
        .filter(|o| o.is_container && !keep.contains(o.container_id.as_str()))
        .filter(|o| seen.insert(o.container_id.clone()))
        .map(|o| o.container_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(id: &str, is_container: bool) -> Owned {
        Owned {
            container_id: id.into(),
            addrs: vec!["10.32.0.9/12".into()],
            is_container,
        }
    }

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn table() {
        let o = vec![
            owned("weave:expose", false),
            owned("live", true),
            owned("dead1", true),
            owned("dead2", true),
            owned("dead1", true),
            owned("_", false),
        ];
        assert_eq!(stale_ids(&o, &[att("live")]), vec!["dead1", "dead2"]);
        assert_eq!(
            stale_ids(&o, &[att("live"), att("dead1"), att("dead2")]),
            Vec::<String>::new()
        );
        assert_eq!(stale_ids(&o, &[]), vec!["live", "dead1", "dead2"]);
        assert_eq!(stale_ids(&[], &[att("x")]), Vec::<String>::new());
    }
}
