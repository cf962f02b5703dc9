//! A canonical encoding, for telling whether two values of one type are
//! the same (the determinism check of [`crate::sm::Sessions`]).
//!
//! Owns: [`canonical`], a serde serializer whose output depends only on the
//! value, never on the order a map hands out its entries: every map's
//! entries are sorted by their own canonical bytes, so a `HashMap` rebuilt
//! from a snapshot (new hash keys, another iteration order) encodes as the
//! one it was taken from. Sequences are written in order, since their order
//! is their meaning (a `Vec`), except in [`Order::Sorted`], which sorts
//! them too: serde writes a `HashSet` as a sequence, so only that mode
//! makes two equal sets encode alike, at the price of not telling a `Vec`
//! from its permutation.
//!
//! Invariants:
//! 1. The encoding is self-delimiting (a tag before every value, lengths
//!    before every variable part and every compound): two values of one
//!    type with equal bytes are equal, up to the order of map entries (and
//!    of sequence elements, in `Sorted`).
//! 2. Ordered sequences are written in place; only map entries (and, in
//!    `Sorted`, sequence elements) are buffered (and copied once more per
//!    level of nesting).
//! 3. Never a format for storage or the network: only ever compared within
//!    one process.

use std::fmt;

use serde::ser::{self, Serialize};

/// Whether sequences keep their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Sequences in order, maps sorted.
    Kept,
    /// Sequences and maps sorted.
    Sorted,
}

/// The canonical bytes of `v` (see the module docs).
pub(crate) fn canonical<T: Serialize + ?Sized>(v: &T, order: Order) -> Result<Vec<u8>, String> {
    let mut c = Canon {
        out: Vec::new(),
        order,
    };
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
    order: Order,
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

/// A map (or, in `Order::Sorted`, a sequence): its parts gathered, then
/// sorted and written. In `Order::Kept` a sequence's elements go straight
/// to the output (`parts` stays empty; `count` counts them).
struct Sorted<'a> {
    parent: &'a mut Canon,
    sort: bool,
    parts: Vec<Vec<u8>>,
    /// Elements written in place.
    count: usize,
    /// Where the in-place count goes (patched at the end).
    count_at: usize,
    /// A map's key waiting for its value.
    key: Option<Vec<u8>>,
}

impl<'a> Sorted<'a> {
    fn new(parent: &'a mut Canon, tag: u8, sort: bool) -> Sorted<'a> {
        parent.tag(tag);
        let count_at = parent.out.len();
        parent.len(0);
        Sorted {
            parent,
            sort,
            parts: Vec::new(),
            count: 0,
            count_at,
            key: None,
        }
    }

    fn finish(mut self) -> Result<(), CanonError> {
        if self.key.is_some() {
            return Err(CanonError("a map key without its value".into()));
        }
        if self.sort {
            self.parts.sort_unstable();
            self.count = self.parts.len();
            for p in &self.parts {
                self.parent.chunk(p);
            }
        }
        let at = self.count_at;
        self.parent.out[at..at + 8].copy_from_slice(&(self.count as u64).to_le_bytes());
        Ok(())
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
        let sort = self.order == Order::Sorted;
        Ok(Sorted::new(self, 22, sort))
    }
    fn serialize_tuple(self, len: usize) -> Result<Ordered<'a>, CanonError> {
        self.tag(23);
        self.len(len);
        Ok(Ordered(self))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Ordered<'a>, CanonError> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        i: u32,
        _: &'static str,
        len: usize,
    ) -> Result<Ordered<'a>, CanonError> {
        self.tag(24);
        self.out.extend_from_slice(&i.to_le_bytes());
        self.len(len);
        Ok(Ordered(self))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Sorted<'a>, CanonError> {
        Ok(Sorted::new(self, 25, true))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Ordered<'a>, CanonError> {
        self.serialize_tuple(len)
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
        if self.sort {
            self.parts
                .push(canonical(v, self.parent.order).map_err(CanonError)?);
        } else {
            self.count += 1;
            v.serialize(&mut *self.parent)?;
        }
        Ok(())
    }
    fn end(self) -> Result<(), CanonError> {
        self.finish()
    }
}

impl ser::SerializeMap for Sorted<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), CanonError> {
        self.key = Some(canonical(k, self.parent.order).map_err(CanonError)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| CanonError("a map value without its key".into()))?;
        let value = canonical(v, self.parent.order).map_err(CanonError)?;
        // One part per entry: the key, then the value, each length-prefixed.
        let mut entry = Canon {
            out: Vec::new(),
            order: self.parent.order,
        };
        entry.chunk(&key);
        entry.chunk(&value);
        self.parts.push(entry.out);
        Ok(())
    }
    fn end(self) -> Result<(), CanonError> {
        self.finish()
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

macro_rules! ordered_named {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Ordered<'_> {
            type Ok = ();
            type Error = CanonError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                v: &T,
            ) -> Result<(), CanonError> {
                // Named, so a field left out (`skip_serializing_if`) cannot
                // make two structs alike.
                self.0.chunk(name.as_bytes());
                v.serialize(&mut *self.0)
            }
            fn end(self) -> Result<(), CanonError> {
                Ok(())
            }
        }
    )*};
}

ordered_named!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::{Order, canonical};

    fn kept<T: serde::Serialize>(v: &T) -> Vec<u8> {
        canonical(v, Order::Kept).unwrap()
    }

    #[test]
    fn maps_encode_alike_whatever_their_order() {
        let a: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let b: HashMap<String, u32> = (0..50).rev().map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(kept(&a), kept(&b));
        let bt: BTreeMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let mut c = bt.clone();
        c.insert("k7".into(), 8);
        assert_ne!(kept(&bt), kept(&c));
    }

    #[test]
    fn sequences_keep_their_order_unless_sorted() {
        assert_ne!(kept(&vec![1u8, 2]), kept(&vec![2u8, 1]));
        // Byte strings as map keys are not taken apart.
        let m1: BTreeMap<Vec<u8>, u8> = [(b"ab".to_vec(), 1), (b"ba".to_vec(), 2)].into();
        let m2: BTreeMap<Vec<u8>, u8> = [(b"ab".to_vec(), 2), (b"ba".to_vec(), 1)].into();
        assert_ne!(kept(&m1), kept(&m2));
        let s: HashSet<u64> = (0..50).collect();
        let t: HashSet<u64> = (0..50).rev().collect();
        assert_eq!(
            canonical(&s, Order::Sorted).unwrap(),
            canonical(&t, Order::Sorted).unwrap()
        );
        assert_eq!(
            canonical(&vec![1u8, 2], Order::Sorted).unwrap(),
            canonical(&vec![2u8, 1], Order::Sorted).unwrap()
        );
    }

    #[test]
    fn different_values_differ() {
        assert_ne!(kept(&(1u32, 2u32)), kept(&(2u32, 1u32)));
        assert_ne!(kept(&Some(0u8)), kept(&None::<u8>));
        assert_ne!(
            kept(&vec!["ab".to_string()]),
            kept(&vec!["a".to_string(), "b".to_string()])
        );
        assert_ne!(
            kept(&vec![vec![1u8], vec![]]),
            kept(&vec![vec![], vec![1u8]])
        );
        assert_ne!(kept(&-1i32), kept(&u32::MAX));
    }
}
