//! Descriptions of Go types, as the encoder needs them.
//!
//! Gob puts a description of every struct, slice, array and map type on the wire
//! (before the first value of that type on each stream), including the Go type
//! name and the field names, so the Rust side must describe its types with the Go
//! names. Pointers are transparent in gob: a `*T` is described and encoded as `T`.

use std::fmt;

/// Built-in gob type ids (fixed by the Go implementation).
pub(crate) mod builtin {
    pub const BOOL: u32 = 1;
    pub const INT: u32 = 2;
    pub const UINT: u32 = 3;
    pub const FLOAT: u32 = 4;
    pub const BYTES: u32 = 5;
    pub const STRING: u32 = 6;
    pub const COMPLEX: u32 = 7;
    pub const INTERFACE: u32 = 8;
    /// Ids above this are assigned to user types; the first one is 65.
    pub const FIRST_USER_ID: u32 = 64;
}

/// How a Go type that encodes itself is marked on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExternalKind {
    /// The type implements `gob.GobEncoder`.
    GobEncoder,
    /// The type implements `encoding.BinaryMarshaler`.
    BinaryMarshaler,
    /// The type implements `encoding.TextMarshaler`.
    TextMarshaler,
}

/// A Go type, as far as gob cares.
///
/// Two `Type`s are the same gob type exactly when they are equal (including names),
/// which is what the [`TypeRegistry`](crate::TypeRegistry) uses to hand out ids.
///
/// Go numeric types collapse onto three wire kinds: every signed integer type
/// (`int`, `int8` ... `int64`) is [`Type::Int`], every unsigned one (`uint8` ...
/// `uint64`, `uintptr`) is [`Type::Uint`], and `float32`/`float64` are
/// [`Type::Float`]. `[]byte` is the built-in [`Type::Bytes`], not a slice.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Type {
    /// Go `bool`.
    Bool,
    /// Any Go signed integer type.
    Int,
    /// Any Go unsigned integer type.
    Uint,
    /// Go `float32` or `float64`.
    Float,
    /// Go `complex64` or `complex128`.
    Complex,
    /// Go `string`.
    String,
    /// Go `[]byte` (`[]uint8`).
    Bytes,
    /// A Go slice type `[]T` (other than `[]byte`).
    Slice {
        /// The Go type name on the wire (empty for unnamed types seen at top level).
        name: String,
        /// Element type.
        elem: Box<Type>,
    },
    /// A Go array type `[N]T`.
    Array {
        /// The Go type name on the wire.
        name: String,
        /// Number of elements.
        len: u64,
        /// Element type.
        elem: Box<Type>,
    },
    /// A Go map type `map[K]V`.
    Map {
        /// The Go type name on the wire.
        name: String,
        /// Key type.
        key: Box<Type>,
        /// Element type.
        elem: Box<Type>,
    },
    /// A Go struct type (only its exported fields).
    Struct(StructType),
    /// A type that encodes itself (`GobEncode`, `MarshalBinary`, `MarshalText`);
    /// its values are opaque byte strings.
    External {
        /// The Go type name on the wire.
        name: String,
        /// Which interface it implements.
        kind: ExternalKind,
    },
}

/// A Go struct type: its name and exported fields in declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StructType {
    /// The Go type name (`peerSummary`, `Ring`...), as Go puts it on the wire.
    pub name: String,
    /// Exported fields, in Go declaration order (the order fixes the field numbers).
    pub fields: Vec<Field>,
}

/// One struct field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    /// The Go field name (`NameByte`, `UID`...).
    pub name: String,
    /// The field's type.
    pub ty: Type,
}

impl Field {
    /// A field with its Go name and type.
    pub fn new(name: impl Into<String>, ty: Type) -> Field {
        Field {
            name: name.into(),
            ty,
        }
    }
}

impl Type {
    /// A struct type with its Go name and fields.
    pub fn structure(name: impl Into<String>, fields: Vec<Field>) -> Type {
        Type::Struct(StructType {
            name: name.into(),
            fields,
        })
    }

    /// An unnamed slice type `[]elem`. A `[]uint8` element gives [`Type::Bytes`]
    /// only if you pass `Type::Bytes` yourself; this never rewrites.
    pub fn slice(elem: Type) -> Type {
        Type::Slice {
            name: String::new(),
            elem: Box::new(elem),
        }
    }

    /// An unnamed array type `[len]elem`.
    pub fn array(len: u64, elem: Type) -> Type {
        Type::Array {
            name: String::new(),
            len,
            elem: Box::new(elem),
        }
    }

    /// An unnamed map type `map[key]elem`.
    pub fn map(key: Type, elem: Type) -> Type {
        Type::Map {
            name: String::new(),
            key: Box::new(key),
            elem: Box::new(elem),
        }
    }

    /// The same type with another wire name. Built-in types have no name and are
    /// returned unchanged.
    ///
    /// Go names a type on the wire after the path by which its process first met
    /// it: named types by their name (`Ring`); unnamed slice/map/array types that
    /// are struct fields by their Go spelling (`map[mesh.PeerName]string`); types met
    /// at top level, as map keys/elements or as array elements, or pointer
    /// elements of a slice, with an empty name. Receivers ignore the names, so
    /// this matters only for byte-for-byte identical output.
    pub fn with_name(self, name: impl Into<String>) -> Type {
        let new = name.into();
        match self {
            Type::Slice { elem, .. } => Type::Slice { name: new, elem },
            Type::Array { len, elem, .. } => Type::Array {
                name: new,
                len,
                elem,
            },
            Type::Map { key, elem, .. } => Type::Map {
                name: new,
                key,
                elem,
            },
            Type::Struct(st) => Type::Struct(StructType {
                name: new,
                fields: st.fields,
            }),
            Type::External { kind, .. } => Type::External { name: new, kind },
            other => other,
        }
    }

    /// The wire name of a composite type; empty for built-in types.
    pub fn name(&self) -> &str {
        match self {
            Type::Slice { name, .. }
            | Type::Array { name, .. }
            | Type::Map { name, .. }
            | Type::External { name, .. } => name,
            Type::Struct(st) => &st.name,
            _ => "",
        }
    }

    /// The fixed gob id of a built-in type.
    pub(crate) fn builtin_id(&self) -> Option<u32> {
        Some(match self {
            Type::Bool => builtin::BOOL,
            Type::Int => builtin::INT,
            Type::Uint => builtin::UINT,
            Type::Float => builtin::FLOAT,
            Type::Bytes => builtin::BYTES,
            Type::String => builtin::STRING,
            Type::Complex => builtin::COMPLEX,
            _ => return None,
        })
    }

    /// A short human description, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Type::Bool => "bool".into(),
            Type::Int => "int".into(),
            Type::Uint => "uint".into(),
            Type::Float => "float".into(),
            Type::Complex => "complex".into(),
            Type::String => "string".into(),
            Type::Bytes => "[]byte".into(),
            Type::Slice { name, elem } if name.is_empty() => format!("[]{}", elem.describe()),
            Type::Array { name, len, elem } if name.is_empty() => {
                format!("[{len}]{}", elem.describe())
            }
            Type::Map { name, key, elem } if name.is_empty() => {
                format!("map[{}]{}", key.describe(), elem.describe())
            }
            Type::Struct(st) if st.name.is_empty() => "struct".into(),
            Type::Struct(st) => format!("struct {}", st.name),
            Type::External { name, .. } if name.is_empty() => "self-encoding type".into(),
            other => other.name().to_string(),
        }
    }
}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Slice { name, elem } => write!(f, "Slice({name:?}, {elem:?})"),
            Type::Array { name, len, elem } => write!(f, "Array({name:?}, {len}, {elem:?})"),
            Type::Map { name, key, elem } => write!(f, "Map({name:?}, {key:?}, {elem:?})"),
            Type::Struct(st) => {
                write!(f, "Struct({:?}", st.name)?;
                for fl in &st.fields {
                    write!(f, ", {}: {:?}", fl.name, fl.ty)?;
                }
                write!(f, ")")
            }
            Type::External { name, kind } => write!(f, "External({name:?}, {kind:?})"),
            Type::Bool => write!(f, "Bool"),
            Type::Int => write!(f, "Int"),
            Type::Uint => write!(f, "Uint"),
            Type::Float => write!(f, "Float"),
            Type::Complex => write!(f, "Complex"),
            Type::String => write!(f, "String"),
            Type::Bytes => write!(f, "Bytes"),
        }
    }
}
