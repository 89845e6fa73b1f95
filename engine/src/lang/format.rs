//! `pipe fmt`: a pipeline file in one layout — four-space indents, one node a
//! line, comments and blank lines between nodes kept, values written as they
//! were (quoted strings stay quoted) — with kdl-rs's formatter doing the
//! layout. Formatting is idempotent, and the formatted file means what the
//! original meant (the tests compare the plans).

use std::sync::Arc;

use kdl::KdlDocument;

use super::error::Errors;
use super::source::Source;

/// The file's text, formatted; its syntax errors when it does not parse.
pub fn format(src: &Arc<Source>) -> Result<String, Errors> {
    let mut doc = super::parser::parse_kdl(src)?;
    let mut blank = Vec::new();
    blank_lines(&doc, &mut blank);
    let mut config = kdl::FormatConfig::default();
    config.entry_autoformate_keep = true;
    doc.autoformat_config(&config);
    restore_blank_lines(&mut doc, &mut blank.into_iter());
    let mut text = doc.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Whether each node (depth first) had a blank line before it.
fn blank_lines(doc: &KdlDocument, out: &mut Vec<bool>) {
    for node in doc.nodes() {
        let leading = node.format().map(|f| f.leading.as_str()).unwrap_or_default();
        out.push(leading.trim_start_matches([' ', '\t']).starts_with('\n'));
        if let Some(children) = node.children() {
            blank_lines(children, out);
        }
    }
}

/// The formatter removes blank lines; the ones people put between nodes come back.
fn restore_blank_lines(doc: &mut KdlDocument, blank: &mut impl Iterator<Item = bool>) {
    for (i, node) in doc.nodes_mut().iter_mut().enumerate() {
        if blank.next().unwrap_or(false)
            && i > 0
            && let Some(f) = node.format_mut()
        {
            f.leading.insert(0, '\n');
        }
        if let Some(children) = node.children_mut() {
            restore_blank_lines(children, blank);
        }
    }
}
