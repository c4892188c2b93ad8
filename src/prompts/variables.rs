//! A request's template variables (`prompt.variables`, `X-Prompt-Variables`), read once into
//! the values the renderer takes.
//!
//! Read straight from the request's JSON: a string, number, boolean or `null` — and a list of
//! them — becomes a MiniJinja value at once, with no `serde_json::Value` in between. An object
//! (or a list holding one) stays a `serde_json::Value`, so that its keys keep the client's
//! order where that shows (an `input_schema`'s error list), and becomes a MiniJinja value when
//! a template reads it — the same value a conversion of the whole JSON would give.
//!
//! Names keep the order they were first given in; a name given again takes the later value in
//! the earlier place, as JSON objects are read everywhere else.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

use minijinja::Value;
use minijinja::value::Serde;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Map;

/// Above this many variables, lookups go through a sorted index instead of a scan.
const SCAN_MAX: usize = 16;

/// A request's variables, shared (cloning is a reference count).
#[derive(Clone, Default)]
pub struct Variables(Arc<Entries>);

#[derive(Default)]
struct Entries {
    /// Every name, one after the other (one allocation for all of them).
    names: String,
    /// In the order the names were first given.
    list: Vec<Entry>,
    /// Positions in `list` sorted by name, when it is longer than [`SCAN_MAX`].
    sorted: Vec<u32>,
}

struct Entry {
    /// The name's place in `names`.
    start: u32,
    end: u32,
    value: Var,
}

impl Entries {
    fn name(&self, entry: &Entry) -> &str {
        &self.names[entry.start as usize..entry.end as usize]
    }
}

impl Entry {
    /// True when this entry's name, in `names`, is `name` (lengths first: the cheap test).
    fn is(&self, names: &[u8], name: &[u8]) -> bool {
        (self.end - self.start) as usize == name.len()
            && names[self.start as usize..self.end as usize] == *name
    }
}

/// One variable's value.
#[derive(Debug, Clone)]
enum Var {
    /// Read as a MiniJinja value (holds no object).
    Value(Value),
    /// An object, or a list holding one, as the client wrote it; and its MiniJinja value once
    /// a template has read it (converted once per request, however often it is read). Boxed:
    /// the rare case should not make every variable four times its size.
    Json(Box<(serde_json::Value, OnceLock<Value>)>),
}

impl PartialEq for Var {
    /// The values, whether or not a template has read them yet.
    fn eq(&self, other: &Var) -> bool {
        match (self, other) {
            (Var::Value(a), Var::Value(b)) => a == b,
            (Var::Json(a), Var::Json(b)) => a.0 == b.0,
            _ => false,
        }
    }
}

impl Var {
    fn json(json: serde_json::Value) -> Var {
        Var::Json(Box::new((json, OnceLock::new())))
    }

    fn to_value(&self) -> Value {
        match self {
            Var::Value(v) => v.clone(),
            Var::Json(json) => json.1.get_or_init(|| Value::from(Serde(&json.0))).clone(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Var::Json(json) => json.0.clone(),
            // Strings, numbers, booleans, none and lists of them map back one to one.
            Var::Value(v) => serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
        }
    }

    fn into_json(self) -> serde_json::Value {
        match self {
            Var::Json(json) => json.0,
            value => value.to_json(),
        }
    }

    /// What a JSON value is read as.
    fn from_json(json: serde_json::Value) -> Var {
        if holds_object(&json) {
            Var::json(json)
        } else {
            Var::Value(Value::from(Serde(&json)))
        }
    }
}

fn holds_object(json: &serde_json::Value) -> bool {
    match json {
        serde_json::Value::Object(_) => true,
        serde_json::Value::Array(items) => items.iter().any(holds_object),
        _ => false,
    }
}

/// Variables as they are read, before names given twice are settled.
#[derive(Default)]
struct Builder(Entries);

impl Builder {
    fn with_capacity(n: usize) -> Self {
        Builder(Entries {
            names: String::with_capacity(n * 12),
            list: Vec::with_capacity(n),
            sorted: Vec::new(),
        })
    }

    fn push(&mut self, name: &str, value: Var) {
        let start = self.0.names.len();
        self.0.names.push_str(name);
        // Names past 4 GiB cannot arrive: request bodies are far smaller.
        let span = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.0.list.push(Entry {
            start: span(start),
            end: span(self.0.names.len()),
            value,
        });
    }

    /// A name given twice keeps its first place and takes its last value.
    fn finish(self) -> Variables {
        let mut entries = self.0;
        dedupe(&mut entries);
        if entries.list.len() > SCAN_MAX {
            let mut sorted: Vec<u32> = (0..entries.list.len() as u32).collect();
            sorted.sort_unstable_by(|&a, &b| {
                entries
                    .name(&entries.list[a as usize])
                    .cmp(entries.name(&entries.list[b as usize]))
            });
            entries.sorted = sorted;
        }
        Variables(Arc::new(entries))
    }
}

fn dedupe(entries: &mut Entries) {
    let Entries { names, list, .. } = entries;
    let name = |e: &Entry| &names[e.start as usize..e.end as usize];
    if list.len() <= SCAN_MAX {
        let bytes = names.as_bytes();
        let mut i = 1;
        while i < list.len() {
            // (Names compared as bytes, lengths first: no slicing of text on the way.)
            let (start, end) = (list[i].start as usize, list[i].end as usize);
            let wanted = &bytes[start..end];
            match (0..i).find(|&j| list[j].is(bytes, wanted)) {
                Some(j) => {
                    let later = list.remove(i);
                    list[j].value = later.value;
                }
                None => i += 1,
            }
        }
        return;
    }
    let mut last = std::collections::HashMap::with_capacity(list.len());
    let mut first = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        if last.insert(name(entry), i).is_none() {
            first.push(i);
        }
    }
    if first.len() == list.len() {
        return;
    }
    let take: Vec<usize> = first.iter().map(|&i| last[name(&list[i])]).collect();
    let mut slots: Vec<Option<Entry>> = std::mem::take(list).into_iter().map(Some).collect();
    *list = first
        .iter()
        .zip(take)
        .filter_map(|(&i, j)| {
            let (start, end) = slots[i].as_ref().map(|e| (e.start, e.end))?;
            let value = slots[j].take()?.value;
            Some(Entry { start, end, value })
        })
        .collect();
}

impl Variables {
    fn find(&self, name: &str) -> Option<&Var> {
        let entries = &*self.0;
        if entries.sorted.is_empty() {
            return entries
                .list
                .iter()
                .find(|e| e.is(entries.names.as_bytes(), name.as_bytes()))
                .map(|e| &e.value);
        }
        entries
            .sorted
            .binary_search_by(|&i| entries.name(&entries.list[i as usize]).cmp(name))
            .ok()
            .map(|at| &entries.list[entries.sorted[at] as usize].value)
    }

    /// The value of `name`, as a template reads it.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.find(name).map(Var::to_value)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.list.is_empty()
    }

    /// The names, in the order first given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.list.iter().map(|e| self.0.name(e))
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.0.list.iter().map(|e| (self.0.name(e), &e.value))
    }

    /// `other`'s variables over these: a name in both takes `other`'s value in its place here.
    pub fn merge(self, other: Variables) -> Variables {
        if self.is_empty() {
            return other;
        }
        if other.is_empty() {
            return self;
        }
        let mut builder = Builder::with_capacity(self.len() + other.len());
        for (name, value) in self.iter().chain(other.iter()) {
            builder.push(name, value.clone());
        }
        builder.finish()
    }

    /// As a JSON object (what an `input_schema` checks).
    pub fn to_json(&self) -> Map<String, serde_json::Value> {
        self.iter()
            .map(|(name, value)| (name.to_owned(), value.to_json()))
            .collect()
    }
}

impl PartialEq for Variables {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl From<Map<String, serde_json::Value>> for Variables {
    fn from(map: Map<String, serde_json::Value>) -> Self {
        let mut builder = Builder::with_capacity(map.len());
        for (name, json) in map {
            builder.push(&name, Var::from_json(json));
        }
        builder.finish()
    }
}

impl fmt::Debug for Variables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A JSON value where variables may be: `null`, an object of variables, or anything else (the
/// caller's error). Whatever it is, it is read whole, so bad JSON anywhere in it is refused as
/// a full read would refuse it.
#[derive(Debug)]
pub enum Field {
    Null,
    Object(Variables),
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Field, E> {
                Ok(Field::Null)
            }
            fn visit_none<E>(self) -> Result<Field, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
                while seq.next_element::<serde_json::Value>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
                let mut variables = Builder::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
                    let value = map.next_value::<Var>()?;
                    variables.push(&name, value);
                }
                Ok(Field::Object(variables.finish()))
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

/// JSON text (a string or a key), borrowed from the input unless it holds escapes: serde's
/// own borrowing read of a `Cow`.
#[derive(serde::Deserialize)]
pub(crate) struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Var {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VarVisitor;
        impl<'de> Visitor<'de> for VarVisitor {
            type Value = Var;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Var, E> {
                Ok(Var::Value(Value::from(())))
            }
            fn visit_none<E>(self) -> Result<Var, E> {
                Ok(Var::Value(Value::from(())))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Var, E> {
                Ok(Var::Value(Value::from(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Var, E> {
                Ok(Var::Value(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Var, E> {
                Ok(Var::Value(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Var, E> {
                Ok(Var::Value(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Var, E> {
                Ok(Var::Value(Value::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Var, A::Error> {
                // Values while every item is one; JSON from the first item holding an object.
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
                let mut json: Option<Vec<serde_json::Value>> = None;
                while let Some(item) = seq.next_element::<Var>()? {
                    match (&mut json, item) {
                        (None, Var::Value(value)) => values.push(value),
                        (Some(items), item) => items.push(item.into_json()),
                        (None, Var::Json(item)) => {
                            let mut items: Vec<serde_json::Value> = values
                                .drain(..)
                                .map(|v| Var::Value(v).into_json())
                                .collect();
                            items.push(item.0);
                            json = Some(items);
                        }
                    }
                }
                Ok(match json {
                    None => Var::Value(Value::from_object(values)),
                    Some(items) => Var::json(serde_json::Value::Array(items)),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Var, A::Error> {
                let json =
                    serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Var::json(json))
            }
        }
        deserializer.deserialize_any(VarVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_converted_once_however_often_it_is_read() {
        let var = Var::json(serde_json::json!({"a": [1, {"k": "v"}]}));
        let first = var.to_value();
        assert!(matches!(&var, Var::Json(json) if json.1.get().is_some()));
        assert_eq!(var.to_value(), first);
    }
    use serde_json::json;

    #[test]
    fn text_is_borrowed_unless_it_holds_escapes() {
        let Text(plain) = serde_json::from_str::<Text<'_>>(r#""tier""#).unwrap();
        assert!(matches!(plain, Cow::Borrowed("tier")));
        let Text(escaped) = serde_json::from_str::<Text<'_>>(r#""a\nb""#).unwrap();
        assert!(matches!(escaped, Cow::Owned(ref t) if t == "a\nb"));
        // As a map's keys too.
        struct Keys<'a>(Vec<Cow<'a, str>>);
        impl<'de> Deserialize<'de> for Keys<'de> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Keys<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Keys<'de>, A::Error> {
                        let mut keys = Vec::new();
                        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                            map.next_value::<de::IgnoredAny>()?;
                            keys.push(key);
                        }
                        Ok(Keys(keys))
                    }
                }
                d.deserialize_map(V)
            }
        }
        let Keys(keys) = serde_json::from_str(r#"{"plain": 1, "esc\u0061ped": 2}"#).unwrap();
        assert!(matches!(keys[0], Cow::Borrowed("plain")));
        assert!(matches!(keys[1], Cow::Owned(ref k) if k == "escaped"));
        assert!(serde_json::from_str::<Text<'_>>("1").is_err());
    }

    fn read(text: &str) -> Variables {
        match serde_json::from_str::<Field>(text).unwrap() {
            Field::Object(vars) => vars,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn read_values_equal_a_conversion_of_the_json() {
        let text = r#"{"s": "text", "long": "a string longer than twenty-two bytes", "n": 3,
            "neg": -4, "f": 1.0, "big": 1e300, "b": true, "z": null, "list": ["a", 2, [true]],
            "obj": {"z": 1, "a": [1, {"k": "v"}]}, "mixed": [1, {"b": 2, "a": 1}]}"#;
        let vars = read(text);
        let serde_json::Value::Object(map) = serde_json::from_str(text).unwrap() else {
            panic!()
        };
        for (name, json) in &map {
            assert_eq!(vars.get(name).unwrap(), Value::from(Serde(json)), "{name}");
        }
        // Back to JSON exactly as written, objects' keys in the client's order.
        assert_eq!(vars.to_json(), map);
        assert_eq!(
            serde_json::Value::Object(vars.to_json()).to_string(),
            serde_json::Value::Object(map.clone()).to_string()
        );
        assert_eq!(Variables::from(map), vars);
    }

    #[test]
    fn a_repeated_name_takes_the_last_value_in_the_first_place() {
        let vars = read(r#"{"a": 1, "b": 2, "a": 3}"#);
        assert_eq!(vars.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(vars.get("a"), Some(Value::from(3)));
        let many: Vec<String> = (0..40).map(|i| format!("\"v{}\": {i}", i % 30)).collect();
        let vars = read(&format!("{{{}}}", many.join(",")));
        assert_eq!(vars.len(), 30);
        assert_eq!(vars.names().next(), Some("v0"));
        assert_eq!(vars.get("v0"), Some(Value::from(30)));
        assert_eq!(vars.get("v29"), Some(Value::from(29)));
        assert!(!vars.contains("v30"));
    }

    #[test]
    fn merge_overrides_in_place() {
        let header = Variables::from(json!({"a": 1, "b": 2}).as_object().unwrap().clone());
        let body = read(r#"{"b": 3, "c": 4}"#);
        let merged = header.merge(body);
        assert_eq!(merged.names().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(merged.get("b"), Some(Value::from(3)));
    }

    #[test]
    fn non_objects_are_told_apart_after_a_full_read() {
        assert!(matches!(
            serde_json::from_str::<Field>("null"),
            Ok(Field::Null)
        ));
        assert!(matches!(
            serde_json::from_str::<Field>("[1, \"x\"]"),
            Ok(Field::Other)
        ));
        // Refused where and as a full read refuses it.
        let deep = format!(r#"{{"v": {}1{}}}"#, "[".repeat(127), "]".repeat(127));
        for bad in [
            "[1e400]",
            r#"{"a": "\ud800"}"#,
            r#"{"a": ["x", {"b": "\ud800b"}]}"#,
            r#"{"a": 1,}"#,
            &deep,
        ] {
            let err = serde_json::from_str::<Field>(bad).unwrap_err();
            let full = serde_json::from_str::<serde_json::Value>(bad).unwrap_err();
            assert_eq!(err.to_string(), full.to_string(), "{bad}");
        }
    }
}
