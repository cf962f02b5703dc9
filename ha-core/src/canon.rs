//! A canonical encoding, for telling whether two values of one type are
//! the same (the determinism check of [`crate::sm::Sessions`]).
//!
//! Owns: [`canonical`], a serde serializer whose output depends only on the
//! value, never on the order a collection hands out its elements: every
//! sequence's elements and every map's entries are sorted by their own
//! canonical bytes. A `HashMap` or `HashSet` rebuilt from a snapshot
//! (which hashes with new keys and iterates in another order) encodes as
//! the one it was taken from.
//!
//! Invariants:
//! 1. Two values with equal canonical bytes are equal as multisets at every
//!    level: the encoding is self-delimiting (a tag before every value,
//!    lengths before every variable part), so no two different values of
//!    one type share it, except sequences that differ only in the order of
//!    their elements (the price of sorting: a `Vec` permuted is not seen).
//! 2. Never a format for storage or the network: only ever compared within
//!    one process.

use std::fmt;

use serde::ser::{self, Serialize};

/// The canonical bytes of `v` (see the module docs).
pub(crate) fn canonical<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, String> {
    let mut c = Canon { out: Vec::new() };
    v.serialize(&mut c).map_err(|e| e.0)?;
    Ok(c.out)
}

/// Why a value could not be encoded.
#[derive(Debug)]
pub(crate) struct CanonError(String);

impl fmt::Display for CanonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonError {}

impl ser::Error for CanonError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        CanonError(msg.to_string())
    }
}

struct Canon {
    out: Vec<u8>,
}

impl Canon {
    fn tag(&mut self, t: u8) {
        self.out.push(t);
    }
    fn len(&mut self, n: usize) {
        self.out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    fn chunk(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.out.extend_from_slice(bytes);
    }
}

/// A sequence or map: its parts gathered, then sorted and written.
struct Sorted<'a> {
    parent: &'a mut Canon,
    tag: u8,
    parts: Vec<Vec<u8>>,
    /// A map's key waiting for its value.
    key: Option<Vec<u8>>,
}

impl Sorted<'_> {
    fn finish(mut self) {
        self.parts.sort_unstable();
        self.parent.tag(self.tag);
        self.parent.len(self.parts.len());
        for p in &self.parts {
            self.parent.chunk(p);
        }
    }
}

/// A tuple, struct or variant: its parts in order.
struct Ordered<'a>(&'a mut Canon);

macro_rules! fixed {
    ($($method:ident $ty:ty, $tag:literal;)*) => {$(
        fn $method(self, v: $ty) -> Result<(), CanonError> {
            self.tag($tag);
            self.out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
    )*};
}

impl<'a> ser::Serializer for &'a mut Canon {
    type Ok = ();
    type Error = CanonError;
    type SerializeSeq = Sorted<'a>;
    type SerializeTuple = Ordered<'a>;
    type SerializeTupleStruct = Ordered<'a>;
    type SerializeTupleVariant = Ordered<'a>;
    type SerializeMap = Sorted<'a>;
    type SerializeStruct = Ordered<'a>;
    type SerializeStructVariant = Ordered<'a>;

    fixed! {
        serialize_i8 i8, 2;
        serialize_i16 i16, 3;
        serialize_i32 i32, 4;
        serialize_i64 i64, 5;
        serialize_i128 i128, 6;
        serialize_u8 u8, 7;
        serialize_u16 u16, 8;
        serialize_u32 u32, 9;
        serialize_u64 u64, 10;
        serialize_u128 u128, 11;
    }

    fn serialize_bool(self, v: bool) -> Result<(), CanonError> {
        self.tag(1);
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), CanonError> {
        self.tag(12);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), CanonError> {
        self.tag(13);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), CanonError> {
        self.tag(14);
        self.out.extend_from_slice(&u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), CanonError> {
        self.tag(15);
        self.chunk(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CanonError> {
        self.tag(16);
        self.chunk(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), CanonError> {
        self.tag(17);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), CanonError> {
        self.tag(18);
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CanonError> {
        self.tag(19);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), CanonError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        i: u32,
        _: &'static str,
    ) -> Result<(), CanonError> {
        self.tag(20);
        self.out.extend_from_slice(&i.to_le_bytes());
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), CanonError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        i: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), CanonError> {
        self.tag(21);
        self.out.extend_from_slice(&i.to_le_bytes());
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Sorted<'a>, CanonError> {
        Ok(Sorted {
            parent: self,
            tag: 22,
            parts: Vec::new(),
            key: None,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Ordered<'a>, CanonError> {
        self.tag(23);
        Ok(Ordered(self))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Ordered<'a>, CanonError> {
        self.serialize_tuple(0)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        i: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Ordered<'a>, CanonError> {
        self.tag(24);
        self.out.extend_from_slice(&i.to_le_bytes());
        Ok(Ordered(self))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Sorted<'a>, CanonError> {
        Ok(Sorted {
            parent: self,
            tag: 25,
            parts: Vec::new(),
            key: None,
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Ordered<'a>, CanonError> {
        self.serialize_tuple(0)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Ordered<'a>, CanonError> {
        self.serialize_tuple_variant(name, i, variant, len)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

impl ser::SerializeSeq for Sorted<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonError> {
        self.parts.push(canonical(v).map_err(CanonError)?);
        Ok(())
    }
    fn end(self) -> Result<(), CanonError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeMap for Sorted<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), CanonError> {
        self.key = Some(canonical(k).map_err(CanonError)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| CanonError("a map value without its key".into()))?;
        let value = canonical(v).map_err(CanonError)?;
        // One part per entry: the key, then the value, each length-prefixed.
        let mut entry = Canon { out: Vec::new() };
        entry.chunk(&key);
        entry.chunk(&value);
        self.parts.push(entry.out);
        Ok(())
    }
    fn end(self) -> Result<(), CanonError> {
        self.finish();
        Ok(())
    }
}

macro_rules! ordered {
    ($($trait:ident $method:ident;)*) => {$(
        impl ser::$trait for Ordered<'_> {
            type Ok = ();
            type Error = CanonError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonError> {
                v.serialize(&mut *self.0)
            }
            fn end(self) -> Result<(), CanonError> {
                Ok(())
            }
        }
    )*};
}

ordered! {
    SerializeTuple serialize_element;
    SerializeTupleStruct serialize_field;
    SerializeTupleVariant serialize_field;
}

impl ser::SerializeStruct for Ordered<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> Result<(), CanonError> {
        v.serialize(&mut *self.0)
    }
    fn end(self) -> Result<(), CanonError> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Ordered<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> Result<(), CanonError> {
        v.serialize(&mut *self.0)
    }
    fn end(self) -> Result<(), CanonError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::canonical;

    #[test]
    fn hash_collections_encode_alike_whatever_their_order() {
        let a: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let b: HashMap<String, u32> = (0..50).rev().map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(canonical(&a).unwrap(), canonical(&b).unwrap());
        let s: HashSet<u64> = (0..50).collect();
        let t: HashSet<u64> = (0..50).rev().collect();
        assert_eq!(canonical(&s).unwrap(), canonical(&t).unwrap());
        // A map and its ordered twin differ from a changed one.
        let bt: BTreeMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let mut c = bt.clone();
        c.insert("k7".into(), 8);
        assert_ne!(canonical(&bt).unwrap(), canonical(&c).unwrap());
    }

    #[test]
    fn different_values_differ() {
        assert_ne!(
            canonical(&(1u32, 2u32)).unwrap(),
            canonical(&(2u32, 1u32)).unwrap()
        );
        assert_ne!(
            canonical(&Some(0u8)).unwrap(),
            canonical(&None::<u8>).unwrap()
        );
        assert_ne!(
            canonical(&vec!["ab".to_string()]).unwrap(),
            canonical(&vec!["a".to_string(), "b".to_string()]).unwrap()
        );
        assert_ne!(canonical(&-1i32).unwrap(), canonical(&u32::MAX).unwrap());
    }
}
