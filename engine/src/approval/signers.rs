//! Who may decide at a gate: an allowed-signers file of the repository, in
//! the format git's commit signing uses (`principal [options] key-type key`,
//! see ssh-keygen(1), "ALLOWED SIGNERS"). It is read once, when the pipeline
//! is loaded (before any step of a run can touch the checkout), and kept in
//! memory: what a run verifies decisions against is the file as it was then.

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// The SSH signature namespace of pipe's decisions: a signature made for
/// git commits (namespace `git`) or anything else is not an approval.
pub const NAMESPACE: &str = "pipe-approval";

/// An allowed-signers file longer than this is a mistake, not a team.
const MAX_BYTES: u64 = 64 * 1024;

/// Key types ssh-keygen signs with.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

const OPTIONS: &[&str] = &["cert-authority", "namespaces", "valid-after", "valid-before"];

/// The approvers of a gate, as read from their file.
#[derive(Debug, PartialEq, Eq)]
pub struct AllowedSigners {
    /// The file as pipe read it: what decisions are verified against.
    text: String,
    /// Where it was read from, for messages.
    pub path: PathBuf,
    /// Every principal the file names, in order.
    pub principals: Vec<String>,
}

impl AllowedSigners {
    /// Reads and checks `path`; the error is a sentence for a diagnostic.
    /// A symlink is refused: the file must be the repository's own.
    pub fn read(path: &Path) -> Result<AllowedSigners, String> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read it ({})", e.kind()))?;
        if meta.file_type().is_symlink() {
            return Err("it is a symlink; name the file itself".into());
        }
        if !meta.is_file() {
            return Err("it is not a file".into());
        }
        if meta.len() > MAX_BYTES {
            return Err(format!("it is larger than {MAX_BYTES} bytes"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it ({})", e.kind()))?;
        AllowedSigners::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<AllowedSigners, String> {
        let mut principals = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let named = parse_line(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            principals.extend(named);
        }
        if principals.is_empty() {
            return Err("it names no key: nobody could approve".into());
        }
        Ok(AllowedSigners { text, path: path.to_path_buf(), principals })
    }

    /// The file's text, as it was read.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// One `principals [options] key-type base64 [comment]` line; its principals.
fn parse_line(line: &str) -> Result<Vec<String>, String> {
    let (principals, rest) = line.split_once(char::is_whitespace).ok_or("a principal without a key")?;
    let principals: Vec<String> = principals.split(',').map(str::to_string).collect();
    if principals.iter().any(|p| p.is_empty() || p.chars().any(char::is_control)) {
        return Err("an empty or unprintable principal".into());
    }
    let mut rest = rest.trim_start();
    if !KEY_TYPES.iter().any(|t| rest.split_whitespace().next() == Some(t)) {
        let (options, after) = split_unquoted(rest, char::is_whitespace);
        check_options(options)?;
        rest = after.trim_start();
    }
    let mut words = rest.split_whitespace();
    let kind = words.next().ok_or("no key after the principals")?;
    if !KEY_TYPES.contains(&kind) {
        return Err(format!("`{kind}` is not a key type ssh-keygen signs with ({})", KEY_TYPES.join(", ")));
    }
    let blob = words.next().ok_or("a key type without its key")?;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(blob).map_err(|_| format!("the {kind} key is not base64"))?;
    // A key blob is SSH strings end to end, the first its own type; an
    // ed25519 key is then 32 bytes.
    let fields = ssh_strings(&bytes).ok_or_else(|| format!("the {kind} key is truncated or malformed"))?;
    match fields.as_slice() {
        [first, ..] if *first != kind.as_bytes() => return Err(format!("the key is not a {kind} key")),
        [_, key] if kind == "ssh-ed25519" && key.len() == 32 => {}
        _ if kind == "ssh-ed25519" => return Err("the ssh-ed25519 key is not 32 bytes".into()),
        [_, _, ..] => {}
        _ => return Err(format!("the {kind} key is truncated or malformed")),
    }
    Ok(principals)
}

/// The length-prefixed fields of an SSH wire blob, when they fill it exactly.
fn ssh_strings(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        fields.push(bytes.get(4..4usize.checked_add(len)?)?);
        bytes = &bytes[4 + len..];
    }
    Some(fields)
}

/// `cert-authority,namespaces="pipe-approval,git"`: only options ssh-keygen
/// knows, and a `namespaces` that lets the key sign approvals.
fn check_options(options: &str) -> Result<(), String> {
    let mut rest = options;
    while !rest.is_empty() {
        let (option, after) = split_unquoted(rest, |c| c == ',');
        rest = after.strip_prefix(',').unwrap_or(after);
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        if !OPTIONS.contains(&name) {
            return Err(format!("unknown option `{name}` (known: {})", OPTIONS.join(", ")));
        }
        if name == "namespaces" && !value.trim_matches('"').split(',').any(|n| n == NAMESPACE) {
            return Err(format!("namespaces={value} does not let this key sign approvals (add `{NAMESPACE}`)"));
        }
    }
    Ok(())
}

/// Splits `text` at the first `at` outside double quotes.
fn split_unquoted(text: &str, at: impl Fn(char) -> bool) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && at(c) {
            return text.split_at(i);
        }
    }
    (text, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM6GSN4akeht0gdF4hmGAxZIfHeYmKsBuZEM+PIFiTqV";

    fn parse(text: &str) -> Result<Vec<String>, String> {
        AllowedSigners::parse(Path::new("approvers"), text.to_string()).map(|s| s.principals)
    }

    #[test]
    fn principals_options_and_comments_are_read() {
        let text = format!(
            "# release managers\nalice@example.com namespaces=\"git,pipe-approval\" {KEY} alice\n\nbob,carol {KEY}\n"
        );
        assert_eq!(parse(&text).expect("valid"), ["alice@example.com", "bob", "carol"]);
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            (format!("alice namespaces=\"git\" {KEY}"), "line 1: namespaces=\"git\" does not let"),
            ("alice ssh-ed25519 not-base64!".to_string(), "line 1: the ssh-ed25519 key is not base64"),
            (format!("# x\nalice ssh-rsa {}", &KEY[12..]), "line 2: the key is not a ssh-rsa key"),
            ("alice".to_string(), "line 1: a principal without a key"),
            ("bob ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINOTAKEY".to_string(), "line 1: the ssh-ed25519 key is"),
            (format!("alice trusted {KEY}"), "line 1: unknown option `trusted`"),
            ("# nobody\n".to_string(), "names no key"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
