//! `Signature-Input` and `Signature` (RFC 9421 §4) through the `sfv` Structured Fields parser.

use std::collections::HashSet;
use std::fmt;

use sfv::visitor::{DictionaryVisitor, EntryVisitor};
use sfv::{BareItem, Dictionary, InnerList, Item, KeyRef, ListEntry, Parameters, Parser};

use crate::error::{Error, ErrorKind, Result};

fn malformed(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::SignatureMalformed, detail)
}

/// One covered component: its name and whether it has the `req` flag. Other component
/// parameters (`sf`, `key`, `bs`, `tr`, `name`) are outside the WIMSE profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentId {
    /// Lower-case field name, or a derived component such as `@method`.
    pub name: String,
    /// Taken from the request of a response (`;req`).
    pub req: bool,
    /// Has parameters outside the profile (`sf`, `key`, `bs`, `tr`, `name`): such a component
    /// can be parsed (another party's signature may use it) but never rebuilt here.
    pub other_params: bool,
}

impl ComponentId {
    /// A component without parameters.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), req: false, other_params: false }
    }

    /// The same component taken from the request (`;req`).
    pub fn req(name: &str) -> Self {
        Self { name: name.to_owned(), req: true, other_params: false }
    }

    fn to_item(&self) -> Result<Item> {
        let name = sfv::String::from_string(self.name.clone()).map_err(|_| malformed("component name"))?;
        let mut item = Item::new(name);
        if self.req {
            item.params.insert(key("req"), BareItem::Boolean(true));
        }
        Ok(item)
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"{}", self.name, if self.req { ";req" } else { "" })
    }
}

pub(crate) fn key(name: &str) -> sfv::Key {
    // Only called with the fixed lower-case parameter names of RFC 9421 and the profile.
    KeyRef::from_str(name).map(ToOwned::to_owned).unwrap_or_else(|_| KeyRef::constant("invalid").to_owned())
}

/// A parsed signature: its label, covered components, parameters and value.
#[derive(Debug, Clone)]
pub struct ParsedSignature {
    /// The label (not semantic: the WIMSE signature is found by `tag`).
    pub label: String,
    /// Covered components, in order.
    pub components: Vec<ComponentId>,
    /// Signature parameters as parsed.
    pub params: Parameters,
    /// The `@signature-params` value: the inner list re-serialized by the SF serializer.
    pub signature_params: String,
    /// The raw signature bytes.
    pub value: Vec<u8>,
}

impl ParsedSignature {
    /// An integer parameter; `Err` when present with another type.
    pub fn int_param(&self, name: &'static str) -> Result<Option<i64>> {
        match self.params.get(name) {
            None => Ok(None),
            Some(BareItem::Integer(i)) => Ok(Some(i64::from(*i))),
            Some(_) => Err(malformed(format!("`{name}` is not an integer"))),
        }
    }

    /// A string parameter; `Err` when present with another type.
    pub fn str_param(&self, name: &'static str) -> Result<Option<&str>> {
        match self.params.get(name) {
            None => Ok(None),
            Some(BareItem::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(malformed(format!("`{name}` is not a string"))),
        }
    }

    /// A boolean parameter; `Err` when present with another type.
    pub fn bool_param(&self, name: &'static str) -> Result<Option<bool>> {
        match self.params.get(name) {
            None => Ok(None),
            Some(BareItem::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(malformed(format!("`{name}` is not a boolean"))),
        }
    }
}

/// A dictionary visitor that refuses a repeated key, where RFC 9651 would silently keep the
/// last one: a repeated signature label must not let two parsers see two different signatures.
struct UniqueKeys<'a> {
    dict: &'a mut Dictionary,
    seen: HashSet<String>,
}

#[derive(Debug)]
struct DuplicateLabel(String);

impl fmt::Display for DuplicateLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "duplicate label `{}`", self.0)
    }
}

impl std::error::Error for DuplicateLabel {}

impl<'de> DictionaryVisitor<'de> for UniqueKeys<'_> {
    type Out = ();
    type Error = DuplicateLabel;

    fn entry(&mut self, key: &'de KeyRef) -> std::result::Result<impl EntryVisitor<'de>, Self::Error> {
        if !self.seen.insert(key.as_str().to_owned()) {
            return Err(DuplicateLabel(key.as_str().chars().take(32).collect()));
        }
        match DictionaryVisitor::entry(&mut *self.dict, key) {
            Ok(entry) => Ok(entry),
            Err(never) => match never {},
        }
    }

    fn finish(self) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
}

/// Parses a dictionary field (all its field lines combined), refusing repeated keys.
pub(crate) fn parse_dictionary(values: &[&str]) -> Result<Dictionary> {
    let combined = values.join(", ");
    let mut dict = Dictionary::new();
    Parser::new(&combined)
        .parse_dictionary_with_visitor(UniqueKeys { dict: &mut dict, seen: HashSet::new() })
        .map_err(|e| malformed(e.to_string()))?;
    Ok(dict)
}

/// Serializes an inner list with parameters, as `@signature-params` and `Signature-Input` carry it.
pub(crate) fn serialize_inner_list(list: &InnerList) -> String {
    let mut out = String::new();
    let mut serializer = sfv::ListSerializer::with_buffer(&mut out);
    let mut inner = serializer.inner_list();
    inner.items(&list.items);
    let _ = inner.finish().parameters(&list.params);
    let _ = serializer.finish();
    out
}

/// Builds the inner list for `components` and `params` (in order).
pub(crate) fn inner_list(components: &[ComponentId], params: Parameters) -> Result<InnerList> {
    let items = components.iter().map(ComponentId::to_item).collect::<Result<Vec<_>>>()?;
    Ok(InnerList { items, params })
}

/// Parses every signature of a message: `Signature-Input` and `Signature` field values.
pub fn parse_signatures(inputs: &[&str], signatures: &[&str]) -> Result<Vec<ParsedSignature>> {
    let inputs = parse_dictionary(inputs)?;
    let mut values = parse_dictionary(signatures)?;
    let mut out = Vec::with_capacity(inputs.len());
    for (label, entry) in inputs {
        out.push(build(label.as_str(), entry, &mut values)?);
    }
    if let Some((label, _)) = values.first() {
        return Err(malformed(format!("Signature `{}` has no Signature-Input", label.as_str())));
    }
    Ok(out)
}

/// Whether a dictionary member's parameters carry `tag` = `tag`.
fn tagged(entry: &ListEntry, tag: &str) -> bool {
    match entry {
        ListEntry::InnerList(list) => {
            list.params.get("tag").is_some_and(|v| matches!(v, BareItem::String(s) if s.as_str() == tag))
        }
        ListEntry::Item(_) => false,
    }
}

/// The one signature tagged `tag` (http-signature-08 §3: found by its tag, never by its label).
/// Signatures with other tags (a proxy's, say) are skipped without being interpreted, so a
/// malformed one does not fail the message. Without one, [`why_untagged`] says what was found;
/// two tagged signatures are ambiguous.
pub(crate) fn tagged_signature(inputs: &[&str], signatures: &[&str], tag: &str) -> Result<ParsedSignature> {
    let parsed = parse_dictionary(inputs)?;
    let mut values = parse_dictionary(signatures)?;
    let mut matching = parsed.iter().filter(|(_, entry)| tagged(entry, tag));
    match (matching.next(), matching.next()) {
        (Some((label, entry)), None) => build(label.as_str(), entry.clone(), &mut values),
        (Some(_), Some(_)) => Err(ErrorKind::AmbiguousWimseSignature.into()),
        (None, _) => Err(why_untagged(inputs, tag)),
    }
}

/// Why `Signature-Input` values hold no signature tagged `tag`, reading only labels and tags
/// (a foreign signature is never interpreted): the only signature has no `tag`
/// ([`ErrorKind::MissingSignatureParameter`]) or another one ([`ErrorKind::SignatureWrongTag`]);
/// with several, none is tagged ([`ErrorKind::NoWimseSignature`], naming the tags seen). The
/// detail quotes what the sender wrote, cut short and limited to visible ASCII.
pub(crate) fn why_untagged(inputs: &[&str], tag: &str) -> Error {
    let Ok(dict) = parse_dictionary(inputs) else {
        return Error::with_detail(
            ErrorKind::NoWimseSignature,
            format!("Signature-Input does not parse, and no signature in it is tagged \"{tag}\""),
        );
    };
    let tags: Vec<Option<String>> = dict.iter().map(|(_, entry)| tag_of(entry)).collect();
    match tags.as_slice() {
        [] => Error::with_detail(ErrorKind::NoWimseSignature, "Signature-Input is empty"),
        [None] => Error::with_detail(
            ErrorKind::MissingSignatureParameter,
            format!("tag: the only signature has none; a WIMSE signature carries tag=\"{tag}\""),
        ),
        [Some(other)] => Error::with_detail(
            ErrorKind::SignatureWrongTag,
            format!("the only signature is tagged \"{other}\", not \"{tag}\""),
        ),
        several => {
            const LISTED: usize = 5;
            let mut seen: Vec<String> = several
                .iter()
                .take(LISTED)
                .map(|t| t.as_ref().map_or_else(|| "(no tag)".to_owned(), |t| format!("\"{t}\"")))
                .collect();
            if several.len() > LISTED {
                seen.push(format!("and {} more", several.len() - LISTED));
            }
            Error::with_detail(
                ErrorKind::NoWimseSignature,
                format!("{} signatures, none tagged \"{tag}\"; tags seen: {}", several.len(), seen.join(", ")),
            )
        }
    }
}

/// A member's `tag`, as a short printable quote (`None` when it has none).
fn tag_of(entry: &ListEntry) -> Option<String> {
    const SHOWN: usize = 32;
    let ListEntry::InnerList(list) = entry else { return None };
    let text = match list.params.get("tag")? {
        BareItem::String(s) => s.as_str().to_owned(),
        BareItem::Token(t) => t.as_str().to_owned(),
        _ => "(not a string)".to_owned(),
    };
    let mut shown: String = text.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(SHOWN).collect();
    if text.len() > SHOWN {
        shown.push('…');
    }
    Some(shown)
}

/// Whether `Signature-Input` values hold a signature tagged `tag`. A cheap substring test
/// first (the tag must appear literally); only then the field is parsed. A field that names the
/// tag but does not parse counts as a (malformed) tagged signature, so its sender hears why.
pub(crate) fn has_tagged_signature(inputs: &[&str], tag: &str) -> bool {
    if !inputs.iter().any(|v| v.contains(tag)) {
        return false;
    }
    match parse_dictionary(inputs) {
        Ok(dict) => dict.iter().any(|(_, entry)| tagged(entry, tag)),
        Err(_) => true,
    }
}

/// One signature: its covered components and parameters, and its value from `values`.
fn build(label: &str, entry: ListEntry, values: &mut Dictionary) -> Result<ParsedSignature> {
    let ListEntry::InnerList(list) = entry else {
        return Err(malformed(format!("Signature-Input `{label}` is not an inner list")));
    };
    let value = match values.shift_remove(label) {
        Some(ListEntry::Item(Item { bare_item: BareItem::ByteSequence(bytes), .. })) => bytes,
        Some(_) => return Err(malformed(format!("Signature `{label}` is not a byte sequence"))),
        None => return Err(malformed(format!("no Signature for label `{label}`"))),
    };
    let mut components = Vec::with_capacity(list.items.len());
    for item in &list.items {
        let BareItem::String(name) = &item.bare_item else {
            return Err(malformed("a covered component is not a string"));
        };
        let mut id = ComponentId::new(name.as_str());
        for (param, value) in &item.params {
            match (param.as_str(), value) {
                ("req", BareItem::Boolean(true)) => id.req = true,
                _ => id.other_params = true,
            }
        }
        if components.contains(&id) {
            return Err(malformed(format!("component {id} covered twice")));
        }
        components.push(id);
    }
    Ok(ParsedSignature {
        label: label.to_owned(),
        components,
        signature_params: serialize_inner_list(&list),
        params: list.params,
        value,
    })
}
