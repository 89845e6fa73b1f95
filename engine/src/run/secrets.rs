//! Secret values, read at run start from the environment and from untracked
//! dotenv files (parsed by `dotenvy`: quotes, `export`, multi-line values). A
//! secrets file that git tracks is refused: it is already leaked. A secret
//! restricted to branches (`from-env "X" branch="main"`) is withheld from the
//! runs of other branches: from `${secrets.X}`, `${env.X}` and the processes'
//! environment alike.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

use crate::lang::model::Secrets;

#[derive(Debug, Error, Diagnostic)]
pub enum SecretsError {
    #[error("secrets file {} is tracked by git", path.display())]
    #[diagnostic(code(run::secrets_tracked), help("run `git rm --cached {}` and add it to .gitignore", path.display()))]
    Tracked { path: PathBuf },

    #[error("cannot read secrets file {}: {source}", path.display())]
    #[diagnostic(code(run::secrets_file))]
    Read {
        path: PathBuf,
        #[source]
        source: dotenvy::Error,
    },

    #[error("secret `{0}` is not set in the environment")]
    #[diagnostic(code(run::secret_missing), help("export it before `pipe run`, or declare it in a secrets file"))]
    Missing(String),
}

/// Every declared secret's value, by name. A secret declared `from-env` that is
/// not set is not an error here: it is one only for a step that reads it.
pub fn load(spec: &Secrets, env: &HashMap<String, String>) -> Result<HashMap<String, String>, SecretsError> {
    let mut values = HashMap::new();
    for file in &spec.files {
        let path = &file.value;
        if tracked_by_git(path) {
            return Err(SecretsError::Tracked { path: path.clone() });
        }
        let read = |source| SecretsError::Read { path: path.clone(), source };
        for item in dotenvy::from_path_iter(path).map_err(read)? {
            let (key, value) = item.map_err(read)?;
            values.insert(key, value);
        }
    }
    for name in &spec.from_env {
        if let Some(v) = env.get(&name.value) {
            values.insert(name.value.clone(), v.clone());
        }
    }
    Ok(values)
}

/// The declared secrets a run of `branch` may not have, each with the glob of
/// the branches that may.
pub fn withheld(spec: &Secrets, branch: &str) -> BTreeMap<String, String> {
    spec.branch_only
        .iter()
        .filter(|(_, only)| !only.matcher.is_match(branch))
        .map(|(name, only)| (name.clone(), only.pattern.clone()))
        .collect()
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
