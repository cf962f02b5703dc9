//! The tracing deserializer: it answers each request a type's `Deserialize`
//! makes with a small value and records the request in the pass's facts.
//!
//! Invariants: every answer is finite (bounded strings, sequences of at most
//! one element per pass, maps of at most one entry), so a pass always ends;
//! requests postcard cannot decode (`deserialize_any`) end the trace with an
//! error naming them.

use super::*;

/// How a pass stops early.
#[derive(Debug)]
pub(super) enum TraceError {
    /// A container was entered a third time on one path. `handled`: what
    /// to do about it next pass has been recorded.
    Recursion { handled: bool },
    /// A `Deserialize` impl refused a primitive's answer; another is
    /// recorded for the next pass.
    Retry,
    /// Tracing cannot go on.
    Other(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Recursion { .. } => f.write_str("recursion"),
            TraceError::Retry => f.write_str("retry"),
            TraceError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        TraceError::Other(msg.to_string())
    }
}

/// The tracing deserializer: one per value requested.
#[derive(Clone)]
pub(super) struct Tracer<'a> {
    pub(super) ctx: &'a RefCell<Ctx>,
    pub(super) pos: Pos,
}

/// What a string is answered with, in turn, when a type refuses the
/// previous answer (an id, a time or an address that parses itself).
pub(super) const STRS: &[&str] = &[
    "",
    "0",
    "a",
    "00000000-0000-0000-0000-000000000000",
    "1970-01-01T00:00:00Z",
    "http://localhost/",
];
/// The same for byte strings (fixed-size ids, hashes, keys).
pub(super) const BYTES: &[&[u8]] = &[b"", b"0", &[0; 16], &[0; 32]];

pub(super) const ANY: &str = "it (or a type inside it) decodes with `deserialize_any`, which postcard \
                   cannot do: `#[serde(flatten)]`, `#[serde(untagged)]`, internally or \
                   adjacently tagged enums and `serde_json::Value` all need it; use plain \
                   structs and externally tagged enums";

impl<'a> Tracer<'a> {
    pub(super) fn at(&self, pos: Pos) -> Tracer<'a> {
        Tracer { ctx: self.ctx, pos }
    }

    pub(super) fn set_last(&self, f: Format) {
        self.ctx.borrow_mut().last = f;
    }

    pub(super) fn take_last(&self) -> Format {
        std::mem::replace(&mut self.ctx.borrow_mut().last, Format::Unknown)
    }

    /// Which of `n` candidate answers a primitive gives at this place.
    pub(super) fn candidate(&self, n: usize) -> usize {
        self.ctx
            .borrow()
            .alt
            .get(&self.pos)
            .copied()
            .unwrap_or(0)
            .min(n - 1)
    }

    /// A primitive's answer was refused: try the next candidate next pass.
    pub(super) fn refused(&self, e: TraceError, tried: usize, n: usize) -> TraceError {
        match e {
            TraceError::Other(_) if tried + 1 < n => {
                let mut c = self.ctx.borrow_mut();
                c.alt.insert(self.pos.clone(), tried + 1);
                c.progress = true;
                TraceError::Retry
            }
            other => other,
        }
    }

    pub(super) fn prim<V, T: Copy>(
        self,
        name: &'static str,
        candidates: &[T],
        visit: impl FnOnce(T) -> Result<V, TraceError>,
    ) -> Result<V, TraceError> {
        let i = self.candidate(candidates.len());
        self.set_last(Format::Prim(name));
        visit(candidates[i]).map_err(|e| self.refused(e, i, candidates.len()))
    }

    /// The key of a container of type `ty` at this place.
    pub(super) fn key(&self, ty: TypeKey) -> Key {
        Key {
            ty,
            at: Box::new(self.pos.clone()),
        }
    }

    /// The end of an option or a map whose inner value was traced: if it
    /// recursed with nothing recorded yet, this place must be empty from now
    /// on (with `shape` as learned).
    pub(super) fn empty_if_recursed<V>(
        &self,
        r: Result<V, TraceError>,
        shape: Format,
    ) -> Result<V, TraceError> {
        match r {
            Err(TraceError::Recursion { handled: false }) => {
                let mut c = self.ctx.borrow_mut();
                c.empty.insert(self.pos.clone(), shape.clone());
                c.progress = true;
                c.last = shape;
                Err(TraceError::Recursion { handled: true })
            }
            r => {
                self.set_last(shape);
                r
            }
        }
    }

    /// Enters a container: `Err` if its type is already twice on this path.
    pub(super) fn enter(&self, key: &Key) -> Result<usize, TraceError> {
        let mut c = self.ctx.borrow_mut();
        let count = c.entered(&key.ty);
        if count >= 2 {
            c.last = Format::Back(key.ty.clone());
            return Err(TraceError::Recursion { handled: false });
        }
        c.stack.push(key.clone());
        Ok(count)
    }

    pub(super) fn leave(&self, key: &Key) {
        let mut c = self.ctx.borrow_mut();
        c.stack.pop();
        c.last = Format::Ref(key.clone());
    }

    /// Visits `len` fixed elements (a tuple's, a struct's, a variant's),
    /// each traced at its own `Step::Field` under this place: the visitor's
    /// answer and each element's shape, as far as it got.
    pub(super) fn elements<'de, V: Visitor<'de>>(
        &self,
        len: usize,
        visitor: V,
    ) -> (Result<V::Value, TraceError>, Vec<Format>) {
        let formats = RefCell::new(vec![Format::Unknown; len]);
        let r = visitor.visit_seq(Elements {
            tracer: self.clone(),
            formats: &formats,
            next: 0,
        });
        (r, formats.into_inner())
    }

    /// Traces one value one `step` below this place into `shape`.
    pub(super) fn traced<'de, S: DeserializeSeed<'de>>(
        &self,
        step: Step,
        seed: S,
        shape: &RefCell<Format>,
    ) -> Result<S::Value, TraceError> {
        let r = seed.deserialize(self.at(self.pos.child(step)));
        *shape.borrow_mut() = self.take_last();
        r
    }

    pub(super) fn fields<'de, V: Visitor<'de>>(
        self,
        key: Key,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.enter(&key)?;
        let (r, formats) = self.at(Pos::inside(&key)).elements(len, visitor);
        self.leave(&key);
        let v = r?;
        self.ctx
            .borrow_mut()
            .record(&key, Content::Fields(formats))?;
        Ok(v)
    }
}

macro_rules! prims {
    ($($method:ident $visit:ident $name:literal [$($c:expr),*];)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            self.prim($name, &[$($c),*], |x| visitor.$visit(x))
        }
    )*};
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    prims! {
        deserialize_bool visit_bool "bool" [false, true];
        deserialize_i8 visit_i8 "i8" [0, 1];
        deserialize_i16 visit_i16 "i16" [0, 1];
        deserialize_i32 visit_i32 "i32" [0, 1];
        deserialize_i64 visit_i64 "i64" [0, 1];
        deserialize_i128 visit_i128 "i128" [0, 1];
        deserialize_u8 visit_u8 "u8" [0, 1];
        deserialize_u16 visit_u16 "u16" [0, 1];
        deserialize_u32 visit_u32 "u32" [0, 1];
        deserialize_u64 visit_u64 "u64" [0, 1];
        deserialize_u128 visit_u128 "u128" [0, 1];
        deserialize_f32 visit_f32 "f32" [0.0, 1.0];
        deserialize_f64 visit_f64 "f64" [0.0, 1.0];
        deserialize_char visit_char "char" ['a', '0'];
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.prim("str", STRS, |s| visitor.visit_str(s))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.prim("str", STRS, |s| visitor.visit_string(s.to_string()))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.prim("bytes", BYTES, |b| visitor.visit_bytes(b))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.prim("bytes", BYTES, |b| visitor.visit_byte_buf(b.to_vec()))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.set_last(Format::Prim("unit"));
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        // postcard writes nothing for either.
        self.set_last(Format::Prim("unit"));
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.ctx.borrow().minimal {
            self.set_last(Format::Option(Box::new(Format::Unknown)));
            return visitor.visit_none();
        }
        let known = self.ctx.borrow().empty.get(&self.pos).cloned();
        if let Some(shape) = known {
            self.set_last(shape);
            return visitor.visit_none();
        }
        let r = visitor.visit_some(self.at(self.pos.child(Step::Some)));
        let shape = Format::Option(Box::new(self.take_last()));
        self.empty_if_recursed(r, shape)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.key(TypeKey::Newtype(name));
        self.enter(&key)?;
        let r = visitor.visit_newtype_struct(self.at(Pos::inside(&key)));
        let inner = self.take_last();
        self.leave(&key);
        let v = r?;
        self.ctx
            .borrow_mut()
            .record(&key, Content::Newtype(inner))?;
        Ok(v)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let elem = RefCell::new(Format::Unknown);
        // (Read first: no borrow of the context may outlive a statement
        // that calls the visitor.)
        let minimal = self.ctx.borrow().minimal;
        let r = visitor.visit_seq(OneElement {
            tracer: self.clone(),
            elem: &elem,
            done: minimal,
        });
        self.set_last(Format::Seq(Box::new(elem.into_inner())));
        r
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (r, formats) = self.elements(len, visitor);
        self.set_last(Format::Tuple(formats));
        r
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.key(TypeKey::TupleStruct(name, len));
        self.fields(key, len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let known = self.ctx.borrow().empty.get(&self.pos).cloned();
        let minimal = self.ctx.borrow().minimal;
        let cells = (RefCell::new(Format::Unknown), RefCell::new(Format::Unknown));
        let r = visitor.visit_map(OneEntry {
            tracer: self.clone(),
            key: &cells.0,
            value: &cells.1,
            state: if known.is_some() || minimal { 2 } else { 0 },
        });
        let shape = known.unwrap_or_else(|| {
            Format::Map(
                Box::new(cells.0.into_inner()),
                Box::new(cells.1.into_inner()),
            )
        });
        self.empty_if_recursed(r, shape)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.key(TypeKey::Struct(name, fields));
        self.fields(key, fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.key(TypeKey::Enum(name, variants));
        if variants.is_empty() {
            // No value exists; the shape does.
            let mut c = self.ctx.borrow_mut();
            if !c.contents.contains_key(&key) {
                c.contents
                    .insert(key.clone(), Content::Variants(Vec::new()));
                c.progress = true;
            }
            c.last = Format::Ref(key);
            return Err(TraceError::Recursion { handled: false });
        }
        let count = self.enter(&key)?;
        let choice = self.ctx.borrow().choose(&key, count);
        let chosen = match choice {
            Ok(v) => v,
            Err(e) => {
                self.leave(&key);
                return Err(e);
            }
        };
        let traced = RefCell::new(None);
        let r = visitor.visit_enum(OneVariant {
            tracer: self.at(Pos::inside(&key).child(Step::Variant(chosen))),
            index: chosen,
            traced: &traced,
        });
        self.leave(&key);
        match r {
            Ok(v) => {
                let Some(variant) = traced.into_inner() else {
                    return Err(TraceError::Other(format!(
                        "the Deserialize impl of {} did not read its variant",
                        key.describe()
                    )));
                };
                let mut all = vec![None; variants.len()];
                all[chosen as usize] = Some(variant);
                self.ctx.borrow_mut().record(&key, Content::Variants(all))?;
                Ok(v)
            }
            Err(TraceError::Recursion { handled: false }) => {
                // This variant leads back into a container already twice on
                // the path: when re-entered, pick another.
                let mut c = self.ctx.borrow_mut();
                if c.recursive.insert((key.clone(), chosen)) {
                    c.progress = true;
                }
                c.last = Format::Ref(key);
                Err(TraceError::Recursion { handled: true })
            }
            Err(e) => Err(e),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError::Other(ANY.into()))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError::Other(ANY.into()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError::Other(ANY.into()))
    }

    fn is_human_readable(&self) -> bool {
        // As postcard: types with two forms (addresses, times) use the
        // compact one.
        false
    }
}

/// A sequence of one element (an empty one if the element recursed).
pub(super) struct OneElement<'a, 'b> {
    pub(super) tracer: Tracer<'a>,
    pub(super) elem: &'b RefCell<Format>,
    pub(super) done: bool,
}

impl<'de> SeqAccess<'de> for OneElement<'_, '_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        match self.tracer.traced(Step::Elem, seed, self.elem) {
            Ok(v) => Ok(Some(v)),
            // An element that recursed (or cannot exist): the sequence is
            // empty; the element's shape is still known.
            Err(TraceError::Recursion { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The fixed elements of a tuple, struct or variant.
pub(super) struct Elements<'a, 'b> {
    pub(super) tracer: Tracer<'a>,
    pub(super) formats: &'b RefCell<Vec<Format>>,
    pub(super) next: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_, '_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        let len = self.formats.borrow().len();
        if self.next >= len {
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        let shape = RefCell::new(Format::Unknown);
        let r = self.tracer.traced(Step::Field(i), seed, &shape);
        self.formats.borrow_mut()[i] = shape.into_inner();
        r.map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.formats.borrow().len() - self.next)
    }
}

/// A map of one entry (none if its shape must be empty).
pub(super) struct OneEntry<'a, 'b> {
    pub(super) tracer: Tracer<'a>,
    pub(super) key: &'b RefCell<Format>,
    pub(super) value: &'b RefCell<Format>,
    /// 0: key next; 1: value next; 2: done.
    pub(super) state: u8,
}

impl<'de> MapAccess<'de> for OneEntry<'_, '_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if self.state != 0 {
            return Ok(None);
        }
        self.state = 1;
        match self.tracer.traced(Step::Key, seed, self.key) {
            Ok(v) => Ok(Some(v)),
            Err(TraceError::Recursion { .. }) => {
                self.state = 2;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        self.state = 2;
        self.tracer.traced(Step::Value, seed, self.value)
    }
}

/// An enum answering with one chosen variant.
pub(super) struct OneVariant<'a, 'b> {
    pub(super) tracer: Tracer<'a>,
    pub(super) index: u32,
    pub(super) traced: &'b RefCell<Option<Variant>>,
}

impl<'a, 'b, 'de> EnumAccess<'de> for OneVariant<'a, 'b> {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), TraceError> {
        let v = seed.deserialize(de::value::U32Deserializer::<TraceError>::new(self.index))?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for OneVariant<'_, '_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        *self.traced.borrow_mut() = Some(Variant::Unit);
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        let r = seed.deserialize(self.tracer.clone());
        let inner = self.tracer.take_last();
        let v = r?;
        *self.traced.borrow_mut() = Some(Variant::Newtype(inner));
        Ok(v)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (r, formats) = self.tracer.elements(len, visitor);
        let v = r?;
        *self.traced.borrow_mut() = Some(Variant::Tuple(formats));
        Ok(v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (r, formats) = self.tracer.elements(fields.len(), visitor);
        let v = r?;
        *self.traced.borrow_mut() = Some(Variant::Struct(fields, formats));
        Ok(v)
    }
}
