//! Overlay negotiation (the `Overlays` handshake feature) and the encoding of
//! overlay control messages on the mesh TCP connection.
//!
//! Weft advertises its fast path under its own name, [`FASTDP_OVERLAY`]
//! (`weft-vxlan`), never Weave's `fastdp`, so a Weave peer never tries it,
//! plus [`SLEEVE_OVERLAY`]. The common overlays are the intersection, in the
//! order of the **dialling** side's list (Weave's rule: both ends must agree
//! on the indices, which are carried in every control message). A Weave 2.8
//! peer (`fastdp sleeve`) thus shares only `sleeve`, at index 0.
//!
//! Control messages travel as protocol tag 7 with payload
//! `[overlay index][sub-tag][msg]` ([`weft_wire::framing::OverlaySwitchMsg`]),
//! or — when the remote sent no `Overlays` feature at all (compat mode, sleeve
//! only) — as top-level tags 1–3 equal to the sleeve sub-tags.

use weft_wire::framing::{tag, MsgError, OverlaySwitchMsg, ProtocolMsg};

/// The name Weft advertises for its VXLAN fast path.
pub const FASTDP_OVERLAY: &str = "weft-vxlan";
/// The name of the Weave-compatible userspace overlay.
pub const SLEEVE_OVERLAY: &str = "sleeve";

/// Sleeve control sub-tags (equal to the legacy top-level tags 1–3).
pub mod sleeve_tag {
    /// `ProtocolConnectionEstablished`: a heartbeat arrived (empty payload).
    pub const CONNECTION_ESTABLISHED: u8 = 1;
    /// `ProtocolFragmentationReceived`: the fragmentation test arrived.
    pub const FRAGMENTATION_RECEIVED: u8 = 2;
    /// `ProtocolPMTUVerified`: a PMTU probe arrived (payload: u16 BE MTU).
    pub const PMTU_VERIFIED: u8 = 3;
}

/// Fast-path control sub-tags.
pub mod fastdp_tag {
    /// A heartbeat arrived (payload: its u64 BE sequence number).
    pub const HEARTBEAT_ACK: u8 = 0;
}

/// The overlays Weft implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OverlayKind {
    /// The kernel VXLAN fast path (`weft-vxlan`).
    Fastdp,
    /// Userspace UDP encapsulation (`sleeve`).
    Sleeve,
}

impl OverlayKind {
    /// The advertised name.
    pub fn name(self) -> &'static str {
        match self {
            OverlayKind::Fastdp => FASTDP_OVERLAY,
            OverlayKind::Sleeve => SLEEVE_OVERLAY,
        }
    }

    /// The short name used in status output (`fastdp` / `sleeve`).
    pub fn status_name(self) -> &'static str {
        match self {
            OverlayKind::Fastdp => "fastdp",
            OverlayKind::Sleeve => "sleeve",
        }
    }

    /// The overlay advertised under `name`, if we implement it.
    pub fn from_name(name: &str) -> Option<OverlayKind> {
        match name {
            FASTDP_OVERLAY => Some(OverlayKind::Fastdp),
            SLEEVE_OVERLAY => Some(OverlayKind::Sleeve),
            _ => None,
        }
    }
}

/// Our overlays in preference order.
pub fn local_overlays(fastdp_enabled: bool) -> Vec<OverlayKind> {
    if fastdp_enabled {
        vec![OverlayKind::Fastdp, OverlayKind::Sleeve]
    } else {
        vec![OverlayKind::Sleeve]
    }
}

/// The value of the `Overlays` feature for our overlays (space separated).
pub fn overlays_feature(ours: &[OverlayKind]) -> String {
    ours.iter().map(|o| o.name()).collect::<Vec<_>>().join(" ")
}

/// Errors of negotiation and control-message handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No overlay is supported by both sides.
    #[error("no overlays in common with peer (we offer {ours:?}, the peer offers {theirs:?})")]
    NoCommonOverlays {
        /// What we offered.
        ours: String,
        /// What the peer offered.
        theirs: String,
    },
    /// A control message is malformed.
    #[error("malformed overlay control message: {0}")]
    Malformed(#[from] MsgError),
    /// The message is not an overlay control message.
    #[error("protocol message with tag {0} is not an overlay control message")]
    NotControl(u8),
    /// Compat mode only has sub-tags 1–3.
    #[error(
        "sub-tag {0} cannot be sent to a peer without the Overlays feature (only 1-3 exist there)"
    )]
    NoCompatTag(u8),
    /// The overlay index is not one of the common overlays.
    #[error("overlay control message for unknown overlay index {0}")]
    UnknownIndex(u8),
    /// A legacy (tag 1–3) message on a connection using the overlay switch,
    /// or an indexed one on a compat connection.
    #[error("overlay control message in the wrong framing for this connection ({0})")]
    WrongFraming(&'static str),
}

/// The result of negotiating overlays for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Negotiation {
    /// The remote sent no `Overlays` feature: sleeve only, control messages
    /// on top-level tags 1–3.
    Compat,
    /// The common overlays; the position is the index in control messages.
    Common(Vec<OverlayKind>),
}

/// Computes the common overlays. `theirs` is the remote's `Overlays` feature
/// split on whitespace (`None` if absent); the order is the dialling side's.
pub fn negotiate(
    ours: &[OverlayKind],
    theirs: Option<&[String]>,
    we_are_outbound: bool,
) -> Result<Negotiation, ControlError> {
    let Some(theirs) = theirs else {
        return Ok(Negotiation::Compat);
    };
    let theirs_known: Vec<OverlayKind> = theirs
        .iter()
        .filter_map(|n| OverlayKind::from_name(n))
        .collect();
    let ordering: Vec<OverlayKind> = if we_are_outbound {
        ours.to_vec()
    } else {
        theirs_known.clone()
    };
    let mut common: Vec<OverlayKind> = Vec::new();
    for o in ordering {
        if ours.contains(&o) && theirs_known.contains(&o) && !common.contains(&o) {
            common.push(o);
        }
    }
    // Indices are one byte.
    common.truncate(256);
    if common.is_empty() {
        return Err(ControlError::NoCommonOverlays {
            ours: overlays_feature(ours),
            theirs: theirs.join(" "),
        });
    }
    Ok(Negotiation::Common(common))
}

/// How one overlay's control messages are framed on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRoute {
    /// Tag 7 with this overlay index.
    Indexed(u8),
    /// Top-level tags 1–3 (compat, sleeve only).
    Compat,
}

/// Frames a control message of an overlay for the TCP connection.
pub fn encode_control(
    route: ControlRoute,
    sub_tag: u8,
    msg: &[u8],
) -> Result<ProtocolMsg, ControlError> {
    match route {
        ControlRoute::Indexed(index) => Ok(ProtocolMsg::OverlayControl(
            OverlaySwitchMsg {
                overlay_index: index,
                sub_tag,
                msg: msg.to_vec(),
            }
            .encode(),
        )),
        ControlRoute::Compat => {
            if !(tag::RESERVED1..=tag::RESERVED3).contains(&sub_tag) {
                return Err(ControlError::NoCompatTag(sub_tag));
            }
            Ok(ProtocolMsg::Reserved {
                tag: sub_tag,
                payload: msg.to_vec(),
            })
        }
    }
}

/// A control message received on the TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingControl {
    /// The overlay index (tag 7), or `None` for a legacy tag 1–3 message.
    pub overlay_index: Option<u8>,
    /// The overlay's sub-tag.
    pub sub_tag: u8,
    /// The overlay's message.
    pub msg: Vec<u8>,
}

/// Unwraps a control message handed over by the mesh (`Action::Overlay`).
pub fn decode_control(msg: &ProtocolMsg) -> Result<IncomingControl, ControlError> {
    match msg {
        ProtocolMsg::OverlayControl(payload) => {
            let m = OverlaySwitchMsg::decode(payload)?;
            Ok(IncomingControl {
                overlay_index: Some(m.overlay_index),
                sub_tag: m.sub_tag,
                msg: m.msg,
            })
        }
        ProtocolMsg::Reserved { tag, payload } => Ok(IncomingControl {
            overlay_index: None,
            sub_tag: *tag,
            msg: payload.clone(),
        }),
        other => Err(ControlError::NotControl(other.tag())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn weave_peer_gets_sleeve_only() {
        let ours = local_overlays(true);
        assert_eq!(overlays_feature(&ours), "weft-vxlan sleeve");
        for outbound in [true, false] {
            assert_eq!(
                negotiate(&ours, Some(&names("fastdp sleeve")), outbound).unwrap(),
                Negotiation::Common(vec![OverlayKind::Sleeve])
            );
        }
        assert_eq!(negotiate(&ours, None, true).unwrap(), Negotiation::Compat);
    }

    #[test]
    fn order_follows_the_dialler() {
        let ours = local_overlays(true);
        let theirs = names("sleeve weft-vxlan bogus");
        assert_eq!(
            negotiate(&ours, Some(&theirs), true).unwrap(),
            Negotiation::Common(vec![OverlayKind::Fastdp, OverlayKind::Sleeve])
        );
        assert_eq!(
            negotiate(&ours, Some(&theirs), false).unwrap(),
            Negotiation::Common(vec![OverlayKind::Sleeve, OverlayKind::Fastdp])
        );
        // Fast path disabled on our side.
        assert_eq!(
            negotiate(&local_overlays(false), Some(&theirs), true).unwrap(),
            Negotiation::Common(vec![OverlayKind::Sleeve])
        );
        let err = negotiate(&ours, Some(&names("awsvpc")), true).unwrap_err();
        assert!(err.to_string().contains("no overlays in common"));
        // Duplicates in the remote's list do not duplicate indices.
        assert_eq!(
            negotiate(&ours, Some(&names("sleeve sleeve")), false).unwrap(),
            Negotiation::Common(vec![OverlayKind::Sleeve])
        );
    }

    #[test]
    fn control_framing() {
        let m = encode_control(ControlRoute::Indexed(1), 3, &[0x05, 0x8c]).unwrap();
        assert_eq!(m.encode().unwrap(), vec![7, 1, 3, 0x05, 0x8c]);
        let d = decode_control(&ProtocolMsg::decode(&[7, 1, 3, 0x05, 0x8c]).unwrap()).unwrap();
        assert_eq!(
            d,
            IncomingControl {
                overlay_index: Some(1),
                sub_tag: 3,
                msg: vec![0x05, 0x8c]
            }
        );
        let c = encode_control(ControlRoute::Compat, 1, &[]).unwrap();
        assert_eq!(c.encode().unwrap(), vec![1]);
        assert_eq!(
            decode_control(&c).unwrap(),
            IncomingControl {
                overlay_index: None,
                sub_tag: 1,
                msg: vec![]
            }
        );
        assert_eq!(
            encode_control(ControlRoute::Compat, 0, &[]),
            Err(ControlError::NoCompatTag(0))
        );
        assert!(matches!(
            decode_control(&ProtocolMsg::OverlayControl(vec![0])),
            Err(ControlError::Malformed(_))
        ));
        assert_eq!(
            decode_control(&ProtocolMsg::Heartbeat),
            Err(ControlError::NotControl(0))
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..50)) {
            if let Ok(m) = ProtocolMsg::decode(&body) {
                let _ = decode_control(&m);
            }
        }

        #[test]
        fn negotiation_is_symmetric(a in proptest::collection::vec(0u8..4, 0..5), b in proptest::collection::vec(0u8..4, 0..5)) {
            let pick = |v: &[u8]| -> Vec<OverlayKind> {
                let mut out = Vec::new();
                for x in v {
                    let o = match x { 0 | 1 => OverlayKind::Fastdp, _ => OverlayKind::Sleeve };
                    if !out.contains(&o) { out.push(o); }
                }
                out
            };
            let (oa, ob) = (pick(&a), pick(&b));
            let na: Vec<String> = oa.iter().map(|o| o.name().to_string()).collect();
            let nb: Vec<String> = ob.iter().map(|o| o.name().to_string()).collect();
            // a dials b: both must compute the same list.
            let at_a = negotiate(&oa, Some(&nb), true);
            let at_b = negotiate(&ob, Some(&na), false);
            prop_assert_eq!(at_a.is_ok(), at_b.is_ok());
            prop_assert_eq!(at_a.ok(), at_b.ok());
        }
    }
}
