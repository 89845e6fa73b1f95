//! Secret masking: every secret value, and its base64 and JSON-escaped forms,
//! becomes `***` in every line, record and event that leaves a step.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

#[derive(Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
}

pub const MASK: &str = "***";

impl Masker {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<String> = Vec::new();
        for s in secrets.into_iter().filter(|s| !s.is_empty()) {
            patterns.push(s.to_string());
            let mut encoded = Vec::new();
            for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
                encoded.push(engine.encode(s));
                // Without padding too, as tokens often travel.
                encoded.push(engine.encode(s).trim_end_matches('=').to_string());
            }
            if let Ok(json) = serde_json::to_string(s) {
                encoded.push(json[1..json.len() - 1].to_string());
            }
            // Very short encoded forms would mask ordinary text.
            patterns.extend(encoded.into_iter().filter(|e| e.len() >= 4));
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
}
