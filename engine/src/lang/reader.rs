//! A small typed reader over KDL nodes: every accessor reports a spanned error
//! into the shared [`Errors`] instead of failing, so one pass finds every mistake.

use std::sync::Arc;
use std::time::Duration;

use kdl::{KdlEntry, KdlNode, KdlValue};

use super::error::{Errors, LangError, did_you_mean};
use super::source::{Loc, Source};

/// A value together with where it was written.
#[derive(Clone, Debug)]
pub struct Spanned<T> {
    pub value: T,
    pub loc: Loc,
}

#[derive(Clone, Copy)]
pub struct Node<'a> {
    pub kdl: &'a KdlNode,
    pub src: &'a Arc<Source>,
}

impl<'a> Node<'a> {
    pub fn new(kdl: &'a KdlNode, src: &'a Arc<Source>) -> Self {
        Node { kdl, src }
    }

    pub fn name(&self) -> &'a str {
        self.kdl.name().value()
    }

    pub fn loc(&self) -> Loc {
        Loc::new(self.src, self.kdl.span())
    }

    /// The location of the node's name only: a tighter caret than the whole block.
    pub fn name_loc(&self) -> Loc {
        Loc::new(self.src, self.kdl.name().span())
    }

    pub fn entry_loc(&self, e: &KdlEntry) -> Loc {
        Loc::new(self.src, e.span())
    }

    pub fn args(&self) -> impl Iterator<Item = &'a KdlEntry> {
        self.kdl.entries().iter().filter(|e| e.name().is_none())
    }

    pub fn props(&self) -> impl Iterator<Item = (&'a str, &'a KdlEntry)> {
        self.kdl.entries().iter().filter_map(|e| e.name().map(|n| (n.value(), e)))
    }

    pub fn prop(&self, name: &str) -> Option<&'a KdlEntry> {
        // The last occurrence wins, as the KDL spec says for duplicate properties.
        self.props().filter(|(n, _)| *n == name).map(|(_, e)| e).last()
    }

    pub fn children(&self) -> Vec<Node<'a>> {
        self.kdl.children().map(|d| d.nodes().iter().map(|n| Node::new(n, self.src)).collect()).unwrap_or_default()
    }

    pub fn has_children(&self) -> bool {
        self.kdl.children().is_some()
    }

    /// Reports every property not in `allowed`, with a did-you-mean.
    pub fn check_props(&self, allowed: &[&str], errs: &mut Errors) {
        for (name, e) in self.props() {
            if !allowed.contains(&name) {
                let help = did_you_mean(name, allowed.iter().copied()).or_else(|| {
                    if allowed.is_empty() {
                        Some(format!("`{}` takes no properties", self.name()))
                    } else {
                        Some(super::error::expected_one_of(allowed))
                    }
                });
                errs.push(LangError::UnknownProperty {
                    name: name.to_string(),
                    node: self.name().to_string(),
                    src: self.src.named(),
                    span: e.span(),
                    help,
                });
            }
        }
    }

    /// Reports arguments past the first `max`.
    pub fn check_arg_count(&self, max: usize, errs: &mut Errors) {
        for e in self.args().skip(max) {
            errs.syntax(
                &self.entry_loc(e),
                format!("`{}` takes {} argument{}", self.name(), max, if max == 1 { "" } else { "s" }),
                "unexpected argument",
            );
        }
    }

    /// Reports children when the node must not have any.
    pub fn check_no_children(&self, errs: &mut Errors) {
        if let Some(doc) = self.kdl.children() {
            errs.syntax(
                &Loc::new(self.src, doc.span()),
                format!("`{}` takes no children block", self.name()),
                "unexpected block",
            );
        }
    }

    /// The first argument as a string; a missing or non-string one is reported.
    pub fn arg_string(&self, what: &str, errs: &mut Errors) -> Option<Spanned<String>> {
        let Some(e) = self.args().next() else {
            errs.push(LangError::Missing {
                node: self.name().to_string(),
                what: what.to_string(),
                src: self.src.named(),
                span: self.kdl.span(),
                help: Some(format!("write it as: {} \"...\"", self.name())),
            });
            return None;
        };
        self.entry_string(e, self.name(), errs)
    }

    /// Every argument as a string (numbers and booleans are written out as text).
    pub fn arg_texts(&self, what: &str, errs: &mut Errors) -> Vec<Spanned<String>> {
        self.args().filter_map(|e| self.entry_text(e, what, errs)).collect()
    }

    pub fn entry_string(&self, e: &KdlEntry, what: &str, errs: &mut Errors) -> Option<Spanned<String>> {
        match e.value() {
            KdlValue::String(s) => Some(Spanned { value: s.clone(), loc: self.entry_loc(e) }),
            other => {
                errs.push(self.wrong_type(e, what, "a string", other));
                None
            }
        }
    }

    /// A scalar written out as text: env values and matrix values may be numbers.
    pub fn entry_text(&self, e: &KdlEntry, what: &str, errs: &mut Errors) -> Option<Spanned<String>> {
        let text = match e.value() {
            KdlValue::String(s) => s.clone(),
            KdlValue::Integer(i) => i.to_string(),
            KdlValue::Float(f) => f.to_string(),
            KdlValue::Bool(b) => b.to_string(),
            KdlValue::Null => {
                errs.push(self.wrong_type(e, what, "a value", e.value()));
                return None;
            }
        };
        Some(Spanned { value: text, loc: self.entry_loc(e) })
    }

    pub fn entry_u32(&self, e: &KdlEntry, what: &str, errs: &mut Errors) -> Option<Spanned<u32>> {
        match e.value() {
            KdlValue::Integer(i) if (0..=i128::from(u32::MAX)).contains(i) => {
                Some(Spanned { value: *i as u32, loc: self.entry_loc(e) })
            }
            other => {
                errs.push(self.wrong_type(e, what, "a non-negative integer", other));
                None
            }
        }
    }

    pub fn entry_bool(&self, e: &KdlEntry, what: &str, errs: &mut Errors) -> Option<bool> {
        match e.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                errs.push(self.wrong_type(e, what, "#true or #false", other));
                None
            }
        }
    }

    pub fn entry_duration(&self, e: &KdlEntry, what: &str, errs: &mut Errors) -> Option<Spanned<Duration>> {
        let text = self.entry_string(e, what, errs)?;
        match humantime::parse_duration(&text.value) {
            Ok(d) => Some(Spanned { value: d, loc: text.loc }),
            Err(err) => {
                errs.push(LangError::BadDuration {
                    value: text.value,
                    reason: err.to_string(),
                    src: self.src.named(),
                    span: e.span(),
                });
                None
            }
        }
    }

    pub fn prop_string(&self, name: &str, errs: &mut Errors) -> Option<Spanned<String>> {
        self.prop(name).and_then(|e| self.entry_string(e, name, errs))
    }

    pub fn prop_text(&self, name: &str, errs: &mut Errors) -> Option<Spanned<String>> {
        self.prop(name).and_then(|e| self.entry_text(e, name, errs))
    }

    fn wrong_type(&self, e: &KdlEntry, what: &str, expected: &'static str, found: &KdlValue) -> LangError {
        LangError::WrongType {
            what: what.to_string(),
            expected,
            found: describe(found),
            src: self.src.named(),
            span: e.span(),
        }
    }
}

fn describe(v: &KdlValue) -> String {
    match v {
        KdlValue::String(s) => format!("the string \"{s}\""),
        KdlValue::Integer(i) => format!("the integer {i}"),
        KdlValue::Float(f) => format!("the number {f}"),
        KdlValue::Bool(b) => format!("#{b}"),
        KdlValue::Null => "#null".to_string(),
    }
}
