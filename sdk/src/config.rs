//! Typed configuration: the step's `key=value` pairs arrive as text and are
//! read into the plugin's own `Config` type with serde, numbers and booleans
//! parsed on the way.

use std::collections::BTreeMap;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

pub fn from_map<T: DeserializeOwned>(map: &BTreeMap<String, String>) -> Result<T, String> {
    let pairs = map.iter().map(|(k, v)| (k.as_str(), Text(v)));
    let de = de::value::MapDeserializer::<_, de::value::Error>::new(pairs);
    T::deserialize(de).map_err(|e| format!("invalid configuration: {e}"))
}

/// One value as text; numbers and booleans are parsed when the field wants them.
struct Text<'a>(&'a str);

impl<'de> IntoDeserializer<'de, de::value::Error> for Text<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parse {
    ($($method:ident => $visit:ident),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self.0.trim().parse() {
                Ok(v) => visitor.$visit(v),
                Err(_) => Err(de::Error::custom(format!("`{}` is not a {}", self.0, stringify!($visit).trim_start_matches("visit_")))),
            }
        })*
    };
}

impl<'de> de::Deserializer<'de> for Text<'de> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Self::Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self.0.into_deserializer())
    }

    parse! {
        deserialize_bool => visit_bool,
        deserialize_u8 => visit_u8, deserialize_u16 => visit_u16, deserialize_u32 => visit_u32, deserialize_u64 => visit_u64,
        deserialize_i8 => visit_i8, deserialize_i16 => visit_i16, deserialize_i32 => visit_i32, deserialize_i64 => visit_i64,
        deserialize_f32 => visit_f32, deserialize_f64 => visit_f64,
    }

    forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Config {
        url: String,
        expect: u16,
        verbose: bool,
        body_contains: Option<String>,
        #[serde(default)]
        retries: u32,
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn text_values_become_typed_fields() {
        let c: Config = from_map(&map(&[("url", "http://x"), ("expect", "200"), ("verbose", "true")])).expect("valid");
        assert_eq!(c, Config { url: "http://x".into(), expect: 200, verbose: true, body_contains: None, retries: 0 });
    }

    #[test]
    fn errors_name_the_problem() {
        let e = from_map::<Config>(&map(&[("url", "u"), ("expect", "lots"), ("verbose", "no")])).expect_err("bad");
        assert!(e.contains("`lots` is not a u16"), "{e}");
        let e = from_map::<Config>(&map(&[("expect", "1"), ("verbose", "true")])).expect_err("missing");
        assert!(e.contains("missing field `url`"), "{e}");
    }
}
