//! Errors of the gob codec.

/// Everything that can go wrong while encoding or decoding gob data, or while
/// mapping a decoded [`Value`](crate::Value) onto a Rust type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended in the middle of something.
    #[error("gob data ends early: {needed} more byte(s) needed for {what}; the message or stream is truncated")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// An unsigned integer whose length byte announces more than 8 bytes.
    #[error("invalid gob unsigned integer: length byte {0:#04x} announces more than 8 bytes; the data is corrupt")]
    BadUint(u8),
    /// A message whose byte count exceeds the configured limit.
    #[error("gob message of {size} bytes exceeds the limit of {limit} bytes; raise Limits::max_message_size if this size is legitimate")]
    MessageTooLarge {
        /// Declared size.
        size: u64,
        /// Configured limit.
        limit: usize,
    },
    /// A message with a byte count of zero.
    #[error("empty gob message (byte count 0); the stream is corrupt")]
    EmptyMessage,
    /// Bytes left over inside a message after its content.
    #[error("{count} unexpected byte(s) left at the end of a gob message after {what}; the stream is corrupt")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
        /// What the message held.
        what: &'static str,
    },
    /// A type id outside the valid range.
    #[error("invalid gob type id {0}: user type ids lie between 65 and 2147483647, values may also use built-in ids 1-8")]
    BadTypeId(i64),
    /// A type id defined twice in one stream.
    #[error("gob type id {0} is defined twice in one stream; the stream is corrupt")]
    DuplicateType(u32),
    /// A type id used before (or without) being defined.
    #[error("gob type id {0} is used but never defined in this stream; the sender must send type definitions first")]
    UnknownType(u32),
    /// A type definition that does not have the shape of Go's `wireType`.
    #[error("malformed gob type definition: {0}")]
    BadTypeDefinition(String),
    /// A feature of gob this codec does not implement.
    #[error("gob {0} values are not supported by this codec")]
    Unsupported(&'static str),
    /// A struct field delta pointing past the last field.
    #[error("gob struct {st:?}: field number {field} is out of range (the type has {count} fields); the stream is corrupt")]
    FieldOutOfRange {
        /// Struct type name.
        st: String,
        /// The field number reached.
        field: u64,
        /// Number of fields in the type.
        count: usize,
    },
    /// A top-level non-struct value not preceded by the zero field delta.
    #[error("gob singleton value must start with field delta 0, found {0}; the stream is corrupt")]
    BadSingletonDelta(u64),
    /// A length or element count larger than the remaining input could hold.
    #[error("gob {what} declares {count} element(s) but only {remaining} byte(s) remain in the message; the stream is corrupt")]
    CountTooLarge {
        /// What declared the count.
        what: &'static str,
        /// Declared count.
        count: u64,
        /// Bytes remaining in the message.
        remaining: usize,
    },
    /// An array whose element count differs from its type's length.
    #[error(
        "gob array has {found} elements but its type declares {expected}; the stream is corrupt"
    )]
    ArrayLength {
        /// Length in the type.
        expected: u64,
        /// Length on the wire.
        found: u64,
    },
    /// Values nested deeper than the configured limit.
    #[error(
        "gob value nests deeper than {0} levels; raise Limits::max_depth if this is legitimate"
    )]
    TooDeep(usize),
    /// More values in one top-level value than the configured limit.
    #[error("gob value holds more than {0} items; raise Limits::max_values if this is legitimate")]
    TooManyValues(usize),
    /// A stream ending after type definitions, without a value.
    #[error("gob stream ends after type definitions without the value they describe; the stream is truncated")]
    TypesWithoutValue,
    /// A value was requested but the stream has no more.
    #[error("gob stream has no more values; the sender sent fewer values than expected")]
    EndOfStream,
    /// A stream holding more values than the caller expected.
    #[error("gob stream holds more values than the one expected")]
    ExtraValues,
    /// The decoder failed earlier and cannot continue.
    #[error(
        "gob decoder stopped after an earlier error; the rest of the stream cannot be trusted"
    )]
    Poisoned,
    /// A value whose kind differs from what the type (or Rust target) needs.
    #[error("type mismatch: expected {expected}, found {found}")]
    Mismatch {
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A number too large (or small) for the Rust target type.
    #[error("value {value} does not fit in {target}")]
    OutOfRange {
        /// The value, printed.
        value: String,
        /// The Rust target type.
        target: &'static str,
    },
    /// A Go string that is not valid UTF-8, requested as a Rust `String`.
    #[error("string is not valid UTF-8; read it as bytes instead")]
    InvalidUtf8,
    /// A struct value names a field its type does not declare.
    #[error(
        "struct value has field {field:?} that type {st:?} does not declare; fix the field name"
    )]
    UnknownField {
        /// Struct type name.
        st: String,
        /// The unknown field.
        field: String,
    },
    /// A struct value sets the same field twice.
    #[error("struct value sets field {0:?} twice")]
    DuplicateField(String),
    /// The type registry ran out of type ids (more than 2^31 types).
    #[error("gob type ids exhausted")]
    TypeIdsExhausted,
    /// An error with the path to where it happened.
    #[error("{context}: {inner}")]
    Context {
        /// Where it happened (e.g. `field "Ring"`).
        context: String,
        /// The underlying error.
        inner: Box<Error>,
    },
}

impl Error {
    /// Wraps the error with a description of where it happened.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            inner: Box::new(self),
        }
    }

    /// The innermost error, without the [`Error::Context`] wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { inner, .. } => inner.root(),
            other => other,
        }
    }

    pub(crate) fn mismatch(expected: impl Into<String>, found: impl Into<String>) -> Error {
        Error::Mismatch {
            expected: expected.into(),
            found: found.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
