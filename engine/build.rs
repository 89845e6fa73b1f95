//! Builds the built-in plugins (`plugins/*`, on the SDK) for wasm32-wasip2 and
//! embeds them in `pipe`: a new user gets them from source, never from
//! committed binaries. Adds the wasm32-wasip2 target through rustup when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest.join("..");
    for watched in ["plugins", "sdk/src", "sdk/wit", "sdk/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let plugins = root.join("plugins");
    let mut names: Vec<String> = std::fs::read_dir(&plugins)
        .expect("read plugins/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();

    ensure_target();
    // A target directory of its own: the outer build holds the lock on the main one.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-plugins");
    let status = Command::new(env("CARGO"))
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo for the built-in plugins");
    assert!(status.success(), "building the built-in plugins (plugins/) for {TARGET} failed");

    let out = PathBuf::from(env("OUT_DIR"));
    interface_versions(&root.join("sdk/wit"), &out);
    let mut table = String::from("pub const PLUGINS: &[(&str, &[u8])] = &[\n");
    for name in &names {
        let file = format!("{}.wasm", name.replace('-', "_"));
        let built = target_dir.join(TARGET).join("release").join(&file);
        let copy = out.join(&file);
        std::fs::copy(&built, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
        table.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", copy.display().to_string()));
    }
    table.push_str("];\n");
    std::fs::write(out.join("builtin_plugins.rs"), table).expect("write builtin_plugins.rs");
}

/// The plugin interface versions the host serves, read from the WIT packages
/// themselves (`sdk/wit/v<version>/plugin.wit`), so that a version is written
/// in exactly one place.
fn interface_versions(wit: &Path, out: &Path) {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(wit).expect("read sdk/wit/").flatten() {
        let folder = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path().join("plugin.wit"))
            .unwrap_or_else(|e| panic!("read sdk/wit/{folder}/plugin.wit: {e}"));
        let version = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package pipe:plugin@")?.strip_suffix(';'))
            .unwrap_or_else(|| panic!("sdk/wit/{folder}/plugin.wit has no `package pipe:plugin@VERSION;` line"));
        assert_eq!(folder, format!("v{version}"), "sdk/wit/{folder} holds version {version}: name the folder after it");
        versions.push(version.to_string());
    }
    versions.sort_by_key(|v| v.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>());
    let list: Vec<String> = versions.iter().map(|v| format!("{v:?}")).collect();
    let code =
        format!("/// Every interface version, oldest first.\npub const VERSIONS: &[&str] = &[{}];\n", list.join(", "));
    std::fs::write(out.join("interface_versions.rs"), code).expect("write interface_versions.rs");
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"))
}

/// The standard library for wasm32-wasip2 must be installed to build plugins.
fn ensure_target() {
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if Path::new(&sysroot).join("lib/rustlib").join(TARGET).is_dir() {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup (needed to build the built-in plugins)");
    let added = Command::new("rustup").args(["target", "add", TARGET]).status();
    if !added.is_ok_and(|s| s.success()) {
        panic!("the {TARGET} target is missing and rustup could not add it: run `rustup target add {TARGET}`");
    }
}
