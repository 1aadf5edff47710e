//! The field names of a record struct, read from its `Deserialize` implementation (serde tells a
//! deserializer which fields a struct has), so the reader can tell a newer schema's extra fields
//! from ours without a hand-kept list that could drift.

use serde::{
    de::{self, Visitor},
    forward_to_deserialize_any, Deserialize, Deserializer,
};

/// The fields `T` reads, for a struct that derives `Deserialize`; empty for anything else.
pub fn of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut probe = Probe { fields: &[] };
    // The probe always fails, after it has seen the field list.
    let _ = T::deserialize(&mut probe);
    probe.fields
}

struct Probe {
    fields: &'static [&'static str],
}

impl<'de> Deserializer<'de> for &mut Probe {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.fields = fields;
        Err(de::Error::custom("field probe"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Summary, TransitionRecord};

    #[test]
    fn lists_struct_fields() {
        let fields = of::<TransitionRecord>();
        assert!(fields.contains(&"skaddr") && fields.contains(&"ctx_comm"));
        assert_eq!(of::<Summary>().first(), Some(&"ts_ns"));
        assert!(of::<u32>().is_empty());
    }
}
