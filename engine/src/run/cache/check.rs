//! What a cache entry must be before anything of it is used. Anyone who can
//! write `.pipe/cache` (a step's code, a run of a contributor's branch) can
//! forge an entry, so `entry.json` is read as hostile input: bounded, its
//! paths exactly the step's declared outputs, its output values checked as if
//! the step had just written them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::Entry;
use super::nofollow::RelPath;
use crate::lang::model::Cache;
use crate::step::{Masker, outputs};

/// `entry.json` holds output values (at most [`outputs::MAX_OUTPUT_BYTES`])
/// and a few names; anything much larger is not one pipe wrote.
const MAX_ENTRY_JSON: u64 = 4 * outputs::MAX_OUTPUT_BYTES as u64;

/// Why an entry was not used: the step runs instead, and its log says this.
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache entry refused: {}", self.0)
    }
}

/// The step's declared outputs as plain relative paths, or why one is not.
pub fn declared(spec: &Cache) -> Result<Vec<RelPath>, String> {
    spec.outputs
        .iter()
        .map(|o| {
            RelPath::parse(&o.value).ok_or_else(|| format!("its output `{}` is not a plain relative path", o.value))
        })
        .collect()
}

/// Reads `entry.json`: a regular file (not a link), bounded in size.
pub fn read(entry_dir: &Path) -> Result<Entry, Refused> {
    read_json(&entry_dir.join("entry.json"), MAX_ENTRY_JSON)
}

/// Reads a JSON file pipe wrote and anyone may have replaced: a regular
/// file (not a link), at most `max` bytes.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, max: u64) -> Result<T, Refused> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Refused(format!("cannot read {name}: {e}")))?;
    let meta = file.metadata().map_err(|e| Refused(format!("cannot read {name}: {e}")))?;
    if !meta.is_file() {
        return Err(Refused(format!("{name} is not a regular file")));
    }
    let mut text = Vec::new();
    file.take(max + 1).read_to_end(&mut text).map_err(|e| Refused(format!("cannot read {name}: {e}")))?;
    if text.len() as u64 > max {
        return Err(Refused(format!("{name} is larger than {max} bytes")));
    }
    serde_json::from_slice(&text).map_err(|e| Refused(format!("{name} is not what pipe writes: {e}")))
}

/// Checks an entry against the step that would use it; returns the output
/// paths to restore (the declared ones, as the entry lists exactly those).
pub fn against(entry: &Entry, step: &str, spec: &Cache, masker: &Masker) -> Result<Vec<RelPath>, Refused> {
    if entry.step != step {
        return Err(Refused(format!("it was stored for step `{}`", entry.step)));
    }
    let declared = declared(spec).map_err(Refused)?;
    let wanted: BTreeSet<&RelPath> = declared.iter().collect();
    let mut listed = BTreeSet::new();
    for f in &entry.files {
        let rel = RelPath::parse(f).filter(|r| wanted.contains(r));
        let Some(rel) = rel else {
            return Err(Refused(format!("path `{f}` is outside the declared outputs")));
        };
        listed.insert(rel);
    }
    if let Some(missing) = declared.iter().find(|d| !listed.contains(d)) {
        return Err(Refused(format!("it lacks the declared output `{missing}`")));
    }
    outputs_hold(&entry.outputs, masker).map_err(Refused)?;
    Ok(declared)
}

/// Output values as a step may leave them: what `$PIPE_OUTPUT` could hold
/// (bounded, keys without `=` or line breaks), and no secret in clear.
pub fn outputs_hold(values: &BTreeMap<String, String>, masker: &Masker) -> Result<(), String> {
    let text = outputs::render(values);
    match outputs::parse(&text) {
        Ok(parsed) if parsed == *values => {}
        Ok(_) => return Err("its output names are not ones a step can write".into()),
        Err(e) => return Err(format!("its outputs are not valid: {e}")),
    }
    if let Some((key, _)) = values.iter().find(|(_, v)| masker.reveals(v)) {
        return Err(format!("its output `{key}` holds a secret's value"));
    }
    Ok(())
}
