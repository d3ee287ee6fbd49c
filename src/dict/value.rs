//! Values: what is stored (borrowed) and what is read back (owned).

use super::layout::{K_BOOL, K_BYTES, K_FLOAT, K_INT, K_LIST};

/// A value to store: bytes, an `i64`, an `f64` or a `bool` (shdict's
/// string, number and boolean; integers are kept apart from floats so
/// that counters stay exact).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// A byte string (may be empty).
    Bytes(&'a [u8]),
    /// A signed 64-bit integer (`incr` works on these).
    Int(i64),
    /// A double.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// A value read back.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedValue {
    /// A byte string.
    Bytes(Vec<u8>),
    /// An integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl OwnedValue {
    /// The value, borrowed (e.g. to store it again or compare).
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Bytes(b) => Value::Bytes(b),
            OwnedValue::Int(i) => Value::Int(*i),
            OwnedValue::Float(f) => Value::Float(*f),
            OwnedValue::Bool(b) => Value::Bool(*b),
        }
    }

    /// The integer, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            OwnedValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The bytes, if it is a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            OwnedValue::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(b: &'a [u8]) -> Self {
        Value::Bytes(b)
    }
}
impl<'a, const N: usize> From<&'a [u8; N]> for Value<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        Value::Bytes(b)
    }
}
impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Bytes(s.as_bytes())
    }
}
impl<'a> From<&'a Vec<u8>> for Value<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        Value::Bytes(b)
    }
}
impl From<i64> for Value<'_> {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value<'_> {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// A value in its stored form: kind, fixed-size bytes or borrowed bytes.
pub(crate) struct Encoded<'a> {
    pub kind: u32,
    pub small: [u8; 8],
    pub bytes: Option<&'a [u8]>,
}

impl<'a> Encoded<'a> {
    pub fn new(v: Value<'a>) -> Encoded<'a> {
        match v {
            Value::Bytes(b) => Encoded {
                kind: K_BYTES,
                small: [0; 8],
                bytes: Some(b),
            },
            Value::Int(i) => Encoded {
                kind: K_INT,
                small: i.to_le_bytes(),
                bytes: None,
            },
            Value::Float(f) => Encoded {
                kind: K_FLOAT,
                small: f.to_bits().to_le_bytes(),
                bytes: None,
            },
            Value::Bool(b) => Encoded {
                kind: K_BOOL,
                small: [b as u8, 0, 0, 0, 0, 0, 0, 0],
                bytes: None,
            },
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match (self.bytes, self.kind) {
            (Some(b), _) => b,
            (None, K_BOOL) => &self.small[..1],
            (None, _) => &self.small,
        }
    }
}

/// Decodes a stored value; `None` for a length that does not fit its kind.
pub(crate) fn decode(kind: u32, bytes: &[u8]) -> Option<OwnedValue> {
    Some(match kind {
        K_BYTES => OwnedValue::Bytes(bytes.to_vec()),
        K_INT => OwnedValue::Int(i64::from_le_bytes(bytes.try_into().ok()?)),
        K_FLOAT => OwnedValue::Float(f64::from_bits(u64::from_le_bytes(bytes.try_into().ok()?))),
        K_BOOL if bytes.len() == 1 => OwnedValue::Bool(bytes[0] != 0),
        _ => return None,
    })
}

/// Decodes a fixed-size value (not bytes).
#[inline]
pub(crate) fn decode_small(kind: u32, b: &[u8]) -> Option<OwnedValue> {
    let w = |b: &[u8]| b.try_into().ok().map(u64::from_le_bytes);
    Some(match kind {
        K_INT => OwnedValue::Int(w(b)? as i64),
        K_FLOAT => OwnedValue::Float(f64::from_bits(w(b)?)),
        K_BOOL if b.len() == 1 => OwnedValue::Bool(b[0] != 0),
        _ => return None,
    })
}

/// A kind's name, for errors.
pub(crate) fn kind_name(kind: u32) -> &'static str {
    match kind {
        K_BYTES => "bytes",
        K_INT => "an integer",
        K_FLOAT => "a float",
        K_BOOL => "a boolean",
        K_LIST => "a list",
        _ => "of an unknown type",
    }
}

/// The valid length of a kind's value (`None`: any).
pub(crate) fn fixed_len(kind: u32) -> Option<usize> {
    match kind {
        K_INT | K_FLOAT => Some(8),
        K_BOOL => Some(1),
        K_LIST => Some(16),
        _ => None,
    }
}
