//! Real Docker for container tests: a busybox image built locally from
//! Debian's static busybox (no registry is reachable), removed when dropped.

use std::process::Command;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, ListContainersOptions, RemoveImageOptions};
use futures_util::StreamExt;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

pub fn docker(rt: &tokio::runtime::Runtime) -> Docker {
    rt.block_on(async {
        Docker::connect_with_defaults().expect("docker").negotiate_version().await.expect("the Docker Engine")
    })
}

pub struct Image {
    pub tag: String,
}

impl Image {
    /// `FROM scratch` with /bin/busybox and its applets as symlinks.
    pub fn busybox() -> Image {
        let busybox = std::path::Path::new("/bin/busybox");
        assert!(busybox.is_file(), "busybox-static is not installed: `bash .ci/setup --tests` installs it");
        let ctx = tempfile::tempdir().expect("context");
        let bin = ctx.path().join("rootfs/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::create_dir_all(ctx.path().join("rootfs/tmp")).expect("mkdir");
        std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
        for applet in [
            "sh", "true", "false", "echo", "cat", "sleep", "ls", "env", "id", "test", "printf", "touch", "mkdir",
            "wget", "httpd",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink");
        }
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY rootfs/ /\nLABEL pipe.test=1\n")
            .expect("Dockerfile");
        Image::build(ctx.path(), "pipe-test-busybox")
    }

    /// Builds the image whose context is `dir`, tagged `<name>:<unique>`.
    pub fn build(dir: &std::path::Path, name: &str) -> Image {
        let tar = Command::new("tar").arg("-C").arg(dir).args(["-cf", "-", "."]).output().expect("tar");
        assert!(tar.status.success());
        let tag = format!(
            "{name}:{}-{}",
            std::process::id(),
            dir.file_name().expect("name").to_string_lossy().to_lowercase().replace(['.', '_'], "-")
        );
        let rt = runtime();
        let docker = docker(&rt);
        rt.block_on(async {
            let options = BuildImageOptions {
                t: Some(tag.clone()),
                rm: true,
                dockerfile: "Dockerfile".into(),
                ..Default::default()
            };
            let mut build = docker.build_image(options, None, Some(bollard::body_full(bytes::Bytes::from(tar.stdout))));
            while let Some(item) = build.next().await {
                item.expect("image build");
            }
        });
        Image { tag }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let rt = runtime();
        let docker = docker(&rt);
        let _ = rt.block_on(docker.remove_image(
            &self.tag,
            Some(RemoveImageOptions { force: true, ..Default::default() }),
            None,
        ));
    }
}

/// Containers (running or not) carrying `label=value`.
pub fn containers_with(label: &str, value: &str) -> Vec<String> {
    let rt = runtime();
    let docker = docker(&rt);
    let filters = [("label".to_string(), vec![format!("{label}={value}")])].into_iter().collect();
    let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    rt.block_on(docker.list_containers(Some(options)))
        .expect("list containers")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Networks carrying `label=value`.
pub fn networks_with(label: &str, value: &str) -> Vec<String> {
    let rt = runtime();
    let docker = docker(&rt);
    let filters = [("label".to_string(), vec![format!("{label}={value}")])].into_iter().collect();
    let options = bollard::query_parameters::ListNetworksOptions { filters: Some(filters) };
    rt.block_on(docker.list_networks(Some(options))).expect("list networks").into_iter().filter_map(|n| n.id).collect()
}

/// A single-node swarm for the test; left again on drop if the test made it.
pub struct Swarm {
    created: bool,
}

impl Swarm {
    pub fn ensure() -> Swarm {
        use bollard::models::SwarmInitRequest;
        let rt = runtime();
        let docker = docker(&rt);
        if rt.block_on(docker.inspect_swarm()).is_ok() {
            return Swarm { created: false };
        }
        let request = SwarmInitRequest {
            listen_addr: Some("127.0.0.1:2377".into()),
            advertise_addr: Some("127.0.0.1".into()),
            ..Default::default()
        };
        rt.block_on(docker.init_swarm(request)).expect("docker swarm init");
        Swarm { created: true }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.created {
            let rt = runtime();
            let docker = docker(&rt);
            let options = bollard::query_parameters::LeaveSwarmOptions { force: true };
            let _ = rt.block_on(docker.leave_swarm(Some(options)));
            // `swarm init` also made this bridge; the engine is left as it was found.
            let _ = rt.block_on(docker.remove_network("docker_gwbridge"));
        }
    }
}

/// Swarm services carrying `label=value`.
pub fn services_with(label: &str, value: &str) -> Vec<String> {
    let rt = runtime();
    let docker = docker(&rt);
    let filters = [("label".to_string(), vec![format!("{label}={value}")])].into_iter().collect();
    let options = bollard::query_parameters::ListServicesOptions { filters: Some(filters), ..Default::default() };
    rt.block_on(docker.list_services(Some(options))).expect("list services").into_iter().filter_map(|s| s.id).collect()
}
