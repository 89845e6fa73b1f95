//! Plugin steps: `uses "name" key=value…`, the step's `allow-*` grants and its
//! `memory` limit.

use super::error::LangError;
use super::model::{Action, Grants, PluginCall};
use super::parser::Parser;
use super::reader::{Node, Spanned};

pub(super) const GRANT_NODES: &[&str] =
    &["allow-net", "allow-read", "allow-write", "allow-exec", "allow-env", "allow-connect", "allow-state"];

impl Parser {
    pub(super) fn uses(&mut self, node: Node) -> Option<Action> {
        node.check_arg_count(1, &mut self.errs);
        node.check_no_children(&mut self.errs);
        let uses = node.arg_string("a plugin name or path", &mut self.errs)?;
        let mut config = Vec::new();
        for (key, entry) in node.props() {
            if config.iter().any(|(k, _): &(String, _)| k == key) {
                self.errs.syntax(&node.entry_loc(entry), format!("`{key}` is given twice"), "again here");
                continue;
            }
            if let Some(text) = node.entry_text(entry, key, &mut self.errs) {
                config.push((key.to_string(), self.template(&text)));
            }
        }
        Some(Action::Plugin(PluginCall { uses, config, grants: Grants::default(), memory: None }))
    }

    /// One `allow-*` node, added to `grants`.
    pub(super) fn grant(&mut self, node: Node, grants: &mut Grants) {
        self.leaf(node, &[], usize::MAX);
        let args = node.arg_texts(node.name(), &mut self.errs);
        if args.is_empty() {
            node.arg_string("what it allows", &mut self.errs);
            return;
        }
        let literal = |a: &Spanned<String>| !a.value.contains("${");
        match node.name() {
            "allow-net" => {
                for a in args.iter().filter(|a| literal(a) && !a.value.contains(':')) {
                    self.errs.invalid(
                        &a.loc,
                        "allow-net",
                        "write it as host:port",
                        Some(format!("\"{}:80\"", a.value)),
                    );
                }
                grants.net.extend(args.iter().map(|a| self.template(a)));
            }
            "allow-connect" => {
                for a in args.iter().filter(|a| literal(a) && a.value.parse::<std::net::SocketAddr>().is_err()) {
                    self.errs.invalid(&a.loc, "allow-connect", "write it as ip:port (no host names)", None);
                }
                grants.connect.extend(args.iter().map(|a| self.template(a)));
            }
            "allow-read" => grants.read.extend(args.iter().map(|a| self.template(a))),
            "allow-write" => grants.write.extend(args.iter().map(|a| self.template(a))),
            "allow-env" => grants.env.extend(args),
            "allow-state" => grants.state.extend(args),
            _ => grants.exec.push(args.iter().map(|a| self.template(a)).collect()),
        }
    }

    /// `memory="256MiB"` on a step.
    pub(super) fn memory(&mut self, node: Node) -> Option<u64> {
        let text = node.prop_string("memory", &mut self.errs)?;
        match parse_size(&text.value) {
            Some(bytes) => Some(bytes),
            None => {
                self.errs.push(LangError::InvalidValue {
                    what: "memory".into(),
                    reason: format!("`{}` is not a size", text.value),
                    src: text.loc.src.named(),
                    span: text.loc.span,
                    help: Some("write sizes like \"64MiB\", \"512MB\" or \"1GiB\"".into()),
                });
                None
            }
        }
    }
}

/// `64MiB`, `512MB`, `1GiB`, `1048576`, as `bytesize` reads sizes (`K`, `M`
/// and `G` alone are powers of 1000; `Ki`, `Mi`, `Gi` of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    text.trim().parse::<bytesize::ByteSize>().ok().map(|s| s.as_u64())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512MB"), Some(512_000_000));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("lots"), None);
    }
}
