//! The plugin interface a component speaks, read from its own imports and
//! exports (`pipe:plugin/host@0.2.0`, `pipe:plugin/plugin@0.2.0`) before
//! anything is compiled. The versions the host serves come from the WIT
//! packages in `sdk/wit/` (build.rs reads them); each is one [`Version`].

use wasmparser::{Parser, Payload};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/interface_versions.rs"));
}

/// An interface version this host serves, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `step` world: one role, settings without kinds.
    V0_1,
    /// `pipe-plugin` world: roles (step, health, traffic, analysis, notify), typed settings.
    V0_2,
}

const ALL: [Version; 2] = [Version::V0_1, Version::V0_2];
const _: () = assert!(generated::VERSIONS.len() == ALL.len(), "a WIT folder without a Version (or the reverse)");

impl Version {
    pub fn number(self) -> &'static str {
        generated::VERSIONS[self as usize]
    }

    /// The newest version, which the SDK builds.
    pub fn newest() -> Version {
        ALL[ALL.len() - 1]
    }
}

/// The versions served, for messages: `0.1.0, 0.2.0`.
pub fn served() -> String {
    generated::VERSIONS.join(", ")
}

/// What a component says about itself.
pub enum Found {
    Speaks(Version),
    /// Built for a version this host does not serve.
    Other(String),
    /// Not a pipe plugin at all (why).
    Invalid(String),
}

/// Reads the `pipe:plugin/…@VERSION` names the component imports and exports.
/// Every one must carry the same version, and the `plugin` interface must be
/// exported; compatibility follows Cargo (same major, or for 0.x the same minor).
pub fn detect(bytes: &[u8]) -> Found {
    let mut versions: Vec<String> = Vec::new();
    let mut exports_plugin = false;
    // Nested modules and components start with their own `Version` payload;
    // only the outer component's imports and exports say what it speaks.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = match payload {
            Ok(p) => p,
            Err(e) => return Found::Invalid(format!("not a WebAssembly component: {e}")),
        };
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section.into_iter().flatten() {
                    versions.extend(pipe_version(import.name.name));
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section.into_iter().flatten() {
                    if let Some(v) = pipe_version(export.name.name) {
                        exports_plugin |= export.name.name.starts_with("pipe:plugin/plugin@");
                        versions.push(v);
                    }
                }
            }
            _ => {}
        }
    }
    versions.sort();
    versions.dedup();
    match versions.as_slice() {
        [] => Found::Invalid(
            "it neither imports nor exports any pipe:plugin interface (was it built with pipe-sdk?)".into(),
        ),
        [one] if !exports_plugin => Found::Invalid(format!("it does not export pipe:plugin/plugin@{one}")),
        [one] => match ALL.into_iter().find(|v| compatible(one, v.number())) {
            Some(v) => Found::Speaks(v),
            None => Found::Other(one.clone()),
        },
        several => Found::Invalid(format!("it mixes interface versions {}", several.join(", "))),
    }
}

/// `pipe:plugin/host@0.2.0` -> `0.2.0`.
fn pipe_version(name: &str) -> Option<String> {
    let (interface, version) = name.strip_prefix("pipe:plugin/")?.split_once('@')?;
    (!interface.is_empty()).then(|| version.to_string())
}

fn compatible(found: &str, ours: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(u64::MAX)).collect() };
    let (a, b) = (parts(found), parts(ours));
    match (a.as_slice(), b.as_slice()) {
        ([0, minor_a, ..], [0, minor_b, ..]) => minor_a == minor_b,
        ([major_a, ..], [major_b, ..]) => major_a == major_b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{Version, compatible, pipe_version};

    #[test]
    fn versions_follow_cargo_rules() {
        assert!(compatible("0.1.0", "0.1.3"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.0.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }

    #[test]
    fn versions_come_from_the_wit_packages() {
        assert_eq!(Version::V0_1.number(), "0.1.0");
        assert_eq!(Version::newest().number(), "0.2.0");
        assert_eq!(pipe_version("pipe:plugin/host@0.2.0").as_deref(), Some("0.2.0"));
        assert_eq!(pipe_version("wasi:cli/environment@0.2.6"), None);
    }
}
