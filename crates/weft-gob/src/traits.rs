//! Mapping Rust types to and from gob: [`GobEncode`], [`GobDecode`] and [`gob_struct!`](crate::gob_struct).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};

use crate::error::{Error, Result};
use crate::types::Type;
use crate::value::Value;

/// A Rust type that encodes as a Go type.
///
/// Implement it by hand (or with [`gob_struct!`](crate::gob_struct)) for structs,
/// using the exact Go type and field names, since both are on the wire.
pub trait GobEncode {
    /// The Go type this Rust type encodes as.
    fn gob_type() -> Type;

    /// The value, shaped like [`GobEncode::gob_type`].
    fn to_gob(&self) -> Value;

    /// `Some` only for `u8`, so that `Vec<u8>` encodes as Go's `[]byte`.
    #[doc(hidden)]
    fn as_gob_byte(&self) -> Option<u8> {
        None
    }

    /// True only for `u8`.
    #[doc(hidden)]
    const IS_GOB_BYTE: bool = false;
}

/// A Rust type that can be read from a decoded gob [`Value`].
///
/// `from_gob(Value::Nil)` must give the zero value: that is how an absent struct
/// field (which gob omits when zero) is read.
pub trait GobDecode: Sized {
    /// Converts a decoded value; errors say what was expected and found.
    fn from_gob(value: Value) -> Result<Self>;

    /// `Some` only for `u8`, so that `Vec<u8>` decodes from Go's `[]byte`.
    #[doc(hidden)]
    fn from_gob_byte(_b: u8) -> Option<Self> {
        None
    }

    /// True only for `u8`.
    #[doc(hidden)]
    const IS_GOB_BYTE: bool = false;
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl GobEncode for $t {
            fn gob_type() -> Type {
                Type::Uint
            }
            fn to_gob(&self) -> Value {
                Value::Uint(*self as u64)
            }
        }
        impl GobDecode for $t {
            fn from_gob(value: Value) -> Result<Self> {
                let u = value.as_u64()?;
                <$t>::try_from(u).map_err(|_| Error::OutOfRange {
                    value: u.to_string(),
                    target: stringify!($t),
                })
            }
        }
    )*};
}

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl GobEncode for $t {
            fn gob_type() -> Type {
                Type::Int
            }
            fn to_gob(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
        impl GobDecode for $t {
            fn from_gob(value: Value) -> Result<Self> {
                let i = value.as_i64()?;
                <$t>::try_from(i).map_err(|_| Error::OutOfRange {
                    value: i.to_string(),
                    target: stringify!($t),
                })
            }
        }
    )*};
}

unsigned!(u16, u32, u64, usize);
signed!(i8, i16, i32, i64, isize);

impl GobEncode for u8 {
    fn gob_type() -> Type {
        Type::Uint
    }
    fn to_gob(&self) -> Value {
        Value::Uint(u64::from(*self))
    }
    fn as_gob_byte(&self) -> Option<u8> {
        Some(*self)
    }
    const IS_GOB_BYTE: bool = true;
}

impl GobDecode for u8 {
    fn from_gob(value: Value) -> Result<Self> {
        let u = value.as_u64()?;
        u8::try_from(u).map_err(|_| Error::OutOfRange {
            value: u.to_string(),
            target: "u8",
        })
    }
    fn from_gob_byte(b: u8) -> Option<Self> {
        Some(b)
    }
    const IS_GOB_BYTE: bool = true;
}

impl GobEncode for bool {
    fn gob_type() -> Type {
        Type::Bool
    }
    fn to_gob(&self) -> Value {
        Value::Bool(*self)
    }
}

impl GobDecode for bool {
    fn from_gob(value: Value) -> Result<Self> {
        value.as_bool()
    }
}

impl GobEncode for f64 {
    fn gob_type() -> Type {
        Type::Float
    }
    fn to_gob(&self) -> Value {
        Value::Float(*self)
    }
}

impl GobDecode for f64 {
    fn from_gob(value: Value) -> Result<Self> {
        value.as_f64()
    }
}

impl GobEncode for f32 {
    fn gob_type() -> Type {
        Type::Float
    }
    fn to_gob(&self) -> Value {
        Value::Float(f64::from(*self))
    }
}

impl GobDecode for f32 {
    fn from_gob(value: Value) -> Result<Self> {
        let f = value.as_f64()?;
        // Like Go: finite values beyond float32's range are an error, infinities are kept.
        if f.is_finite() && f.abs() > f64::from(f32::MAX) {
            return Err(Error::OutOfRange {
                value: f.to_string(),
                target: "f32",
            });
        }
        Ok(f as f32)
    }
}

impl GobEncode for str {
    fn gob_type() -> Type {
        Type::String
    }
    fn to_gob(&self) -> Value {
        Value::String(self.as_bytes().to_vec())
    }
}

impl GobEncode for String {
    fn gob_type() -> Type {
        Type::String
    }
    fn to_gob(&self) -> Value {
        Value::String(self.as_bytes().to_vec())
    }
}

impl GobDecode for String {
    fn from_gob(value: Value) -> Result<Self> {
        value.into_string()
    }
}

/// `Vec<u8>` is Go's `[]byte`; any other `Vec<T>` is a slice `[]T`.
impl<T: GobEncode> GobEncode for Vec<T> {
    fn gob_type() -> Type {
        if T::IS_GOB_BYTE {
            Type::Bytes
        } else {
            Type::slice(T::gob_type())
        }
    }
    fn to_gob(&self) -> Value {
        if T::IS_GOB_BYTE {
            Value::Bytes(self.iter().filter_map(GobEncode::as_gob_byte).collect())
        } else {
            Value::Slice(self.iter().map(GobEncode::to_gob).collect())
        }
    }
}

impl<T: GobEncode> GobEncode for [T] {
    fn gob_type() -> Type {
        <Vec<T>>::gob_type()
    }
    fn to_gob(&self) -> Value {
        if T::IS_GOB_BYTE {
            Value::Bytes(self.iter().filter_map(GobEncode::as_gob_byte).collect())
        } else {
            Value::Slice(self.iter().map(GobEncode::to_gob).collect())
        }
    }
}

impl<T: GobDecode> GobDecode for Vec<T> {
    fn from_gob(value: Value) -> Result<Self> {
        match value {
            Value::Bytes(b) if T::IS_GOB_BYTE => b
                .into_iter()
                .map(|x| T::from_gob_byte(x).ok_or_else(|| Error::mismatch("byte", "[]byte")))
                .collect(),
            other => other
                .into_slice()?
                .into_iter()
                .enumerate()
                .map(|(i, v)| T::from_gob(v).map_err(|e| e.context(format!("element {i}"))))
                .collect(),
        }
    }
}

/// `[T; N]` is a Go array `[N]T` (also for `u8`: Go sends `[N]byte` element by element).
impl<T: GobEncode, const N: usize> GobEncode for [T; N] {
    fn gob_type() -> Type {
        Type::array(N as u64, T::gob_type())
    }
    fn to_gob(&self) -> Value {
        Value::Array(self.iter().map(GobEncode::to_gob).collect())
    }
}

impl<T: GobDecode, const N: usize> GobDecode for [T; N] {
    fn from_gob(value: Value) -> Result<Self> {
        let items: Vec<T> = match value {
            Value::Nil => (0..N)
                .map(|_| T::from_gob(Value::Nil))
                .collect::<Result<_>>()?,
            other => {
                let items = other.into_slice()?;
                if items.len() != N {
                    return Err(Error::mismatch(
                        format!("array of {N} elements"),
                        format!("{} elements", items.len()),
                    ));
                }
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| T::from_gob(v).map_err(|e| e.context(format!("element {i}"))))
                    .collect::<Result<_>>()?
            }
        };
        items
            .try_into()
            .map_err(|_| Error::mismatch(format!("array of {N} elements"), "another length"))
    }
}

/// A pointer in Go: `None` is nil (omitted in a struct), `Some` encodes the value.
impl<T: GobEncode> GobEncode for Option<T> {
    fn gob_type() -> Type {
        T::gob_type()
    }
    fn to_gob(&self) -> Value {
        match self {
            Some(v) => v.to_gob(),
            None => Value::Nil,
        }
    }
}

impl<T: GobDecode> GobDecode for Option<T> {
    fn from_gob(value: Value) -> Result<Self> {
        match value {
            Value::Nil => Ok(None),
            v => T::from_gob(v).map(Some),
        }
    }
}

impl<T: GobEncode + ?Sized> GobEncode for Box<T> {
    fn gob_type() -> Type {
        T::gob_type()
    }
    fn to_gob(&self) -> Value {
        (**self).to_gob()
    }
}

impl<T: GobDecode> GobDecode for Box<T> {
    fn from_gob(value: Value) -> Result<Self> {
        T::from_gob(value).map(Box::new)
    }
}

impl<T: GobEncode + ?Sized> GobEncode for &T {
    fn gob_type() -> Type {
        T::gob_type()
    }
    fn to_gob(&self) -> Value {
        (**self).to_gob()
    }
}

fn map_entries<K: GobDecode, V: GobDecode>(value: Value) -> Result<Vec<(K, V)>> {
    value
        .into_map()?
        .into_iter()
        .map(|(k, v)| {
            let key = K::from_gob(k).map_err(|e| e.context("map key"))?;
            let val = V::from_gob(v).map_err(|e| e.context("map element"))?;
            Ok((key, val))
        })
        .collect()
}

/// A Go map `map[K]V`. Entries are sent in the map's iteration order (random for
/// `HashMap`, as in Go).
impl<K: GobEncode, V: GobEncode, S> GobEncode for HashMap<K, V, S> {
    fn gob_type() -> Type {
        Type::map(K::gob_type(), V::gob_type())
    }
    fn to_gob(&self) -> Value {
        Value::Map(self.iter().map(|(k, v)| (k.to_gob(), v.to_gob())).collect())
    }
}

/// Duplicate keys on the wire: the last one wins, as in Go.
impl<K: GobDecode + Eq + Hash, V: GobDecode, S: BuildHasher + Default> GobDecode
    for HashMap<K, V, S>
{
    fn from_gob(value: Value) -> Result<Self> {
        Ok(map_entries(value)?.into_iter().collect())
    }
}

/// A Go map `map[K]V`, sent in key order.
impl<K: GobEncode, V: GobEncode> GobEncode for BTreeMap<K, V> {
    fn gob_type() -> Type {
        Type::map(K::gob_type(), V::gob_type())
    }
    fn to_gob(&self) -> Value {
        Value::Map(self.iter().map(|(k, v)| (k.to_gob(), v.to_gob())).collect())
    }
}

impl<K: GobDecode + Ord, V: GobDecode> GobDecode for BTreeMap<K, V> {
    fn from_gob(value: Value) -> Result<Self> {
        Ok(map_entries(value)?.into_iter().collect())
    }
}

/// Keeps the decoded value as is.
impl GobDecode for Value {
    fn from_gob(value: Value) -> Result<Self> {
        Ok(value)
    }
}

/// Defines a Rust struct together with its gob mapping to a Go struct.
///
/// Each field gives its Go field name after `=>`, and optionally the wire name of
/// the field's type after `as` (Go names an unnamed slice/map type that is a
/// struct field after its spelling, e.g. `"map[mesh.PeerName]string"`; receivers
/// ignore it). Fields are numbered in the order written, which must be Go's
/// declaration order. Field types implement [`GobEncode`] and [`GobDecode`]; a
/// field absent on the wire decodes as its zero value and unknown wire fields are
/// ignored, as in Go.
///
/// ```
/// weft_gob::gob_struct! {
///     /// A mesh topology peer entry.
///     #[derive(Debug, Clone, PartialEq, Default)]
///     pub struct PeerSummary as "peerSummary" {
///         pub name_byte: Vec<u8> => "NameByte",
///         pub nick_name: String => "NickName",
///         pub uid: u64 => "UID",
///         pub version: u64 => "Version",
///         pub short_id: u16 => "ShortID",
///         pub has_short_id: bool => "HasShortID",
///     }
/// }
/// let p = PeerSummary { nick_name: "node-1".into(), uid: 7, ..Default::default() };
/// let bytes = weft_gob::to_bytes(&p)?;
/// assert_eq!(weft_gob::from_bytes::<PeerSummary>(&bytes)?, p);
/// # Ok::<(), weft_gob::Error>(())
/// ```
#[macro_export]
macro_rules! gob_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident as $goname:literal {
            $(
                $(#[$fmeta:meta])*
                $fvis:vis $field:ident : $fty:ty => $gofield:literal $(as $gotype:literal)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $fty, )*
        }

        impl $crate::GobEncode for $name {
            fn gob_type() -> $crate::Type {
                $crate::Type::structure($goname, ::std::vec![
                    $( $crate::Field::new($gofield, {
                        let ty = <$fty as $crate::GobEncode>::gob_type();
                        $( let ty = ty.with_name($gotype); )?
                        ty
                    }), )*
                ])
            }

            fn to_gob(&self) -> $crate::Value {
                $crate::Value::from(
                    $crate::StructValue::new($goname)
                        $( .with($gofield, $crate::GobEncode::to_gob(&self.$field)) )*
                )
            }
        }

        impl $crate::GobDecode for $name {
            fn from_gob(value: $crate::Value) -> $crate::Result<Self> {
                #[allow(unused_mut, unused_variables)]
                let mut s = value.into_struct()?;
                ::std::result::Result::Ok($name {
                    $( $field: s.decode_field($gofield)?, )*
                })
            }
        }
    };
}
