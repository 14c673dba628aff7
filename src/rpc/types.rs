//! The names of message and reply types, and the fingerprints that the checks of asks,
//! replies and lookups compare.
//!
//! A type is known by its *wire name*: [`std::any::type_name`] with every module path
//! left out (`core::option::Option<alloc::string::String>` is `Option<String>`,
//! `my_crate::kv::KvMsg` is `KvMsg`). Its *fingerprint* is the 64-bit FNV-1a hash of the
//! wire name (never 0, which on the wire means "no claim"). Two types match when their
//! fingerprints are equal:
//!
//! - a type moved to another module or crate, or a copy of one enum in two programs,
//!   still matches (same name); a type alias is the type it names;
//! - a reference is the owned type it serializes as, at any depth: `&str` matches
//!   `String`, `&[T]` matches `Vec<T>`, `&T` matches `T` (`reply.reply("pong")` answers
//!   an ask for a `String`; no asker can name a borrowed type);
//! - two types of different names never match (`bool` and `Option<String>`, `KvMsg` and
//!   `CounterMsg`), whatever their bytes would decode as;
//! - two types of the same name in different modules match: the name is the protocol;
//! - the shape is not compared: a variant added to `KvMsg` on one side only still
//!   matches, and what the codec then makes of the bytes decides (see the crate docs
//!   for the changes that stay compatible);
//! - `type_name` is best effort: two builds made with different compiler versions may
//!   spell a name differently (the standard library's rendering of closures, `dyn` or
//!   lifetimes is not promised to stay the same), and then do not match.
//!
//! A fingerprint is computed once per type and thread (a small cache keyed by the
//! address of the type's name); afterwards it costs a thread-local lookup and a compare.

use std::cell::Cell;
use std::fmt;
use std::hash::Hasher;

use crate::fnv::Fnv;

/// The fingerprint of `T`'s wire name (see the module docs); never 0.
pub(crate) fn fingerprint<T: ?Sized>() -> u64 {
    let name = std::any::type_name::<T>();
    let key = (name.as_ptr() as usize, name.len());
    let slot = (key.0 >> 3 ^ key.1) % CACHE_SLOTS;
    CACHE.with(|cache| {
        let (ptr, len, fp) = cache[slot].get();
        if (ptr, len) == key {
            return fp;
        }
        let fp = fingerprint_of(name);
        cache[slot].set((key.0, key.1, fp));
        fp
    })
}

const CACHE_SLOTS: usize = 16;

thread_local! {
    /// (address of a type name, its length, its fingerprint); a slot with length 0 is
    /// empty (no type name is empty).
    static CACHE: [Cell<(usize, usize, u64)>; CACHE_SLOTS] =
        const { [const { Cell::new((0, 0, 0)) }; CACHE_SLOTS] };
}

/// The fingerprint of the wire name of the type called `full_name` (as
/// [`std::any::type_name`] spells it); never 0.
pub(crate) fn fingerprint_of(full_name: &str) -> u64 {
    let mut short = String::with_capacity(full_name.len());
    for_each_kept(full_name, |part| short.push_str(part));
    let mut hash = Fnv::default();
    hash.write(owned_name(&short, 0).as_bytes());
    match hash.finish() {
        0 => 1,
        fp => fp,
    }
}

/// `name` (a wire name) with every reference replaced by the owned type it serializes
/// as and is received as: `&str` is `String`, a slice `&[T]` is `Vec<T>`, any other
/// `&T` (or `&mut T`) is `T`, at any depth (`Option<&str>` is `Option<String>`).
/// A reply is `DeserializeOwned`, so no asker can name a borrowed type; serde writes a
/// reference as what it refers to, and a `str` or slice as a `String` or `Vec`.
///
/// Slices nested deeper than [`MAX_SLICE_DEPTH`] are left as they are (on both sides
/// alike), so that a name a peer sends costs at most that many passes over it.
fn owned_name(name: &str, depth: usize) -> String {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len() + 8);
    let mut at = 0;
    let mut copied = 0;
    while at < bytes.len() {
        if bytes[at] != b'&' {
            at += 1;
            continue;
        }
        out.push_str(&name[copied..at]);
        at += 1;
        for skip in ["mut ", "'static "] {
            if name[at..].starts_with(skip) {
                at += skip.len();
            }
        }
        if name[at..].starts_with("str") && !bytes.get(at + 3).copied().is_some_and(is_ident) {
            out.push_str("String");
            at += 3;
        } else if bytes.get(at) == Some(&b'[') && depth < MAX_SLICE_DEPTH {
            if let Some((close, is_slice)) = closing_bracket(bytes, at) {
                if is_slice {
                    out.push_str("Vec<");
                    out.push_str(&owned_name(&name[at + 1..close], depth + 1));
                    out.push('>');
                    at = close + 1;
                }
            }
        }
        copied = at;
    }
    out.push_str(&name[copied..]);
    out
}

const MAX_SLICE_DEPTH: usize = 8;

/// The index of the `]` that closes the `[` at `open`, and whether the brackets hold a
/// slice (`[T]`) rather than an array (`[T; N]`, a `;` at their own depth).
fn closing_bracket(bytes: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut depth = 0usize;
    let mut is_slice = true;
    for (i, &byte) in bytes.iter().enumerate().skip(open) {
        match byte {
            b'[' | b'<' | b'(' => depth += 1,
            b']' | b'>' | b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((i, is_slice));
                }
            }
            b';' if depth == 1 => is_slice = false,
            _ => {}
        }
    }
    None
}

/// Displays the wire name of `T` (rendered only when displayed, e.g. in an error).
pub(crate) struct TypeLabel(pub(crate) &'static str);

impl TypeLabel {
    pub(crate) fn of<T: ?Sized>() -> Self {
        Self(std::any::type_name::<T>())
    }
}

impl fmt::Display for TypeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut result = Ok(());
        for_each_kept(self.0, |part| {
            if result.is_ok() {
                result = f.write_str(part);
            }
        });
        result
    }
}

/// Calls `keep` with the pieces of `full_name` that make its wire name, in order: every
/// identifier followed by `::` is left out, with the `::`.
fn for_each_kept(full_name: &str, mut keep: impl FnMut(&str)) {
    let bytes = full_name.as_bytes();
    let mut at = 0;
    let mut kept_from = 0;
    while at < bytes.len() {
        if !is_ident(bytes[at]) {
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && is_ident(bytes[at]) {
            at += 1;
        }
        if bytes[at..].starts_with(b"::") {
            // A path segment: keep what came before it, skip it and its `::`.
            keep(&full_name[kept_from..start]);
            at += 2;
            kept_from = at;
        }
    }
    keep(&full_name[kept_from..]);
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_leave_out_module_paths() {
        for (full, wire) in [
            ("bool", "bool"),
            (
                "core::option::Option<alloc::string::String>",
                "Option<String>",
            ),
            ("(u64, alloc::string::String)", "(u64, String)"),
            ("[u8; 4]", "[u8; 4]"),
            ("&str", "&str"),
            ("my_crate::kv::KvMsg", "KvMsg"),
            (
                "alloc::vec::Vec<my::Pair<u8, other::Thing>>",
                "Vec<Pair<u8, Thing>>",
            ),
            ("alloc::boxed::Box<dyn core::any::Any>", "Box<dyn Any>"),
            ("<T as a::Trait>::Assoc", "<T as Trait>::Assoc"),
        ] {
            assert_eq!(TypeLabel(full).to_string(), wire, "{full}");
            assert_eq!(fingerprint_of(full), fingerprint_of(wire), "{full}");
        }
    }

    #[test]
    fn references_are_named_as_the_owned_types_they_serialize_as() {
        for (name, owned) in [
            ("&str", "String"),
            ("&&str", "String"),
            ("&mut str", "String"),
            ("&strange::Thing", "Thing"),
            ("core::option::Option<&str>", "Option<String>"),
            ("&[u8]", "Vec<u8>"),
            ("&[u8; 4]", "[u8; 4]"),
            ("&[[u8; 2]]", "Vec<[u8; 2]>"),
            ("&[&str]", "Vec<String>"),
            ("(&[(u8, &str)], &[u8; 2])", "(Vec<(u8, String)>, [u8; 2])"),
            ("&my::Pair<&str, &[bool]>", "Pair<String, Vec<bool>>"),
            ("&'static str", "String"),
            ("&", ""),
            ("&[u8", "[u8"),
        ] {
            assert_eq!(fingerprint_of(name), fingerprint_of(owned), "{name}");
        }
        assert_eq!(fingerprint::<&str>(), fingerprint::<String>());
        assert_eq!(fingerprint::<&[u8]>(), fingerprint::<Vec<u8>>());
        assert_ne!(fingerprint::<&str>(), fingerprint::<Vec<u8>>());
        assert_ne!(fingerprint::<[u8; 2]>(), fingerprint::<Vec<u8>>());
        // Shown as the endpoint spelled it.
        assert_eq!(TypeLabel::of::<&str>().to_string(), "&str");
        // A hostile name (the verifier hashes names peers send) costs a few passes.
        let deep = "&[".repeat(100_000) + &"]".repeat(100_000);
        assert_ne!(fingerprint_of(&deep), 0);
    }

    #[test]
    fn fingerprints_tell_names_apart_and_are_never_zero() {
        assert_ne!(fingerprint::<bool>(), fingerprint::<Option<String>>());
        assert_ne!(fingerprint::<u64>(), fingerprint::<String>());
        assert_ne!(fingerprint::<bool>(), fingerprint::<u8>());
        assert_eq!(fingerprint::<String>(), fingerprint_of("String"));
        assert_eq!(
            fingerprint::<Option<String>>(),
            fingerprint_of("Option<String>")
        );
        // Cached: the same answer the second time, for many types sharing slots.
        for _ in 0..2 {
            assert_eq!(fingerprint::<Vec<u8>>(), fingerprint_of("Vec<u8>"));
            assert_eq!(fingerprint::<(u8, u16)>(), fingerprint_of("(u8, u16)"));
            assert_eq!(fingerprint::<()>(), fingerprint_of("()"));
        }
        for name in ["", "a", "bool", "Option<String>"] {
            assert_ne!(fingerprint_of(name), 0);
        }
    }

    #[test]
    fn types_of_the_same_name_in_other_modules_match() {
        mod a {
            pub(super) struct Msg;
        }
        mod b {
            pub(super) struct Msg;
        }
        assert_eq!(fingerprint::<a::Msg>(), fingerprint::<b::Msg>());
        assert_eq!(TypeLabel::of::<a::Msg>().to_string(), "Msg");
    }
}
