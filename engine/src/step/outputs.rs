//! Step outputs: a step appends `key=value` lines, or `key<<DELIM` … `DELIM`
//! heredocs for multi-line values, to the file named by `$PIPE_OUTPUT`.

use std::collections::BTreeMap;

/// The most bytes of outputs one step may leave.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    if text.len() > MAX_OUTPUT_BYTES {
        return Err(format!("$PIPE_OUTPUT holds {} bytes; the limit is {MAX_OUTPUT_BYTES}", text.len()));
    }
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some((key, delim)) = line.split_once("<<")
            && !key.contains('=')
        {
            let (key, delim) = (key.trim(), delim.trim());
            if key.is_empty() || delim.is_empty() {
                return Err(format!("$PIPE_OUTPUT line {}: a heredoc is written `key<<EOF`", n + 1));
            }
            let mut value: Vec<&str> = Vec::new();
            loop {
                match lines.next() {
                    Some((_, l)) if l == delim => break,
                    Some((_, l)) => value.push(l),
                    None => return Err(format!("$PIPE_OUTPUT: `{key}<<{delim}` is never closed by `{delim}`")),
                }
            }
            out.insert(key.to_string(), value.join("\n"));
        } else if let Some((key, value)) = line.split_once('=') {
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("$PIPE_OUTPUT line {}: empty key", n + 1));
            }
            out.insert(key.to_string(), value.to_string());
        } else {
            return Err(format!("$PIPE_OUTPUT line {}: expected `key=value` or `key<<EOF`, found `{line}`", n + 1));
        }
    }
    Ok(out)
}

/// Where a step kind's structured report (a deployment's phases and probe
/// numbers) sits beside its outputs file; the run record keeps it.
/// The name is the whole outputs file name plus a suffix: step ids hold a dot
/// (`stage.step`), so replacing an "extension" would give every step of a
/// stage the same file, which a sibling step could then read or delete.
pub fn details_path(output_file: &std::path::Path) -> std::path::PathBuf {
    let mut name = output_file.file_name().unwrap_or_default().to_os_string();
    name.push(".details.json");
    output_file.with_file_name(name)
}

/// Writes outputs in the `$PIPE_OUTPUT` format, heredocs for multi-line values.
pub fn render(outputs: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (k, v) in outputs {
        if v.contains('\n') {
            let mut delim = String::from("PIPE_EOF");
            while v.lines().any(|l| l == delim) {
                delim.push('_');
            }
            text.push_str(&format!("{k}<<{delim}\n{v}\n{delim}\n"));
        } else {
            text.push_str(&format!("{k}={v}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_and_heredocs() {
        let got = parse("a=1\nb=x=y\nnotes<<EOF\nline 1\nline 2\nEOF\n\na=2\n").expect("valid");
        assert_eq!(got["a"], "2");
        assert_eq!(got["b"], "x=y");
        assert_eq!(got["notes"], "line 1\nline 2");
    }

    #[test]
    fn each_step_has_its_own_details_file() {
        let dir = std::path::Path::new("/run/outputs");
        let a = details_path(&dir.join("deploy.web"));
        let b = details_path(&dir.join("deploy.smoke"));
        assert_ne!(a, b);
        assert_eq!(a, dir.join("deploy.web.details.json"));
    }

    #[test]
    fn render_round_trips() {
        let outputs: BTreeMap<String, String> =
            [("a".to_string(), "1=2".to_string()), ("b".into(), "x\nPIPE_EOF\ny".into())].into_iter().collect();
        assert_eq!(parse(&render(&outputs)).expect("parses"), outputs);
    }

    #[test]
    fn malformed_outputs_are_errors() {
        assert!(parse("no equals sign").is_err());
        assert!(parse("k<<EOF\nnever closed").is_err());
        assert!(parse("=v").is_err());
    }
}
