//! What a trace learns and keeps between passes: the shape of each value
//! (`Format`), the place it was met (`Pos`, `Key`), the choices made for
//! recursion and enums (`Ctx`), and how two passes' shapes merge.
//!
//! Invariants: facts are keyed by place, never by serde name; a shape once
//! learned only grows (merging never forgets a variant or field).

use super::*;

/// The shape of one value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum Format {
    /// Not seen yet.
    #[default]
    Unknown,
    /// A primitive, by its canonical name.
    Prim(&'static str),
    Option(Box<Format>),
    Seq(Box<Format>),
    Map(Box<Format>, Box<Format>),
    /// Tuples and fixed-size arrays.
    Tuple(Vec<Format>),
    /// A named container at one place, whose content is kept in
    /// [`Ctx::contents`].
    Ref(Key),
    /// A container of this type already twice among the enclosing ones:
    /// taken for recursion, rendered as a back reference.
    Back(TypeKey),
}

/// A container type as serde names it. serde gives every instance of a
/// generic type one name (`Result<u64, E>` and `Result<String, E>` are both
/// "Result"), so a name identifies no type: contents are kept per place
/// ([`Key`]), and a name only tells recursion apart (a type found twice
/// among its own enclosing containers; a generic type nested three deep in
/// itself is taken for recursion too).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TypeKey {
    Struct(&'static str, &'static [&'static str]),
    TupleStruct(&'static str, usize),
    Newtype(&'static str),
    Enum(&'static str, &'static [&'static str]),
}

impl TypeKey {
    pub(super) fn describe(&self) -> String {
        match self {
            TypeKey::Struct(n, _) | TypeKey::TupleStruct(n, _) | TypeKey::Newtype(n) => {
                format!("the struct `{n}`")
            }
            TypeKey::Enum(n, _) => format!("the enum `{n}`"),
        }
    }
}

/// A container at one place: its type and where it sits (the enclosing
/// container's key and the steps from it), so two instances of one generic
/// type in two places are traced apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) ty: TypeKey,
    pub(super) at: Box<Pos>,
}

impl Key {
    pub(super) fn describe(&self) -> String {
        self.ty.describe()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Content {
    /// Struct or tuple struct fields, in order (names are in the key).
    Fields(Vec<Format>),
    Newtype(Format),
    /// Per variant index; `None` until traced.
    Variants(Vec<Option<Variant>>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    Unit,
    Newtype(Format),
    Tuple(Vec<Format>),
    Struct(&'static [&'static str], Vec<Format>),
}

/// One step from a container (or the root) down to a value inside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Step {
    Field(usize),
    Variant(u32),
    Some,
    Elem,
    Key,
    Value,
}

/// Where a value sits: relative to its innermost container, so what is
/// learned about a place holds wherever the container appears.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub(super) container: Option<Key>,
    pub(super) steps: Vec<Step>,
}

impl Pos {
    pub(super) fn child(&self, step: Step) -> Pos {
        let mut p = self.clone();
        p.steps.push(step);
        p
    }
    pub(super) fn inside(key: &Key) -> Pos {
        Pos {
            container: Some(key.clone()),
            steps: Vec::new(),
        }
    }
}

#[derive(Default)]
pub(super) struct Ctx {
    pub(super) contents: BTreeMap<Key, Content>,
    /// Containers entered on the current path.
    pub(super) stack: Vec<Key>,
    /// Options and maps that must be empty (their inner value recursed),
    /// with their shape as learned.
    pub(super) empty: BTreeMap<Pos, Format>,
    /// Enum variants that recurse: not chosen when the enum is re-entered.
    pub(super) recursive: BTreeSet<(Key, u32)>,
    /// Primitives whose first answer a `Deserialize` impl refused: which
    /// candidate to answer instead.
    pub(super) alt: BTreeMap<Pos, usize>,
    /// Whether this pass learned anything.
    pub(super) progress: bool,
    /// The last pass: options `None`, sequences and maps empty (a second
    /// value for the round trip; see `trace`).
    pub(super) minimal: bool,
    /// The shape of the value the last finished request produced.
    pub(super) last: Format,
}

impl Ctx {
    pub(super) fn entered(&self, ty: &TypeKey) -> usize {
        self.stack.iter().filter(|k| k.ty == *ty).count()
    }

    /// Records a container's content (or one enum variant's).
    pub(super) fn record(&mut self, key: &Key, content: Content) -> Result<(), TraceError> {
        let conflict = || {
            TraceError::Other(format!(
                "two different types are both {}, with the same field or variant names but \
                 different shapes: rename one (or use `#[serde(rename)]`)",
                key.describe()
            ))
        };
        let merged = match (self.contents.get(key), content) {
            (None, c) => c,
            (Some(Content::Fields(a)), Content::Fields(b)) => {
                Content::Fields(merge_all(a, &b).ok_or_else(conflict)?)
            }
            (Some(Content::Newtype(a)), Content::Newtype(b)) => {
                Content::Newtype(merge(a, &b).ok_or_else(conflict)?)
            }
            (Some(Content::Variants(a)), Content::Variants(b)) if a.len() == b.len() => {
                let mut out = Vec::with_capacity(a.len());
                for (x, y) in a.iter().zip(b) {
                    out.push(match (x, y) {
                        (None, y) => y,
                        (x, None) => x.clone(),
                        (Some(x), Some(y)) => Some(merge_variant(x, &y).ok_or_else(conflict)?),
                    });
                }
                Content::Variants(out)
            }
            _ => return Err(conflict()),
        };
        if self.contents.get(key) != Some(&merged) {
            self.progress = true;
            self.contents.insert(key.clone(), merged);
        }
        Ok(())
    }

    /// Something in `f` not traced yet, described; `None` if complete.
    pub(super) fn incomplete(&self, f: &Format) -> Option<String> {
        self.incomplete_in(f, &mut BTreeSet::new(), &mut Vec::new())
    }

    /// `types`: the container types enclosing `f`. A place of one of them
    /// that was never traced, or a variant of it that recursed there, is
    /// recursion: complete (rendered as a back reference).
    pub(super) fn incomplete_in(
        &self,
        f: &Format,
        seen: &mut BTreeSet<Key>,
        types: &mut Vec<TypeKey>,
    ) -> Option<String> {
        match f {
            Format::Unknown => Some("a value inside the type".into()),
            Format::Prim(_) | Format::Back(_) => None,
            Format::Option(x) | Format::Seq(x) => self.incomplete_in(x, seen, types),
            Format::Map(k, v) => self
                .incomplete_in(k, seen, types)
                .or_else(|| self.incomplete_in(v, seen, types)),
            Format::Tuple(xs) => xs.iter().find_map(|x| self.incomplete_in(x, seen, types)),
            Format::Ref(key) => {
                if !seen.insert(key.clone()) {
                    return None;
                }
                let recursion = types.contains(&key.ty);
                types.push(key.ty.clone());
                let found = match self.contents.get(key) {
                    None if recursion => None,
                    None => Some(key.describe()),
                    Some(Content::Fields(xs)) => {
                        xs.iter().find_map(|x| self.incomplete_in(x, seen, types))
                    }
                    Some(Content::Newtype(x)) => self.incomplete_in(x, seen, types),
                    Some(Content::Variants(vs)) => {
                        vs.iter().enumerate().find_map(|(i, v)| match v {
                            None if recursion && self.recursed(key, i) => None,
                            None => Some(format!(
                                "variant {} of {}",
                                variant_name(key, i),
                                key.describe()
                            )),
                            Some(v) => variant_formats(v)
                                .iter()
                                .find_map(|x| self.incomplete_in(x, seen, types)),
                        })
                    }
                };
                types.pop();
                found
            }
        }
    }

    pub(super) fn recursed(&self, key: &Key, variant: usize) -> bool {
        self.recursive.contains(&(key.clone(), variant as u32))
    }

    /// The variant an enum answers with this time (see the module docs).
    pub(super) fn choose(&self, key: &Key, count: usize) -> Result<u32, TraceError> {
        let TypeKey::Enum(_, names) = key.ty else {
            return Err(TraceError::Other("only enums choose a variant".into()));
        };
        let n = names.len() as u32;
        let known = match self.contents.get(key) {
            Some(Content::Variants(v)) => Some(v),
            _ => None,
        };
        if count == 0 {
            // First a variant never seen, then one leading to something
            // not traced yet, then any.
            if let Some(v) = (0..n).find(|&v| known.is_none_or(|k| k[v as usize].is_none())) {
                return Ok(v);
            }
            if let Some(k) = known
                && let Some(v) = (0..n).find(|&v| {
                    k[v as usize].as_ref().is_some_and(|var| {
                        variant_formats(var)
                            .iter()
                            .any(|f| self.incomplete(f).is_some())
                    })
                })
            {
                return Ok(v);
            }
        }
        // Re-entered (or all seen): a variant that does not recurse, one
        // never seen here first.
        let unseen = |v: u32| known.is_none_or(|k| k[v as usize].is_none());
        (0..n)
            .filter(|&v| !self.recursed(key, v as usize))
            .min_by_key(|&v| (!unseen(v), v))
            .ok_or_else(|| {
                TraceError::Other(format!(
                    "every variant of {} contains it again, so no value of it can be built",
                    key.describe()
                ))
            })
    }

    pub(super) fn render(
        &self,
        f: &Format,
        stack: &mut Vec<TypeKey>,
        positional: bool,
        out: &mut String,
    ) {
        match f {
            Format::Unknown => out.push('?'),
            Format::Prim(p) => out.push_str(p),
            Format::Option(x) => {
                out.push_str("option<");
                self.render(x, stack, false, out);
                out.push('>');
            }
            Format::Seq(x) => {
                let mut inner = String::new();
                self.render(x, stack, false, &mut inner);
                if inner == "u8" {
                    // postcard writes a `Vec<u8>` as it writes bytes.
                    out.push_str("bytes");
                } else {
                    out.push_str("seq<");
                    out.push_str(&inner);
                    out.push('>');
                }
            }
            Format::Map(k, v) => {
                out.push_str("map<");
                self.render(k, stack, false, out);
                out.push(',');
                self.render(v, stack, false, out);
                out.push('>');
            }
            Format::Tuple(xs) => self.render_tuple(xs, stack, out),
            Format::Back(ty) => {
                // A type inside itself: how many containers up.
                match stack.iter().rposition(|k| k == ty) {
                    Some(at) => out.push_str(&format!("^{}", stack.len() - at)),
                    None => out.push('?'),
                }
            }
            Format::Ref(key) if !self.contents.contains_key(key) => {
                // Never traced at this place: recursion (see `incomplete`).
                self.render(&Format::Back(key.ty.clone()), stack, positional, out)
            }
            Format::Ref(key) => {
                let back = stack
                    .iter()
                    .rposition(|k| *k == key.ty)
                    .map(|at| stack.len() - at);
                stack.push(key.ty.clone());
                match (&key.ty, self.contents.get(key)) {
                    (TypeKey::Struct(_, names), Some(Content::Fields(xs))) => {
                        self.render_fields(names, xs, stack, out);
                    }
                    (_, Some(Content::Fields(xs))) => self.render_tuple(xs, stack, out),
                    (_, Some(Content::Newtype(x))) => self.render(x, stack, false, out),
                    (TypeKey::Enum(_, names), Some(Content::Variants(vs))) => {
                        out.push_str("enum{");
                        for (i, v) in vs.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            out.push_str(&name(names.get(i).copied().unwrap_or("?")));
                            match v {
                                // A variant that recursed where the type
                                // re-entered itself: as in the enclosing one.
                                None => match back {
                                    Some(n) => out.push_str(&format!("^{n}")),
                                    None => out.push('?'),
                                },
                                Some(Variant::Unit) => {}
                                Some(Variant::Newtype(x)) => {
                                    self.render_list(std::slice::from_ref(x), stack, out)
                                }
                                Some(Variant::Tuple(xs)) => self.render_list(xs, stack, out),
                                Some(Variant::Struct(_, xs)) if positional => {
                                    self.render_list(xs, stack, out)
                                }
                                Some(Variant::Struct(fields, xs)) => {
                                    self.render_fields(fields, xs, stack, out)
                                }
                            }
                        }
                        out.push('}');
                    }
                    _ => out.push('?'),
                }
                stack.pop();
            }
        }
    }

    pub(super) fn render_parts(&self, xs: &[Format], stack: &mut Vec<TypeKey>) -> Vec<String> {
        xs.iter()
            .map(|x| {
                let mut s = String::new();
                self.render(x, stack, false, &mut s);
                s
            })
            .collect()
    }

    /// `(a,b)`, or `[a;n]` when all are alike (postcard writes tuples and
    /// arrays alike: each element in turn, no length).
    pub(super) fn render_tuple(&self, xs: &[Format], stack: &mut Vec<TypeKey>, out: &mut String) {
        let parts = self.render_parts(xs, stack);
        if parts.len() > 1 && parts.iter().all(|p| *p == parts[0]) {
            out.push_str(&format!("[{};{}]", parts[0], parts.len()));
        } else {
            out.push('(');
            out.push_str(&parts.join(","));
            out.push(')');
        }
    }

    /// A variant's fields by position: `(a,b)`.
    pub(super) fn render_list(&self, xs: &[Format], stack: &mut Vec<TypeKey>, out: &mut String) {
        out.push('(');
        out.push_str(&self.render_parts(xs, stack).join(","));
        out.push(')');
    }

    pub(super) fn render_fields(
        &self,
        names: &[&str],
        xs: &[Format],
        stack: &mut Vec<TypeKey>,
        out: &mut String,
    ) {
        out.push('{');
        for (i, x) in xs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&name(names.get(i).copied().unwrap_or("?")));
            out.push(':');
            self.render(x, stack, false, out);
        }
        out.push('}');
    }
}

pub(super) fn variant_name(key: &Key, i: usize) -> &'static str {
    match key.ty {
        TypeKey::Enum(_, names) => names.get(i).copied().unwrap_or("?"),
        _ => "?",
    }
}

pub(super) fn variant_formats(v: &Variant) -> Vec<Format> {
    match v {
        Variant::Unit => Vec::new(),
        Variant::Newtype(f) => vec![f.clone()],
        Variant::Tuple(fs) | Variant::Struct(_, fs) => fs.clone(),
    }
}

pub(super) fn merge(a: &Format, b: &Format) -> Option<Format> {
    Some(match (a, b) {
        (Format::Unknown, x) | (x, Format::Unknown) => x.clone(),
        (Format::Prim(x), Format::Prim(y)) if x == y => a.clone(),
        (Format::Option(x), Format::Option(y)) => Format::Option(Box::new(merge(x, y)?)),
        (Format::Seq(x), Format::Seq(y)) => Format::Seq(Box::new(merge(x, y)?)),
        (Format::Map(k, v), Format::Map(k2, v2)) => {
            Format::Map(Box::new(merge(k, k2)?), Box::new(merge(v, v2)?))
        }
        (Format::Tuple(x), Format::Tuple(y)) => Format::Tuple(merge_all(x, y)?),
        (Format::Ref(x), Format::Ref(y)) if x == y => a.clone(),
        (Format::Back(x), Format::Back(y)) if x == y => a.clone(),
        _ => return None,
    })
}

pub(super) fn merge_all(a: &[Format], b: &[Format]) -> Option<Vec<Format>> {
    if a.len() != b.len() {
        return None;
    }
    a.iter().zip(b).map(|(x, y)| merge(x, y)).collect()
}

pub(super) fn merge_variant(a: &Variant, b: &Variant) -> Option<Variant> {
    Some(match (a, b) {
        (Variant::Unit, Variant::Unit) => Variant::Unit,
        (Variant::Newtype(x), Variant::Newtype(y)) => Variant::Newtype(merge(x, y)?),
        (Variant::Tuple(x), Variant::Tuple(y)) => Variant::Tuple(merge_all(x, y)?),
        (Variant::Struct(n, x), Variant::Struct(m, y)) if n == m => {
            Variant::Struct(n, merge_all(x, y)?)
        }
        _ => return None,
    })
}
