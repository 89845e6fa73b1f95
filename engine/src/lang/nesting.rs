//! A guard before the KDL parser: blocks nested thousands deep would overflow
//! the stack of the recursive parser (and of the document's drop), killing
//! `pipe check` instead of reporting an error. Real pipelines nest a handful of
//! levels; past [`MAX_DEPTH`] the text is refused with a diagnostic.

use std::sync::Arc;

use super::error::Errors;
use super::source::{Loc, Source};

pub const MAX_DEPTH: usize = 64;

/// Where the text first opens a block deeper than [`MAX_DEPTH`], ignoring
/// braces inside strings and comments.
pub fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = block_comment_end(bytes, i),
            b'"' => i = string_end(bytes, i, 0),
            b'#' => {
                let hashes = bytes[i..].iter().take_while(|&&b| b == b'#').count();
                if bytes.get(i + hashes) == Some(&b'"') {
                    i = string_end(bytes, i + hashes, hashes);
                } else {
                    i += hashes;
                }
                continue;
            }
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the last byte of a `/* … */` comment (they nest in KDL).
fn block_comment_end(bytes: &[u8], start: usize) -> usize {
    let (mut i, mut open) = (start + 2, 1usize);
    while i < bytes.len() {
        if bytes[i..].starts_with(b"/*") {
            open += 1;
            i += 2;
        } else if bytes[i..].starts_with(b"*/") {
            open -= 1;
            i += 2;
            if open == 0 {
                return i - 1;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// The index of the last byte of a string starting at the quote `start`:
/// `"…"`, `"""…"""`, and raw strings closed by a quote and `hashes` `#`s.
fn string_end(bytes: &[u8], start: usize, hashes: usize) -> usize {
    let triple = bytes[start..].starts_with(b"\"\"\"");
    let quote: &[u8] = if triple { b"\"\"\"" } else { b"\"" };
    let mut i = start + quote.len();
    while i < bytes.len() {
        if hashes == 0 && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i..].starts_with(quote) && bytes[i + quote.len()..].iter().take(hashes).all(|&b| b == b'#') {
            let end = i + quote.len() + hashes;
            if end <= bytes.len() {
                return end - 1;
            }
        }
        i += 1;
    }
    bytes.len()
}

pub fn check(src: &Arc<Source>) -> Result<(), Errors> {
    let Some(at) = too_deep(&src.text) else { return Ok(()) };
    let mut errs = Errors::default();
    errs.syntax(&Loc::new(src, (at, 1).into()), format!("blocks nest deeper than {MAX_DEPTH} levels"), "too deep");
    Err(errs)
}

#[cfg(test)]
mod tests {
    use super::{MAX_DEPTH, too_deep};

    #[test]
    fn depth_counts_blocks_not_braces_in_strings_or_comments() {
        let nested = |n: usize| format!("a {} {}", "{ b ".repeat(n), "}".repeat(n));
        assert_eq!(too_deep(&nested(MAX_DEPTH)), None);
        assert!(too_deep(&nested(MAX_DEPTH + 1)).is_some());
        let braces = "{".repeat(200);
        assert_eq!(too_deep(&format!("a \"{braces}\" // {braces}\n/* {braces} /* x */ */ b #\"{braces}\"#")), None);
        assert_eq!(too_deep(&format!("a \"\"\"\n{braces}\n\"\"\" b \"\\\"{braces}\"")), None);
    }
}
