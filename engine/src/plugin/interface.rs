//! The plugin interface version, stamped by the SDK into a custom section of the
//! component and read here before anything is compiled.

use wasmparser::{Parser, Payload};

use super::PluginError;

/// The WIT package version this host implements (`sdk/wit/plugin.wit`).
pub const VERSION: &str = "0.1.0";
pub const SECTION: &str = "pipe-plugin-interface";

/// Refuses components without the stamp or built for an incompatible version.
/// Compatibility follows Cargo: same major, or for 0.x the same minor.
pub fn check(plugin: &str, bytes: &[u8]) -> Result<(), PluginError> {
    let found = stamp(bytes).map_err(|reason| PluginError::Invalid { plugin: plugin.to_string(), reason })?;
    let Some(found) = found else {
        return Err(PluginError::Invalid {
            plugin: plugin.to_string(),
            reason: format!("it has no `{SECTION}` section (was it built with pipe-sdk's export! macro?)"),
        });
    };
    if compatible(&found, VERSION) {
        Ok(())
    } else {
        Err(PluginError::Incompatible { plugin: plugin.to_string(), found, expected: VERSION.to_string() })
    }
}

fn stamp(bytes: &[u8]) -> Result<Option<String>, String> {
    // The section lives in the core module nested inside the component;
    // `parse_all` walks nested modules too.
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("not a WebAssembly component: {e}"))? {
            Payload::CustomSection(s) if s.name() == SECTION => {
                return Ok(Some(String::from_utf8_lossy(s.data()).trim().to_string()));
            }
            _ => {}
        }
    }
    Ok(None)
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
    use super::compatible;

    #[test]
    fn versions_follow_cargo_rules() {
        assert!(compatible("0.1.0", "0.1.3"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.0.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }
}
