//! The `image-build` executor: tars the context (honouring `.dockerignore` as
//! Docker does, off the runtime thread), builds through the Engine API, streams
//! the build output into the step's log, tags the result, and sets `image-id`
//! and `tag` as step outputs; under a swarm executor with a registry it is
//! pushed there and `image` names it by digest (else `image` is the tag).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bollard::query_parameters::{BuildImageOptions, TagImageOptions};
use tokio_util::sync::CancellationToken;

use crate::docker::{self, DockerIgnore, split_tag};
use crate::step::{Exit, StepLog};

#[derive(Clone, Debug)]
pub struct ImageBuildRun {
    pub context: PathBuf,
    pub dockerfile: String,
    pub target: Option<String>,
    pub tags: Vec<String>,
    pub args: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    pub output_file: PathBuf,
    /// Under a swarm executor with a registry: pushed there, so that every
    /// node runs these bytes, named by digest.
    pub push_to: Option<String>,
}

pub async fn run(spec: &ImageBuildRun, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let docker = match docker::client().await {
        Ok(d) => d,
        Err(e) => return e.into(),
    };
    let Some(tag) = spec.tags.first() else { return Exit::Error("image-build needs a tag".into()) };
    let (dir, dockerfile) = (spec.context.clone(), spec.dockerfile.clone());
    let context = tokio::select! {
        tarred = tokio::task::spawn_blocking(move || tar_context(&dir, &dockerfile)) => tarred,
        () = cancel.cancelled() => return Exit::Cancelled,
    };
    let context = match context {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Exit::Error(e),
        Err(e) => return Exit::Error(format!("internal error in pipe while reading the build context: {e}")),
    };
    let options = BuildImageOptions {
        t: Some(tag.clone()),
        dockerfile: spec.dockerfile.clone(),
        target: spec.target.clone().unwrap_or_default(),
        buildargs: Some(spec.args.clone()),
        labels: Some(spec.labels.clone()),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    if let Err(e) = docker::build(docker, options, context, log, cancel).await {
        return e.into();
    }
    let id = match docker.inspect_image(tag).await {
        Ok(image) => image.id.unwrap_or_default(),
        Err(e) => return Exit::Error(format!("built `{tag}` but cannot inspect it: {e}")),
    };
    for extra in &spec.tags[1..] {
        let (repo, version) = match split_tag(extra) {
            Ok(pair) => pair,
            Err(e) => return e.into(),
        };
        let options = TagImageOptions { repo: Some(repo), tag: Some(version) };
        if let Err(e) = docker.tag_image(&id, Some(options)).await {
            return Exit::Error(format!("cannot tag the image as `{extra}`: {e}"));
        }
    }
    let image = match &spec.push_to {
        Some(registry) => match push(docker, tag, registry, log, cancel).await {
            Ok(digest) => digest,
            Err(e) => return e.into(),
        },
        None => tag.clone(),
    };
    let outputs: BTreeMap<String, String> =
        [("image-id".to_string(), id), ("tag".to_string(), tag.clone()), ("image".to_string(), image)].into();
    match std::fs::write(&spec.output_file, crate::step::outputs::render(&outputs)) {
        Ok(()) => Exit::Code(0),
        Err(e) => Exit::Error(format!("cannot record the build's outputs: {e}")),
    }
}

/// Pushes the built image to `registry` (tagged into it first when its tag
/// names another place); answers its digest reference.
async fn push(
    docker: &bollard::Docker,
    tag: &str,
    registry: &str,
    log: &StepLog,
    cancel: &CancellationToken,
) -> Result<String, docker::DockerError> {
    let target = if tag.starts_with(&format!("{registry}/")) { tag.to_string() } else { format!("{registry}/{tag}") };
    if target != tag {
        let (repo, version) = split_tag(&target)?;
        let options = TagImageOptions { repo: Some(repo), tag: Some(version) };
        docker
            .tag_image(tag, Some(options))
            .await
            .map_err(docker::DockerError::api(format!("tag `{tag}` as `{target}`")))?;
    }
    docker::push(docker, &target, log, cancel).await
}

/// The build context as a tar archive, without what `.dockerignore` excludes.
fn tar_context(context: &Path, dockerfile: &str) -> Result<Vec<u8>, String> {
    if !context.is_dir() {
        return Err(format!("the build context {} is not a directory", context.display()));
    }
    let rules = DockerIgnore::read(&context.join(".dockerignore"), dockerfile)?;
    let mut archive = tar::Builder::new(Vec::new());
    rules.tar(context, Path::new(""), &mut archive).map_err(|e| format!("the build context: {e}"))?;
    archive.into_inner().map_err(|e| format!("cannot write the build context: {e}"))
}
