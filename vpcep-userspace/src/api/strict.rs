//! A deserializer adapter that reads every struct from a JSON object only.
//!
//! serde's derived `Deserialize` also fills a struct from a sequence, field by position, and
//! serde_json offers it one whenever the input is an array (serde-rs/serde#1587): `[5, 7]`
//! would set two quotas. This wraps the deserializer at every level and asks for a map where
//! a struct is wanted, so an array is "invalid type: sequence, expected a JSON object" and
//! serde_path_to_error names where. Hand-written: no crate offers it. Enums are passed
//! through unwrapped (no request type has one).
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The deserializer, strict about structs.
pub struct Strict<D>(pub D);

/// A visitor whose nested deserializers, sequences and maps are strict too.
struct Wrap<V>(V);

/// The visitor of a struct: says what was expected.
struct Object<V>(V);

struct Seed<S>(S);
struct Seq<A>(A);
struct Map<A>(A);

macro_rules! forward {
    ($($name:ident $(($($arg:ident: $ty:ty),*))?),* $(,)?) => {
        $(
            fn $name<V: Visitor<'de>>(self, $($($arg: $ty,)*)? visitor: V) -> Result<V::Value, Self::Error> {
                self.0.$name($($($arg,)*)? Wrap(visitor))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_seq,
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_map(Object(Wrap(visitor)))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! visit {
    ($($name:ident($ty:ty)),* $(,)?) => {
        $(
            fn $name<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.0.$name(v)
            }
        )*
    };
}

/// Every visit forwarded to the inner visitor, the nested deserializer, sequence and map
/// passed through `$de`, `$seq` and `$map` (the strict wrappers, or [`same`]).
macro_rules! forward {
    ($de:ident, $seq:ident, $map:ident) => {
        visit!(
            visit_bool(bool),
            visit_i64(i64),
            visit_i128(i128),
            visit_u64(u64),
            visit_u128(u128),
            visit_f64(f64),
            visit_char(char),
            visit_str(&str),
            visit_borrowed_str(&'de str),
            visit_string(String),
            visit_bytes(&[u8]),
            visit_borrowed_bytes(&'de [u8]),
            visit_byte_buf(Vec<u8>),
        );

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            self.0.visit_none()
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            self.0.visit_unit()
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            self.0.visit_some($de(d))
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            self.0.visit_newtype_struct($de(d))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            self.0.visit_seq($seq(seq))
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            self.0.visit_map($map(map))
        }

        fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
            self.0.visit_enum(data)
        }
    };
}

/// No wrapping: for a visitor whose inner visitor wraps already.
fn same<T>(t: T) -> T {
    t
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }

    forward!(Strict, Seq, Map);
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Object<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    // The inner visitor is a `Wrap`, which wraps what it is given.
    forward!(same, same, same);
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(Strict(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.0.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::Strict;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        a: Option<i64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        x: Option<i64>,
        inner: Option<Inner>,
        list: Option<Vec<Inner>>,
    }

    fn parse(s: &str) -> Result<Outer, String> {
        let de = &mut serde_json::Deserializer::from_str(s);
        serde_path_to_error::deserialize(Strict(de)).map_err(|e| e.to_string())
    }

    #[test]
    fn objects_only() {
        let ok = parse(r#"{"x": 1, "inner": {"a": 2}, "list": [{"a": 3}], "extra": [1]}"#);
        assert_eq!(ok.unwrap().list, Some(vec![Inner { a: Some(3) }]));
        for (bad, at) in [
            // The root has no path: serde_path_to_error prints the error alone.
            ("[1, null, null]", "invalid type"),
            (r#"{"inner": [2]}"#, "inner"),
            (r#"{"list": [{"a": 1}, [2]]}"#, "list[1]"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(at), "{bad}: {e}");
            assert!(e.contains("expected a JSON object"), "{bad}: {e}");
        }
    }
}
