//! Column values: PostgreSQL's text output mapped to JSON, the same way for every plugin.
//!
//! smallint/integer/bigint and real/double precision become JSON numbers (NaN and the infinities
//! strings), numeric a string (no digit is lost), boolean true/false, json/jsonb embedded, arrays JSON
//! arrays (nested for several dimensions, elements mapped by these rules), everything else the text
//! PostgreSQL prints. Domains map as their base type.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::value::RawValue;

/// How a type's values map to JSON, after resolving domains to their base type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeKind {
    pub scalar: Scalar,
    /// An array of `scalar` elements (of any number of dimensions).
    pub array: bool,
    /// The element delimiter in array text (`,` for all types but `box`).
    pub delimiter: u8,
}

/// The JSON mapping of a scalar type (or of an array's elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    Bool,
    Int,
    Float,
    Numeric,
    Json,
    Text,
}

impl TypeKind {
    pub const TEXT: TypeKind = TypeKind::scalar(Scalar::Text);

    pub const fn scalar(scalar: Scalar) -> TypeKind {
        TypeKind { scalar, array: false, delimiter: b',' }
    }
}

/// A column value ready to be written as JSON.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// numeric, the non-finite floats, and every type printed as text.
    Text(String),
    /// json and jsonb, compacted to one line.
    Json(Box<RawValue>),
    Array(Vec<Value>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Json(a), Value::Json(b)) => a.get() == b.get(),
            (Value::Array(a), Value::Array(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Text(s) => serializer.serialize_str(s),
            Value::Json(raw) => raw.serialize(serializer),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

/// A value's text does not parse as its type says it should.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("value {excerpt:?} is not valid {expected}")]
pub struct ValueError {
    pub expected: &'static str,
    /// The start of the offending text (never more than 64 characters).
    pub excerpt: String,
}

impl ValueError {
    fn new(expected: &'static str, text: &str) -> ValueError {
        ValueError { expected, excerpt: text.chars().take(64).collect() }
    }
}

/// Arrays nest at most this deep (PostgreSQL allows 6 dimensions); deeper input is rejected.
const MAX_ARRAY_DEPTH: usize = 16;

/// Maps one value from PostgreSQL's text output.
pub fn decode_text(kind: TypeKind, text: &str) -> Result<Value, ValueError> {
    if kind.array {
        decode_array(kind, text)
    } else {
        decode_scalar(kind.scalar, text)
    }
}

/// Maps one scalar value from PostgreSQL's text output.
pub fn decode_scalar(scalar: Scalar, text: &str) -> Result<Value, ValueError> {
    match scalar {
        Scalar::Text | Scalar::Numeric => Ok(Value::Text(text.to_owned())),
        Scalar::Int => text.parse().map(Value::Int).map_err(|_| ValueError::new("integer", text)),
        Scalar::Float => decode_float(text),
        Scalar::Bool => decode_bool(text),
        Scalar::Json => decode_json(text),
    }
}

fn decode_float(text: &str) -> Result<Value, ValueError> {
    match text {
        "NaN" | "Infinity" | "-Infinity" => Ok(Value::Text(text.to_owned())),
        _ => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err(ValueError::new("floating-point number", text)),
        },
    }
}

fn decode_bool(text: &str) -> Result<Value, ValueError> {
    match text {
        "t" | "true" => Ok(Value::Bool(true)),
        "f" | "false" => Ok(Value::Bool(false)),
        _ => Err(ValueError::new("boolean", text)),
    }
}

/// Embeds json/jsonb text as is, minus the whitespace between tokens (json keeps the application's
/// newlines, which would break line-delimited output). Number digits and key order are kept.
fn decode_json(text: &str) -> Result<Value, ValueError> {
    let mut compact = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            compact.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            compact.push(c);
        }
    }
    RawValue::from_string(compact).map(Value::Json).map_err(|_| ValueError::new("JSON", text))
}

/// Parses PostgreSQL's array output: `{1,2,NULL}`, `{{"a b","c\"d"},{e,f}}`, `[0:1]={x,y}`.
fn decode_array(kind: TypeKind, text: &str) -> Result<Value, ValueError> {
    let err = || ValueError::new("array", text);
    // Arrays with lower bounds other than 1 are prefixed by their dimensions: `[0:1][1:2]={...}`.
    let body = if text.starts_with('[') {
        let eq = text.find('=').ok_or_else(err)?;
        &text[eq + 1..]
    } else {
        text
    };
    let mut parser = ArrayParser { bytes: body.as_bytes(), at: 0, kind };
    let value = parser.parse_array(0).map_err(|_| err())?;
    if parser.at != parser.bytes.len() {
        return Err(err());
    }
    Ok(value)
}

struct ArrayParser<'a> {
    bytes: &'a [u8],
    at: usize,
    kind: TypeKind,
}

/// Malformed array text; the caller reports it with the whole value.
struct Malformed;

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn parse_array(&mut self, depth: usize) -> Result<Value, Malformed> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Malformed);
        }
        self.expect(b'{')?;
        let mut items = Vec::new();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            let item = match self.peek() {
                Some(b'{') => self.parse_array(depth + 1)?,
                Some(b'"') => {
                    let text = self.parse_quoted()?;
                    decode_scalar(self.kind.scalar, &text).map_err(|_| Malformed)?
                }
                Some(_) => {
                    let text = self.parse_unquoted()?;
                    if text.eq_ignore_ascii_case("NULL") {
                        Value::Null
                    } else {
                        decode_scalar(self.kind.scalar, &text).map_err(|_| Malformed)?
                    }
                }
                None => return Err(Malformed),
            };
            items.push(item);
            match self.peek() {
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                Some(b) if b == self.kind.delimiter => self.at += 1,
                _ => return Err(Malformed),
            }
        }
    }

    /// A double-quoted element; backslash escapes the next character.
    fn parse_quoted(&mut self) -> Result<String, Malformed> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(Malformed),
                Some(b'"') => {
                    self.at += 1;
                    return String::from_utf8(out).map_err(|_| Malformed);
                }
                Some(b'\\') => {
                    let next = self.bytes.get(self.at + 1).copied().ok_or(Malformed)?;
                    out.push(next);
                    self.at += 2;
                }
                Some(b) => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
    }

    /// An unquoted element: up to the next delimiter or closing brace.
    fn parse_unquoted(&mut self) -> Result<String, Malformed> {
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            if b == self.kind.delimiter || b == b'}' {
                break;
            }
            if matches!(b, b'{' | b'"') {
                return Err(Malformed);
            }
            if b == b'\\' {
                let next = self.bytes.get(self.at + 1).copied().ok_or(Malformed)?;
                out.push(next);
                self.at += 2;
            } else {
                out.push(b);
                self.at += 1;
            }
        }
        if out.is_empty() {
            return Err(Malformed);
        }
        String::from_utf8(out).map_err(|_| Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(kind: TypeKind, text: &str) -> String {
        serde_json::to_string(&decode_text(kind, text).unwrap()).unwrap()
    }

    fn array(scalar: Scalar) -> TypeKind {
        TypeKind { scalar, array: true, delimiter: b',' }
    }

    #[test]
    fn maps_scalars() {
        assert_eq!(json(TypeKind::scalar(Scalar::Int), "-9223372036854775808"), "-9223372036854775808");
        assert_eq!(json(TypeKind::scalar(Scalar::Float), "1.5"), "1.5");
        assert_eq!(json(TypeKind::scalar(Scalar::Float), "-Infinity"), "\"-Infinity\"");
        assert_eq!(json(TypeKind::scalar(Scalar::Float), "NaN"), "\"NaN\"");
        assert_eq!(
            json(TypeKind::scalar(Scalar::Numeric), "12345678901234567890.000001"),
            "\"12345678901234567890.000001\""
        );
        assert_eq!(json(TypeKind::scalar(Scalar::Bool), "t"), "true");
        assert_eq!(json(TypeKind::scalar(Scalar::Bool), "false"), "false");
        assert_eq!(json(TypeKind::TEXT, "it's \"q\" \\ \n é"), r#""it's \"q\" \\ \n é""#);
    }

    #[test]
    fn embeds_json_compactly_keeping_digits_and_order() {
        let text = "{\"b\": 1,\n \"a\": [123456789012345678901234567890, \"x y\\\"\"]}";
        assert_eq!(
            json(TypeKind::scalar(Scalar::Json), text),
            r#"{"b":1,"a":[123456789012345678901234567890,"x y\""]}"#
        );
    }

    #[test]
    fn maps_arrays() {
        assert_eq!(json(array(Scalar::Int), "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(json(array(Scalar::Int), "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(
            json(array(Scalar::Text), r#"{"a b","c\"d","NULL",NULL,e\\f}"#),
            r#"["a b","c\"d","NULL",null,"e\\f"]"#
        );
        assert_eq!(json(array(Scalar::Numeric), "{1.50,NaN}"), r#"["1.50","NaN"]"#);
        assert_eq!(json(array(Scalar::Int), "[0:1]={7,8}"), "[7,8]");
        assert_eq!(json(array(Scalar::Int), "{}"), "[]");
        assert_eq!(json(array(Scalar::Json), r#"{"{\"a\": 1}",null}"#), r#"[{"a":1},null]"#);
        let boxes = TypeKind { scalar: Scalar::Text, array: true, delimiter: b';' };
        assert_eq!(json(boxes, "{(1,1),(0,0);(2,2),(1,1)}"), r#"["(1,1),(0,0)","(2,2),(1,1)"]"#);
    }

    #[test]
    fn rejects_malformed_values() {
        for (kind, text) in [
            (TypeKind::scalar(Scalar::Int), "1.5"),
            (TypeKind::scalar(Scalar::Bool), "yes"),
            (TypeKind::scalar(Scalar::Float), "inf"),
            (TypeKind::scalar(Scalar::Json), "{\"a\":"),
            (array(Scalar::Int), "{1,2"),
            (array(Scalar::Int), "{1,,2}"),
            (array(Scalar::Int), "{1,x}"),
            (array(Scalar::Text), "{\"a}"),
            (array(Scalar::Text), "{a}b"),
            (array(Scalar::Text), "[0:1]"),
            (array(Scalar::Text), &"{".repeat(10_000)),
        ] {
            assert!(decode_text(kind, text).is_err(), "{text:?} accepted");
        }
    }
}
