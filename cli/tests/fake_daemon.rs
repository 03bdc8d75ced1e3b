//! The `flotilla` binary against a fake engine served on a unix socket: checks
//! the wiring the unit tests cannot (dialling the socket, `run` pulling a
//! missing image then attaching and exiting with the container's code, `run
//! -d`, `ps` tables, daemon errors as one line). Real end-to-end tests against
//! `flotilla-worker` live in cluster-tests.

use agent_common::proto::engine_server::{Engine, EngineServer};
use agent_common::proto::*;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Default)]
struct Fake {
    pulled: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Engine for Fake {
    type AttachStream = Out<OutputChunk>;
    type LogsStream = Out<OutputChunk>;
    type ExecStream = Out<OutputChunk>;
    type ExportStream = Out<DataChunk>;
    type LoadImagesStream = Out<Progress>;
    type SaveImagesStream = Out<DataChunk>;
    type PullImageStream = Out<Progress>;
    type PushImageStream = Out<Progress>;

    async fn version(&self, _: Request<Empty>) -> Result<Response<VersionReply>, Status> {
        Ok(Response::new(VersionReply {
            version: "fake-1".into(),
            api_version: "1.0".into(),
            ..Default::default()
        }))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerReply>, Status> {
        let spec: agent_common::engine::CreateContainer =
            serde_json::from_str(&req.into_inner().spec_json)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if spec.config.image == "busybox" && !self.pulled.load(Ordering::SeqCst) {
            return Err(Status::not_found("No such image: busybox:latest"));
        }
        if spec.config.image != "busybox" {
            return Err(Status::invalid_argument(
                "image name conflicts with nothing",
            ));
        }
        Ok(Response::new(CreateContainerReply {
            id: "f00dfeed".repeat(8),
            warnings: vec!["fake warning".into()],
        }))
    }

    async fn start_container(&self, _: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }

    async fn stop_container(&self, r: Request<StopRequest>) -> Result<Response<Empty>, Status> {
        if r.into_inner().container == "ghost" {
            return Err(Status::not_found("No such container: ghost"));
        }
        Ok(Response::new(Empty {}))
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let rows = vec![agent_common::engine::ContainerSummary {
            id: "f00dfeed".repeat(8),
            names: vec!["/web".into()],
            image: "busybox".into(),
            command: "httpd -f".into(),
            created: now - 125,
            state: "running".into(),
            status: "Up 2 minutes".into(),
            ..Default::default()
        }];
        Ok(Response::new(JsonReply {
            json: serde_json::to_string(&rows).unwrap(),
            warnings: vec![],
        }))
    }

    async fn attach(
        &self,
        req: Request<Streaming<AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = req.into_inner();
        let first = input.message().await?.and_then(|m| m.kind);
        let Some(attach_input::Kind::Start(start)) = first else {
            return Err(Status::invalid_argument("first message must be start"));
        };
        if !start.start {
            return Err(Status::invalid_argument("run must ask to start"));
        }
        let out = vec![
            Ok(OutputChunk {
                data: b"hello from fake\n".to_vec(),
                ..Default::default()
            }),
            Ok(OutputChunk {
                stream: output_chunk::Stream::Stderr as i32,
                data: b"to stderr\n".to_vec(),
                ..Default::default()
            }),
            Ok(OutputChunk {
                exit_code: Some(3),
                ..Default::default()
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }

    async fn pull_image(
        &self,
        req: Request<PullRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let r = req.into_inner();
        if r.image != "busybox" {
            return Err(Status::invalid_argument("unexpected image"));
        }
        self.pulled.store(true, Ordering::SeqCst);
        let out = vec![
            Ok(Progress {
                id: "abc123".into(),
                status: "Downloading".into(),
                current: 10,
                total: 100,
                ..Default::default()
            }),
            Ok(Progress {
                id: "abc123".into(),
                status: "Pull complete".into(),
                ..Default::default()
            }),
            Ok(Progress {
                status: "Status: Downloaded newer image for busybox:latest".into(),
                ..Default::default()
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }

    async fn logs(&self, _: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        Err(Status::unimplemented("logs"))
    }
    async fn exec(
        &self,
        _: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(Status::unimplemented("exec"))
    }
    async fn export(
        &self,
        _: Request<ContainerRef>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        Err(Status::unimplemented("export"))
    }
    async fn load_images(
        &self,
        _: Request<Streaming<DataChunk>>,
    ) -> Result<Response<Self::LoadImagesStream>, Status> {
        Err(Status::unimplemented("load"))
    }
    async fn import_image(
        &self,
        _: Request<Streaming<ImportInput>>,
    ) -> Result<Response<ImageIdReply>, Status> {
        Err(Status::unimplemented("import"))
    }
    async fn save_images(
        &self,
        _: Request<SaveRequest>,
    ) -> Result<Response<Self::SaveImagesStream>, Status> {
        Err(Status::unimplemented("save"))
    }
    async fn push_image(
        &self,
        _: Request<PushRequest>,
    ) -> Result<Response<Self::PushImageStream>, Status> {
        Err(Status::unimplemented("push"))
    }

    async fn restart_container(&self, _: Request<StopRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("restart_container is not faked"))
    }
    async fn kill_container(&self, _: Request<KillRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("kill_container is not faked"))
    }
    async fn remove_container(
        &self,
        _: Request<RemoveContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("remove_container is not faked"))
    }
    async fn inspect_container(
        &self,
        _: Request<ContainerRef>,
    ) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("inspect_container is not faked"))
    }
    async fn wait_container(
        &self,
        _: Request<ContainerRef>,
    ) -> Result<Response<WaitReply>, Status> {
        Err(Status::unimplemented("wait_container is not faked"))
    }
    async fn rename_container(&self, _: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("rename_container is not faked"))
    }
    async fn pause_container(&self, _: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("pause_container is not faked"))
    }
    async fn unpause_container(&self, _: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("unpause_container is not faked"))
    }
    async fn top(&self, _: Request<ContainerRef>) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("top is not faked"))
    }
    async fn diff(&self, _: Request<ContainerRef>) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("diff is not faked"))
    }
    async fn commit(&self, _: Request<CommitRequest>) -> Result<Response<ImageIdReply>, Status> {
        Err(Status::unimplemented("commit is not faked"))
    }
    async fn prune_containers(&self, _: Request<Empty>) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("prune_containers is not faked"))
    }
    async fn list_images(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("list_images is not faked"))
    }
    async fn inspect_image(&self, _: Request<ImageRef>) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("inspect_image is not faked"))
    }
    async fn image_history(&self, _: Request<ImageRef>) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("image_history is not faked"))
    }
    async fn tag_image(&self, _: Request<TagRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("tag_image is not faked"))
    }
    async fn remove_image(
        &self,
        _: Request<RemoveImageRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("remove_image is not faked"))
    }
    async fn prune_images(
        &self,
        _: Request<PruneImagesRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("prune_images is not faked"))
    }
    async fn check_registry_login(
        &self,
        _: Request<RegistryLoginRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("check_registry_login is not faked"))
    }
    async fn create_volume(
        &self,
        _: Request<CreateVolumeRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("create_volume is not faked"))
    }
    async fn list_volumes(&self, _: Request<Empty>) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("list_volumes is not faked"))
    }
    async fn inspect_volume(&self, _: Request<VolumeRef>) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("inspect_volume is not faked"))
    }
    async fn remove_volume(
        &self,
        _: Request<RemoveVolumeRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("remove_volume is not faked"))
    }
    async fn prune_volumes(&self, _: Request<Empty>) -> Result<Response<JsonReply>, Status> {
        Err(Status::unimplemented("prune_volumes is not faked"))
    }
}

/// Serves a fresh fake on a socket in a temp dir; returns the dir and the host URL.
fn serve(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.sock");
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&path).unwrap() });
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(EngineServer::new(Fake::default()))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    let host = format!("unix://{}", path.display());
    (dir, host)
}

fn flotilla(host: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("-H")
        .arg(host)
        .args(args)
        .env("HOME", "/nonexistent")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_pulls_a_missing_image_then_exits_with_the_container_code() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, host) = serve(&rt);
    let (code, out, err) = flotilla(&host, &["run", "--rm", "busybox", "echo", "hi"]);
    assert_eq!(code, 3, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "hello from fake\n");
    assert!(
        err.contains("Unable to find image 'busybox' locally"),
        "{err}"
    );
    assert!(err.contains("abc123: Pull complete"), "{err}");
    assert!(err.contains("WARNING: fake warning"), "{err}");
    assert!(err.contains("to stderr"), "{err}");
    // A second run finds the image: no pull.
    let (code, _, err) = flotilla(&host, &["run", "-d", "busybox"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("Unable to find image"), "{err}");
}

#[test]
fn run_detached_prints_the_full_id_and_daemon_errors_exit_125() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, host) = serve(&rt);
    flotilla(&host, &["pull", "busybox"]);
    let (code, out, _) = flotilla(&host, &["run", "-d", "busybox"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "f00dfeed".repeat(8));
    let (code, _, err) = flotilla(&host, &["run", "alpine"]);
    assert_eq!(code, 125);
    assert_eq!(err, "Error: image name conflicts with nothing\n");
}

#[test]
fn ps_prints_a_docker_table_and_multi_target_verbs_continue() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, host) = serve(&rt);
    let (code, out, err) = flotilla(&host, &["ps"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("CONTAINER ID   IMAGE     COMMAND      CREATED"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("f00dfeedf00d   busybox   \"httpd -f\"   2 minutes ago"),
        "{out}"
    );
    assert!(lines[1].ends_with("web"), "{out}");
    let (code, out, err) = flotilla(&host, &["ps", "-q"]);
    assert_eq!((code, out.as_str()), (0, "f00dfeedf00d\n"), "{err}");
    let (code, out, err) = flotilla(&host, &["stop", "web", "ghost", "db"]);
    assert_eq!(code, 1);
    assert_eq!(out, "web\ndb\n");
    assert_eq!(err, "Error: No such container: ghost\n");
    let (code, out, _) = flotilla(&host, &["version"]);
    assert_eq!(code, 0);
    assert!(out.contains("Version:          fake-1"), "{out}");
}

#[test]
fn missing_daemon_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = format!("unix://{}/none.sock", dir.path().display());
    let (code, _, err) = flotilla(&host, &["ps"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!("Error: Cannot connect to the Flotilla daemon at {host}: is flotilla-worker running? (set -H or FLOTILLA_HOST)\n")
    );
    let (code, _, _) = flotilla(&host, &["run", "busybox"]);
    assert_eq!(code, 125);
}
