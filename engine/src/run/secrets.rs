//! Secret values, read at run start from the environment and from untracked
//! dotenv files. A secrets file that git tracks is refused: it is already leaked.

use std::collections::HashMap;
use std::path::Path;

use crate::lang::model::Secrets;

pub fn load(spec: &Secrets, env: &HashMap<String, String>) -> Result<HashMap<String, String>, String> {
    let mut values = HashMap::new();
    for file in &spec.files {
        let path = &file.value;
        if tracked_by_git(path) {
            return Err(format!(
                "secrets file {} is tracked by git; run `git rm --cached {}` and add it to .gitignore",
                path.display(),
                path.display()
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read secrets file {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("{} line {}: expected KEY=VALUE", path.display(), n + 1));
            };
            values.insert(k.trim().to_string(), unquote(v.trim()).to_string());
        }
    }
    for name in &spec.from_env {
        match env.get(&name.value) {
            Some(v) => {
                values.insert(name.value.clone(), v.clone());
            }
            None => return Err(format!("secret `{}` is not set in the environment", name.value)),
        }
    }
    Ok(values)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

fn tracked_by_git(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return false };
    std::process::Command::new("git")
        .arg("-C")
        .arg(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
        .args(["ls-files", "--error-unmatch", "--"])
        .arg(name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
