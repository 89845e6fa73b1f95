//! `include "file.kdl" key=value…`: splices a `template` file's stages, env and
//! hooks into the including pipeline, with `${param.key}` replaced by the values.

use std::collections::{BTreeMap, HashMap};

use kdl::{KdlDocument, KdlValue};

use super::error::{LangError, did_you_mean};
use super::parser::{Body, Parser, parse_kdl};
use super::reader::Node;
use super::source::Source;

const MAX_DEPTH: usize = 8;

pub(super) fn include(parser: &mut Parser, node: Node, body: &mut Body) {
    node.check_arg_count(1, &mut parser.errs);
    node.check_no_children(&mut parser.errs);
    let Some(path) = node.arg_string("a template path", &mut parser.errs) else { return };
    let fail = |parser: &mut Parser, reason: String, help: Option<String>| {
        parser.errs.push(LangError::Include {
            path: path.value.clone(),
            reason,
            src: path.loc.src.named(),
            span: path.loc.span,
            help,
        })
    };
    if parser.depth >= MAX_DEPTH {
        let reason = format!("includes nest deeper than {MAX_DEPTH} (does a template include itself?)");
        return fail(parser, reason, None);
    }
    let (file, text) = match parser.boundary.read(node.src.dir(), &path.value) {
        Ok(read) => read,
        Err(refusal) => {
            body.unread_include = true;
            return fail(parser, refusal.reason, refusal.help);
        }
    };
    let name = relative_name(&node.src.name, &path.value);
    let src = Source::new(name, &file, text);
    let doc = match parse_kdl(&src) {
        Ok(doc) => doc,
        Err(e) => {
            parser.errs.extend(e);
            return;
        }
    };
    let templates: Vec<_> = doc.nodes().iter().filter(|n| n.name().value() == "template").collect();
    let [template] = templates.as_slice() else {
        return fail(parser, format!("{} must hold exactly one `template` node", path.value), None);
    };
    let template = Node::new(template, &src);

    // Parameters: declared by `param "name" default=…` inside the template.
    let mut declared: BTreeMap<String, Option<String>> = BTreeMap::new();
    for p in template.children().into_iter().filter(|c| c.name() == "param") {
        parser.leaf(p, &["default"], 1);
        if let Some(name) = p.arg_string("a parameter name", &mut parser.errs) {
            let default = p.prop_text("default", &mut parser.errs).map(|d| d.value);
            declared.insert(name.value, default);
        }
    }
    let mut values: HashMap<String, String> = HashMap::new();
    for (key, entry) in node.props() {
        if !declared.contains_key(key) {
            let help = did_you_mean(key, declared.keys().map(String::as_str)).or_else(|| {
                Some(format!("the template declares: {}", declared.keys().cloned().collect::<Vec<_>>().join(", ")))
            });
            parser.errs.push(LangError::UnknownProperty {
                name: key.to_string(),
                node: format!("include \"{}\"", path.value),
                src: node.src.named(),
                span: entry.span(),
                help,
            });
        } else if let Some(v) = node.entry_text(entry, key, &mut parser.errs) {
            values.insert(key.to_string(), v.value);
        }
    }
    for (key, default) in &declared {
        match (values.contains_key(key), default) {
            (true, _) => {}
            (false, Some(d)) => {
                values.insert(key.clone(), d.clone());
            }
            (false, None) => {
                parser.errs.push(LangError::Missing {
                    node: format!("include \"{}\"", path.value),
                    what: format!("the parameter `{key}`"),
                    src: node.src.named(),
                    span: node.kdl.span(),
                    help: Some(format!("add {key}=\"…\" to the include")),
                });
                // Reported once, here; not again at every use inside the template.
                values.insert(key.clone(), String::new());
            }
        }
    }

    let mut kdl = template.kdl.clone();
    if let Some(children) = kdl.children_mut() {
        children.nodes_mut().retain(|n| n.name().value() != "param");
        substitute(children, &values);
    }
    let template = Node::new(&kdl, &src);
    parser.depth += 1;
    parser.body(template, body);
    parser.depth -= 1;
}

/// Replaces `${param.key}` in every string value, recursively. Unknown keys stay,
/// and the parser reports them with their span.
fn substitute(doc: &mut KdlDocument, values: &HashMap<String, String>) {
    for node in doc.nodes_mut() {
        for entry in node.entries_mut() {
            if let KdlValue::String(s) = entry.value()
                && s.contains("${param.")
            {
                let mut out = s.clone();
                for (k, v) in values {
                    out = out.replace(&format!("${{param.{k}}}"), v);
                }
                let span = entry.span();
                entry.set_value(KdlValue::String(out));
                entry.set_span(span);
            }
        }
        if let Some(children) = node.children_mut() {
            substitute(children, values);
        }
    }
}

/// `services/a/pipe.kdl` + `../t.kdl` -> `services/a/../t.kdl`, for display.
fn relative_name(including: &str, path: &str) -> String {
    match including.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{path}"),
        None => path.to_string(),
    }
}
