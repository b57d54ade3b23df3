//! A Go `encoding/gob` codec, written from the format specification, for the
//! message shapes of Weave Net's mesh and IPAM protocols (and any other stream that
//! uses no interface values).
//!
//! # Model
//!
//! * [`Type`] describes a Go type: the encoder needs it because gob sends struct,
//!   slice, array and map type definitions (with Go type and field names) before
//!   the first value of each type on a stream.
//! * [`Value`] is a dynamic value: what the [`Decoder`] produces (shaped by the
//!   sender's wire types) and what the [`Encoder`] writes (together with a `Type`).
//! * [`GobEncode`] / [`GobDecode`] map Rust types onto those; they are implemented
//!   for integers, floats, `bool`, strings, `Vec<u8>` (as `[]byte`), `Vec<T>`,
//!   arrays, `Option<T>` (a Go pointer), `HashMap`/`BTreeMap`, and by
//!   [`gob_struct!`] for structs with Go field names.
//!
//! Go semantics kept: struct fields are matched by name, zero-valued fields are
//! omitted on the wire (and read back as zero), non-struct top-level values are
//! preceded by a zero field delta, type ids start at 65 and are numbered like Go
//! does (see [`TypeRegistry`]), so that output is byte-for-byte what Go writes.
//!
//! # Untrusted input
//!
//! The decoder never panics. Every length, count and type id is checked against
//! the remaining input before anything is allocated; message size, nesting depth
//! and the number of items per value are bounded by [`Limits`]; undefined type ids
//! are errors.
//!
//! # Example
//!
//! ```
//! use std::collections::HashMap;
//! use weft_gob::{Encoder, Field, StructValue, Type, Value};
//!
//! // A struct with Go names, described by hand.
//! let range = Type::structure("Range", vec![
//!     Field::new("Start", Type::Uint),
//!     Field::new("End", Type::Uint),
//! ]);
//! let value = Value::from(StructValue::new("Range")
//!     .with("Start", 0x0a28_0000u32)
//!     .with("End", 0x0a2c_0000u32));
//! let mut enc = Encoder::new();
//! enc.encode_value(&range, &value)?;
//! let bytes = enc.into_bytes();
//!
//! let decoded = weft_gob::decode_all(&bytes)?;
//! assert_eq!(decoded[0].as_struct()?.get_u64("End")?, 0x0a2c_0000);
//!
//! // A map[string]string, through the traits.
//! let mut features = HashMap::new();
//! features.insert("Name".to_string(), "0a:1b:2c:3d:4e:5f".to_string());
//! let bytes = weft_gob::to_bytes(&features)?;
//! let back: HashMap<String, String> = weft_gob::from_bytes(&bytes)?;
//! assert_eq!(back, features);
//! # Ok::<(), weft_gob::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod registry;
mod traits;
mod types;
mod value;
mod wire;

pub use decode::{decode_all, from_bytes, Decoder, Limits};
pub use encode::Encoder;
pub use error::{Error, Result};
pub use registry::TypeRegistry;
pub use traits::{GobDecode, GobEncode};
pub use types::{ExternalKind, Field, StructType, Type};
pub use value::{StructValue, Value};

/// Encodes one value as a complete gob stream (its own type ids, starting at 65).
pub fn to_bytes<T: GobEncode + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut enc = Encoder::new();
    enc.encode(value)?;
    Ok(enc.into_bytes())
}
