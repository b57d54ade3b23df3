//! Peer identity: the MAC-flavoured `PeerName` and the 12-bit `ShortID`.
//!
//! Weave's default build (the `mac` peer-name flavour) stores a peer name as a
//! `uint64` holding a 48-bit MAC address. Its text form is `aa:bb:cc:dd:ee:ff`;
//! shorthand with one `::` standing for a run of zero bytes (`::1`,
//! `12::34`) is accepted on input. On the wire (topology gossip) the name is
//! the 6-byte big-endian `NameByte` form; in gossip headers it is a gob
//! `uint64`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The peer-name flavour advertised in the `PeerNameFlavour` handshake feature.
pub const PEER_NAME_FLAVOUR: &str = "mac";

/// Errors from parsing or building peer names and short IDs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerNameError {
    /// The text is not a MAC-style peer name.
    #[error("invalid peer name {0:?}: expected a MAC address like aa:bb:cc:dd:ee:ff (shorthand such as ::1 is allowed)")]
    InvalidText(String),
    /// A numeric value does not fit in 48 bits.
    #[error("peer name value {0:#x} does not fit in 48 bits (a MAC address)")]
    TooLarge(u64),
    /// The `NameByte` form has the wrong length.
    #[error("peer name bytes have length {0}, expected 6")]
    BadByteLength(usize),
    /// A short ID is not a decimal number.
    #[error("invalid short ID {0:?}: expected a decimal number below 4096")]
    InvalidShortId(String),
    /// A short ID does not fit in 12 bits.
    #[error("short ID {0} is out of range: it must be below 4096 (12 bits)")]
    ShortIdOutOfRange(u64),
}

/// A Weave peer name: a 48-bit MAC address held in a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerName(u64);

/// The placeholder name of an unknown peer (`UnknownPeerName` in Weave).
pub const UNKNOWN_PEER_NAME: PeerName = PeerName(0);

impl PeerName {
    /// Largest valid value (`ff:ff:ff:ff:ff:ff`).
    pub const MAX: u64 = (1 << 48) - 1;

    /// Builds a name from its numeric value, refusing values above 48 bits.
    pub fn new(value: u64) -> Result<Self, PeerNameError> {
        if value > Self::MAX {
            Err(PeerNameError::TooLarge(value))
        } else {
            Ok(PeerName(value))
        }
    }

    /// Builds a name from a 6-byte MAC address.
    pub fn from_mac(mac: [u8; 6]) -> Self {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&mac);
        PeerName(u64::from_be_bytes(b))
    }

    /// Parses the 6-byte big-endian `NameByte` form.
    pub fn from_name_bytes(bytes: &[u8]) -> Result<Self, PeerNameError> {
        let mac: [u8; 6] = bytes
            .try_into()
            .map_err(|_| PeerNameError::BadByteLength(bytes.len()))?;
        Ok(Self::from_mac(mac))
    }

    /// The numeric value (what a gob `uint64` carries).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The 6-byte big-endian `NameByte` form (also the MAC address).
    pub fn to_name_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// Whether this is the unknown/placeholder name (0).
    pub fn is_unknown(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_name_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Parses one group of one or two hex digits.
fn parse_group(g: &str) -> Option<u8> {
    if g.is_empty() || g.len() > 2 || !g.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(g, 16).ok()
}

fn parse_groups(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(':').map(parse_group).collect()
}

impl FromStr for PeerName {
    type Err = PeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PeerNameError::InvalidText(s.to_string());
        let mac: Vec<u8> = match s.find("::") {
            None => {
                let groups = parse_groups(s).ok_or_else(bad)?;
                if groups.len() != 6 {
                    return Err(bad());
                }
                groups
            }
            Some(pos) => {
                let (head, tail) = (&s[..pos], &s[pos + 2..]);
                if tail.contains("::") {
                    return Err(bad());
                }
                let head = parse_groups(head).ok_or_else(bad)?;
                let tail = parse_groups(tail).ok_or_else(bad)?;
                let explicit = head.len() + tail.len();
                // `::` stands for at least one zero byte, and at least one
                // byte must be written out.
                if explicit == 0 || explicit > 5 {
                    return Err(bad());
                }
                let mut all = head;
                all.resize(6 - tail.len(), 0);
                all.extend_from_slice(&tail);
                all
            }
        };
        let mut arr = [0u8; 6];
        arr.copy_from_slice(&mac);
        Ok(PeerName::from_mac(arr))
    }
}

impl TryFrom<u64> for PeerName {
    type Error = PeerNameError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        PeerName::new(v)
    }
}

impl From<PeerName> for u64 {
    fn from(p: PeerName) -> u64 {
        p.0
    }
}

/// Weave's `MACfromUUID`: `sha256("9oBJ0Jmip-" || uuid)[0..6]`, with the first
/// byte made locally administered and unicast (`(b & 0xFE) | 0x02`).
pub fn mac_from_uuid(uuid: &[u8]) -> [u8; 6] {
    let mut h = Sha256::new();
    h.update(b"9oBJ0Jmip-");
    h.update(uuid);
    let d = h.finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] & 0xFE) | 0x02;
    mac
}

/// The peer name Weave derives from a machine UUID (see [`mac_from_uuid`]).
pub fn peer_name_from_uuid(uuid: &[u8]) -> PeerName {
    PeerName::from_mac(mac_from_uuid(uuid))
}

/// A peer's 12-bit short ID (`PeerShortID`), used as the fastdp VXLAN VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShortId(u16);

impl ShortId {
    /// Number of bits in a short ID.
    pub const BITS: u32 = 12;
    /// Largest valid short ID (4095).
    pub const MAX: u16 = (1 << Self::BITS) - 1;

    /// Builds a short ID, refusing values of 4096 and above.
    pub fn new(v: u16) -> Result<Self, PeerNameError> {
        if v > Self::MAX {
            Err(PeerNameError::ShortIdOutOfRange(v.into()))
        } else {
            Ok(ShortId(v))
        }
    }

    /// The numeric value.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ShortId {
    type Err = PeerNameError;
    /// Parses the decimal form used in the `ShortID` handshake feature.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(PeerNameError::InvalidShortId(s.to_string()));
        }
        let v: u64 = s
            .parse()
            .map_err(|_| PeerNameError::ShortIdOutOfRange(u64::MAX))?;
        if v > u64::from(Self::MAX) {
            return Err(PeerNameError::ShortIdOutOfRange(v));
        }
        Ok(ShortId(v as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_full_and_display() {
        let p: PeerName = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(p.as_u64(), 0x0a1b2c3d4e5f);
        assert_eq!(p.as_u64(), 11111822610015);
        assert_eq!(p.to_string(), "0a:1b:2c:3d:4e:5f");
        assert_eq!(p.to_name_bytes(), [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert_eq!(PeerName::from_name_bytes(&p.to_name_bytes()).unwrap(), p);
        let upper: PeerName = "0A:1B:2C:3D:4E:5F".parse().unwrap();
        assert_eq!(upper, p);
        let short_groups: PeerName = "a:1b:2c:3d:4e:5".parse().unwrap();
        assert_eq!(short_groups.as_u64(), 0x0a1b2c3d4e05);
    }

    #[test]
    fn parse_shorthand() {
        let cases = [
            ("::1", 1u64),
            ("::1:2", 0x0102),
            ("1::", 0x0100_0000_0000),
            ("1:2::", 0x0102_0000_0000),
            ("12::34", 0x1200_0000_0034),
            ("1:2::3:4", 0x0102_0000_0304),
            ("::a:b:c:d", 0x0000_0a0b_0c0d),
            ("a:b:c:d::", 0x0a0b_0c0d_0000),
            ("a::b:c:d:e", 0x0a00_0b0c_0d0e),
        ];
        for (text, want) in cases {
            let p: PeerName = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(p.as_u64(), want, "{text}");
        }
        assert_eq!(
            "::1".parse::<PeerName>().unwrap().to_string(),
            "00:00:00:00:00:01"
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "::",
            ":::1",
            "1::2::3",
            "1:2:3:4:5",
            "1:2:3:4:5:6:7",
            "1:2:3:4:5:6::",
            "123:0:0:0:0:0",
            "g0:00:00:00:00:00",
            "00:00:00:00:00:00:",
            ":00:00:00:00:00:00",
            "1:2:3::4:5:6",
            "+1::",
            "0x1::",
            "aa-bb-cc-dd-ee-ff",
            "é::1",
        ] {
            assert!(
                bad.parse::<PeerName>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn numeric_range() {
        assert!(PeerName::new(PeerName::MAX).is_ok());
        assert_eq!(
            PeerName::new(1 << 48),
            Err(PeerNameError::TooLarge(1 << 48))
        );
        assert!(PeerName::from_name_bytes(&[1, 2, 3]).is_err());
        assert!(UNKNOWN_PEER_NAME.is_unknown());
    }

    #[test]
    fn mac_from_uuid_is_local_unicast_sha256() {
        let mac = mac_from_uuid(b"machine-id-1234");
        let mut h = Sha256::new();
        h.update(b"9oBJ0Jmip-machine-id-1234");
        let d = h.finalize();
        assert_eq!(&mac[1..], &d[1..6]);
        assert_eq!(mac[0], (d[0] & 0xFE) | 0x02);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(peer_name_from_uuid(b"machine-id-1234").to_name_bytes(), mac);
    }

    #[test]
    fn mac_from_uuid_known_values() {
        // Computed independently (Python hashlib) from the published formula.
        assert_eq!(mac_from_uuid(b""), [0xd2, 0xf6, 0x2a, 0x51, 0x2b, 0x8e]);
        assert_eq!(
            peer_name_from_uuid(b"0123456789abcdef0123456789abcdefPRODUCT-UUID").to_string(),
            "ea:84:bc:2a:00:fc"
        );
    }

    #[test]
    fn short_id() {
        assert_eq!("4095".parse::<ShortId>().unwrap().get(), 4095);
        assert_eq!("0".parse::<ShortId>().unwrap().get(), 0);
        assert_eq!(
            "4096".parse::<ShortId>(),
            Err(PeerNameError::ShortIdOutOfRange(4096))
        );
        assert!("-1".parse::<ShortId>().is_err());
        assert!("".parse::<ShortId>().is_err());
        assert!("99999999999999999999999".parse::<ShortId>().is_err());
        assert!(ShortId::new(4096).is_err());
        assert_eq!(ShortId::new(7).unwrap().to_string(), "7");
    }
}
