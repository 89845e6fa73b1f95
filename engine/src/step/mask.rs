//! Secret masking: every secret value, and its base64 and JSON-escaped forms,
//! becomes `***` in every line, record and event that leaves a step. Output is
//! masked line by line, so each line of a multi-line secret (a PEM key, a
//! kubeconfig) is masked on its own too, in the same encoded forms.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

#[derive(Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
}

pub const MASK: &str = "***";

/// Shorter lines of a multi-line secret, and shorter encoded forms, would mask
/// ordinary text (`}`, `-----`); the whole value still masks them where they
/// appear together.
const MIN_PART: usize = 4;

impl Masker {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<String> = Vec::new();
        for s in secrets.into_iter().filter(|s| !s.is_empty()) {
            patterns.push(s.to_string());
            patterns.extend(encodings(s));
            if s.contains('\n') {
                for line in s.lines().map(|l| l.trim_end_matches('\r')).filter(|l| l.trim().len() >= MIN_PART) {
                    patterns.push(line.to_string());
                    patterns.extend(encodings(line));
                }
            }
        }
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Masker::default();
        }
        let matcher = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns).ok();
        Masker { matcher }
    }

    pub fn mask(&self, text: &str) -> String {
        match &self.matcher {
            Some(m) => m.replace_all(text, &vec![MASK; m.patterns_len()]),
            None => text.to_string(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.matcher.is_some()
    }

    /// Whether `text` holds a secret (or a line or encoding of one).
    pub fn reveals(&self, text: &str) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(text))
    }
}

/// Base64 (standard and URL-safe, with and without padding) and JSON-escaped
/// forms of a value, as tokens travel in logs.
fn encodings(s: &str) -> impl Iterator<Item = String> {
    let mut encoded = Vec::new();
    for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
        encoded.push(engine.encode(s));
        encoded.push(engine.encode(s).trim_end_matches('=').to_string());
    }
    if let Ok(json) = serde_json::to_string(s) {
        encoded.push(json[1..json.len() - 1].to_string());
    }
    encoded.into_iter().filter(|e| e.len() >= MIN_PART)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_plain_base64_and_json_forms() {
        let m = Masker::new(["hunter2", "a\"b\nc"]);
        assert_eq!(m.mask("pw=hunter2!"), "pw=***!");
        assert_eq!(m.mask("aHVudGVyMg=="), "***");
        assert_eq!(m.mask(r#"{"k":"a\"b\nc"}"#), r#"{"k":"***"}"#);
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn every_line_of_a_multi_line_secret_is_masked_alone() {
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC\n-----END KEY-----\n}";
        let m = Masker::new([key]);
        assert_eq!(m.mask("line: MIIEvQIBADANBgkq"), "line: ***");
        assert_eq!(m.mask("hkiG9w0BAQEFAASC"), "***");
        let b64 = base64::engine::general_purpose::STANDARD.encode("hkiG9w0BAQEFAASC");
        assert_eq!(m.mask(&b64), "***");
        assert_eq!(m.mask("if x { y }"), "if x { y }", "a one-character line is not a secret on its own");
        assert!(m.reveals("…MIIEvQIBADANBgkq…") && !m.reveals("plain"));
    }
}
