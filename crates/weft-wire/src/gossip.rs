//! Gossip message payloads (the part after the tag byte).
//!
//! Weave encodes each payload with a *new* gob encoder and one `Encode` call
//! per item, so every message is a self-contained gob stream:
//!
//! - gossip and gossip broadcast: `gob(channelName string)
//!   gob(srcName uint64) gob(msg []byte)`;
//! - gossip unicast: `gob(channelName) gob(srcName) gob(dstName) gob(msg)`.
//!
//! For a broadcast, `src` is the original broadcaster, not the relaying hop.

use crate::gobio::{GobReader, GobWriter};
use crate::peer_name::{PeerName, PeerNameError};

/// Errors decoding or encoding a gossip payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// A gob value could not be decoded or encoded.
    #[error("gob {field}: {detail}")]
    Gob {
        /// Which item of the payload.
        field: &'static str,
        /// The codec's message.
        detail: String,
    },
    /// A peer name is not a 48-bit value.
    #[error("{field}: {source}")]
    PeerName {
        /// Which item of the payload.
        field: &'static str,
        /// What was wrong.
        source: PeerNameError,
    },
    /// Bytes follow the last item.
    #[error("{0} unexpected bytes after the gossip message")]
    TrailingBytes(usize),
}

fn gob_err(field: &'static str) -> impl Fn(weft_gob::Error) -> GossipError {
    move |e| GossipError::Gob {
        field,
        detail: e.to_string(),
    }
}

fn peer(field: &'static str, v: u64) -> Result<PeerName, GossipError> {
    PeerName::new(v).map_err(|source| GossipError::PeerName { field, source })
}

/// A gossip or gossip-broadcast payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipMsg {
    /// Gossip channel (`"topology"`, `"IPallocation"`, `"nameserver"`, ...).
    pub channel: String,
    /// The peer the message comes from (for broadcasts: the originator).
    pub src: PeerName,
    /// The channel's opaque message.
    pub msg: Vec<u8>,
}

impl GossipMsg {
    /// Encodes the payload with a fresh gob encoder.
    pub fn encode(&self) -> Result<Vec<u8>, GossipError> {
        let mut w = GobWriter::new();
        w.string(&self.channel).map_err(gob_err("channel name"))?;
        w.uint(self.src.as_u64())
            .map_err(gob_err("source peer name"))?;
        w.bytes(&self.msg).map_err(gob_err("message"))?;
        Ok(w.finish())
    }

    /// Decodes a payload; trailing bytes are refused.
    pub fn decode(payload: &[u8]) -> Result<Self, GossipError> {
        let mut r = GobReader::new(payload);
        let channel = r.string().map_err(gob_err("channel name"))?;
        let src = peer(
            "source peer name",
            r.uint().map_err(gob_err("source peer name"))?,
        )?;
        let msg = r.bytes().map_err(gob_err("message"))?;
        r.finish().map_err(GossipError::TrailingBytes)?;
        Ok(GossipMsg { channel, src, msg })
    }
}

/// A gossip-unicast payload, relayed hop by hop towards `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipUnicastMsg {
    /// Gossip channel.
    pub channel: String,
    /// The sending peer.
    pub src: PeerName,
    /// The destination peer.
    pub dst: PeerName,
    /// The channel's opaque message.
    pub msg: Vec<u8>,
}

impl GossipUnicastMsg {
    /// Encodes the payload with a fresh gob encoder.
    pub fn encode(&self) -> Result<Vec<u8>, GossipError> {
        let mut w = GobWriter::new();
        w.string(&self.channel).map_err(gob_err("channel name"))?;
        w.uint(self.src.as_u64())
            .map_err(gob_err("source peer name"))?;
        w.uint(self.dst.as_u64())
            .map_err(gob_err("destination peer name"))?;
        w.bytes(&self.msg).map_err(gob_err("message"))?;
        Ok(w.finish())
    }

    /// Decodes a payload; trailing bytes are refused.
    pub fn decode(payload: &[u8]) -> Result<Self, GossipError> {
        let mut r = GobReader::new(payload);
        let channel = r.string().map_err(gob_err("channel name"))?;
        let src = peer(
            "source peer name",
            r.uint().map_err(gob_err("source peer name"))?,
        )?;
        let dst = peer(
            "destination peer name",
            r.uint().map_err(gob_err("destination peer name"))?,
        )?;
        let msg = r.bytes().map_err(gob_err("message"))?;
        r.finish().map_err(GossipError::TrailingBytes)?;
        Ok(GossipUnicastMsg {
            channel,
            src,
            dst,
            msg,
        })
    }
}
