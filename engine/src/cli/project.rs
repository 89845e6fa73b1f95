//! The pipelines of a repository as the CLI sees them: discovered, parsed and
//! planned, with every diagnostic kept for reporting together.

use std::path::{Path, PathBuf};

use miette::Diagnostic;

use crate::lang::{self, LangError, Pipeline};
use crate::plan::{self, Plan};

pub struct Project {
    pub pipelines: Vec<Loaded>,
    /// Diagnostics of files or pipelines that did not load.
    pub errors: Vec<Box<dyn Diagnostic + Send + Sync>>,
}

pub struct Loaded {
    /// The file as the user knows it (relative to the root).
    pub file: String,
    pub pipeline: Pipeline,
    pub plan: Result<Plan, Vec<plan::PlanError>>,
}

impl Project {
    pub fn load(root: &Path, file: Option<&Path>) -> Project {
        let root = root.to_path_buf();
        let files: Vec<PathBuf> = match file {
            Some(f) => vec![std::path::absolute(f).unwrap_or_else(|_| f.to_path_buf())],
            None => lang::discover::discover(&root),
        };
        let mut project = Project { pipelines: Vec::new(), errors: Vec::new() };
        if files.is_empty() {
            project.errors.push(Box::new(LangError::NoPipeline { root: root.display().to_string() }));
        }
        for path in files {
            let name = match file {
                Some(f) => f.display().to_string(),
                None => lang::discover::display_name(&root, &path),
            };
            match lang::load_file(&path, &name, &root) {
                Ok(pipelines) => {
                    for pipeline in pipelines {
                        let plan = plan::plan(&pipeline);
                        project.pipelines.push(Loaded { file: name.clone(), pipeline, plan });
                    }
                }
                Err(errs) => project.errors.extend(errs.0.into_iter().map(|e| Box::new(e) as _)),
            }
        }
        let mut seen = std::collections::HashMap::new();
        for p in &project.pipelines {
            if let Some(first) = seen.insert(p.pipeline.name.clone(), p.file.clone()) {
                project.errors.push(Box::new(DuplicatePipeline {
                    name: p.pipeline.name.clone(),
                    first,
                    second: p.file.clone(),
                }));
            }
        }
        project
    }

    pub fn names(&self) -> Vec<&str> {
        self.pipelines.iter().map(|p| p.pipeline.name.as_str()).collect()
    }

    pub fn find(&self, name: &str) -> Option<&Loaded> {
        self.pipelines.iter().find(|p| p.pipeline.name == name)
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("pipeline `{name}` is defined in both {first} and {second}")]
#[diagnostic(code(lang::duplicate_pipeline), help("pipeline names are unique in a repository"))]
pub struct DuplicatePipeline {
    name: String,
    first: String,
    second: String,
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SelectError {
    #[error("no pipeline named `{name}`")]
    #[diagnostic(code(cli::unknown_pipeline))]
    Unknown {
        name: String,
        #[help]
        help: Option<String>,
    },
    #[error("{count} pipelines here; name the one to run")]
    #[diagnostic(code(cli::ambiguous_pipeline), help("pipelines: {names}"))]
    Ambiguous { count: usize, names: String },
}

impl Project {
    /// The pipeline named, or the only one when no name is given.
    pub fn select(&self, name: Option<&str>) -> Result<&Loaded, SelectError> {
        match name {
            Some(n) => self.find(n).ok_or_else(|| SelectError::Unknown {
                name: n.to_string(),
                help: lang::error::did_you_mean(n, self.names())
                    .or_else(|| Some(format!("pipelines: {}", self.names().join(", ")))),
            }),
            None if self.pipelines.len() == 1 => Ok(&self.pipelines[0]),
            None => Err(SelectError::Ambiguous { count: self.pipelines.len(), names: self.names().join(", ") }),
        }
    }
}
