//! The engine API (engine.proto) over tonic: decodes requests, calls the
//! engine, and maps [`EngineError`] to gRPC statuses. This is the only place
//! that knows about `tonic::Status`. A start failure carries Docker's exit
//! code (125/126/127) in the `x-flotilla-exit-code` metadata entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use agent_common::engine::{CreateContainer, PruneReport};
use agent_common::proto::engine_server::{Engine as EngineApi, EngineServer};
use agent_common::proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{Engine, EngineError};
use crate::image::ImageError;
use crate::network::user::{CreateRequest, UserNetworkError};
use crate::volume::VolumeError;

/// Metadata key carrying the exit code of a failed start.
pub const EXIT_CODE_METADATA: &str = "x-flotilla-exit-code";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Maps an engine error to a gRPC status with the right code.
pub fn to_status(e: EngineError) -> Status {
    let msg = e.to_string();
    match e {
        EngineError::NoSuchContainer(_) => Status::not_found(msg),
        EngineError::Image(ImageError::NotFound(_)) => Status::not_found(msg),
        EngineError::Volume(VolumeError::NotFound(_)) => Status::not_found(msg),
        EngineError::NameInUse { .. } => Status::already_exists(msg),
        EngineError::Network(UserNetworkError::NotFound(_)) => Status::not_found(msg),
        EngineError::Network(UserNetworkError::NameTaken(_)) => Status::already_exists(msg),
        EngineError::Network(
            UserNetworkError::Invalid(_)
            | UserNetworkError::Ambiguous(_)
            | UserNetworkError::Overlap { .. },
        ) => Status::invalid_argument(msg),
        EngineError::Network(
            UserNetworkError::AddressInUse { .. } | UserNetworkError::PoolExhausted(_),
        ) => Status::failed_precondition(msg),
        EngineError::Ambiguous(_)
        | EngineError::InvalidArgument(_)
        | EngineError::Volume(VolumeError::InvalidName(_) | VolumeError::Driver(_))
        | EngineError::Image(
            ImageError::Reference(_)
            | ImageError::BadChange { .. }
            | ImageError::BadArchive(_)
            | ImageError::UnsafeEntry { .. }
            | ImageError::DigestMismatch { .. }
            | ImageError::Ambiguous { .. },
        ) => Status::invalid_argument(msg),
        EngineError::Conflict(_)
        | EngineError::Image(ImageError::InUse { .. } | ImageError::MultipleTags { .. })
        | EngineError::Volume(VolumeError::InUse { .. }) => Status::failed_precondition(msg),
        EngineError::StartFailed { exit_code, .. } => {
            let mut s = Status::new(Code::FailedPrecondition, msg);
            if let Ok(v) = exit_code.to_string().parse() {
                s.metadata_mut().insert(EXIT_CODE_METADATA, v);
            }
            s
        }
        _ => Status::internal(msg),
    }
}

fn json<T: serde::Serialize>(
    value: &T,
    warnings: Vec<String>,
) -> Result<Response<JsonReply>, Status> {
    let json = serde_json::to_string(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(JsonReply { json, warnings }))
}

/// Runs `f` with a sender and streams what it sends; an error it returns
/// becomes the stream's final status.
fn stream_from<T, F, Fut>(f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = Result<(), EngineError>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<T>(64);
    let (out_tx, out_rx) = mpsc::channel::<Result<T, Status>>(64);
    let fut = f(tx);
    tokio::spawn(async move {
        let forward_tx = out_tx.clone();
        let forward = async move {
            while let Some(item) = rx.recv().await {
                if forward_tx.send(Ok(item)).await.is_err() {
                    break;
                }
            }
        };
        let (result, ()) = tokio::join!(fut, forward);
        if let Err(e) = result {
            let _ = out_tx.send(Err(to_status(e))).await;
        }
    });
    Box::pin(ReceiverStream::new(out_rx))
}

/// A blocking `Read` over chunks received from an async task.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The tonic service.
pub struct EngineService {
    engine: Arc<Engine>,
}

impl EngineService {
    /// A tonic server for `engine`.
    pub fn server(engine: Arc<Engine>) -> EngineServer<EngineService> {
        EngineServer::new(EngineService { engine })
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    fn find(&self, key: &str) -> Result<Arc<super::container::Container>, Status> {
        self.engine.find(key).map_err(to_status)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Engine>) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(engine))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)
    }
}

#[tonic::async_trait]
impl EngineApi for EngineService {
    async fn version(&self, _: Request<Empty>) -> Result<Response<VersionReply>, Status> {
        Ok(Response::new(VersionReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: agent_common::ENGINE_API_VERSION.to_string(),
            cgroup_driver: format!("cgroupfs ({})", self.engine.cgroups.describe()),
            data_root: self.engine.root().display().to_string(),
            warnings: self.engine.warnings(),
        }))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerReply>, Status> {
        let spec: CreateContainer = serde_json::from_str(&req.into_inner().spec_json)
            .map_err(|e| Status::invalid_argument(format!("invalid container spec: {e}")))?;
        let (id, warnings) = self.blocking(move |e| e.create_container(spec)).await?;
        Ok(Response::new(CreateContainerReply { id, warnings }))
    }

    async fn start_container(&self, req: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        let c = self.find(&req.into_inner().container)?;
        self.engine.start(&c).await.map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn stop_container(&self, req: Request<StopRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        self.engine
            .stop(&c, r.timeout_seconds)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn restart_container(
        &self,
        req: Request<StopRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        self.engine
            .restart(&c, r.timeout_seconds)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn kill_container(&self, req: Request<KillRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        self.engine.kill(&c, &r.signal).await.map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        self.engine
            .remove(&c, r.force, r.volumes)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        let all = req.into_inner().all;
        let mut rows: Vec<_> = self
            .engine
            .all()
            .into_iter()
            .map(|c| c.record())
            .filter(|r| all || r.state.running)
            .collect();
        rows.sort_by(|a, b| b.created.cmp(&a.created));
        let summaries: Vec<_> = rows.iter().map(|r| r.summary()).collect();
        json(&summaries, self.engine.warnings())
    }

    async fn inspect_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<JsonReply>, Status> {
        let c = self.find(&req.into_inner().container)?;
        let inspect = c.record().inspect(self.engine.log_path(&c.id));
        json(&inspect, vec![])
    }

    async fn wait_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<WaitReply>, Status> {
        let c = self.find(&req.into_inner().container)?;
        let (status_code, error) = self.engine.wait(&c).await;
        Ok(Response::new(WaitReply { status_code, error }))
    }

    async fn rename_container(
        &self,
        req: Request<RenameRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        self.engine.rename(&c, &r.new_name).map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn pause_container(&self, req: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        let c = self.find(&req.into_inner().container)?;
        self.engine.set_paused(&c, true).await.map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn unpause_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<Empty>, Status> {
        let c = self.find(&req.into_inner().container)?;
        self.engine.set_paused(&c, false).await.map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    type AttachStream = BoxStream<OutputChunk>;
    async fn attach(
        &self,
        req: Request<Streaming<AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = req.into_inner();
        let first = input
            .message()
            .await?
            .and_then(|m| match m.kind {
                Some(attach_input::Kind::Start(s)) => Some(s),
                _ => None,
            })
            .ok_or_else(|| {
                Status::invalid_argument("the first attach message must name the container")
            })?;
        let c = self.find(&first.container)?;
        let engine = self.engine.clone();
        Ok(Response::new(stream_from(move |tx| async move {
            engine.attach(c, first.start, first.stdin, input, tx).await
        })))
    }

    type LogsStream = BoxStream<OutputChunk>;
    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        let engine = self.engine.clone();
        let (stdout, stderr) = if !r.stdout && !r.stderr {
            (true, true)
        } else {
            (r.stdout, r.stderr)
        };
        Ok(Response::new(stream_from(move |tx| async move {
            engine.logs(c, r.follow, r.tail, stdout, stderr, tx).await;
            Ok(())
        })))
    }

    type ExecStream = BoxStream<OutputChunk>;
    async fn exec(
        &self,
        req: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = req.into_inner();
        let start = input
            .message()
            .await?
            .and_then(|m| match m.kind {
                Some(exec_input::Kind::Start(s)) => Some(s),
                _ => None,
            })
            .ok_or_else(|| {
                Status::invalid_argument(
                    "the first exec message must name the container and command",
                )
            })?;
        let c = self.find(&start.container)?;
        let engine = self.engine.clone();
        Ok(Response::new(stream_from(move |tx| async move {
            engine.exec(c, start, input, tx).await
        })))
    }

    async fn top(&self, req: Request<ContainerRef>) -> Result<Response<JsonReply>, Status> {
        let c = self.find(&req.into_inner().container)?;
        let top = self.engine.top(&c).map_err(to_status)?;
        json(&top, vec![])
    }

    async fn diff(&self, req: Request<ContainerRef>) -> Result<Response<JsonReply>, Status> {
        let c = self.find(&req.into_inner().container)?;
        let changes = self.blocking(move |e| e.diff(&c)).await?;
        json(&changes, vec![])
    }

    type ExportStream = BoxStream<DataChunk>;
    async fn export(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let c = self.find(&req.into_inner().container)?;
        let engine = self.engine.clone();
        Ok(Response::new(stream_from(
            move |tx: mpsc::Sender<DataChunk>| async move {
                let (btx, mut brx) = mpsc::channel::<Vec<u8>>(4);
                let job = tokio::task::spawn_blocking(move || engine.export(&c, btx));
                while let Some(data) = brx.recv().await {
                    if tx.send(DataChunk { data }).await.is_err() {
                        break;
                    }
                }
                drop(brx);
                job.await
                    .map_err(|e| EngineError::Internal(e.to_string()))?
            },
        )))
    }

    async fn commit(&self, req: Request<CommitRequest>) -> Result<Response<ImageIdReply>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        let id = self
            .engine
            .commit(&c, &r.reference, &r.changes, &r.comment, &r.author, r.pause)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ImageIdReply { id }))
    }

    async fn prune_containers(&self, _: Request<Empty>) -> Result<Response<JsonReply>, Status> {
        let mut report = PruneReport::default();
        for c in self.engine.all() {
            let rec = c.record();
            if rec.state.running || rec.state.restarting {
                continue;
            }
            let size = crate::volume::dir_size(&self.engine.container_dir(&c.id).join("upper"));
            if self.engine.remove(&c, false, false).await.is_ok() {
                report.deleted.push(c.id.clone());
                report.space_reclaimed += size;
            }
        }
        json(&report, vec![])
    }

    async fn list_images(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        json(&self.engine.images.list(), self.engine.images.load_errors())
    }

    async fn inspect_image(&self, req: Request<ImageRef>) -> Result<Response<JsonReply>, Status> {
        let image = self
            .engine
            .images
            .resolve(&req.into_inner().image)
            .map_err(|e| to_status(e.into()))?;
        json(&self.engine.images.inspect(&image), vec![])
    }

    async fn image_history(&self, req: Request<ImageRef>) -> Result<Response<JsonReply>, Status> {
        let image = self
            .engine
            .images
            .resolve(&req.into_inner().image)
            .map_err(|e| to_status(e.into()))?;
        json(&self.engine.images.history(&image), vec![])
    }

    async fn tag_image(&self, req: Request<TagRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        self.engine
            .images
            .tag(&r.source, &r.target)
            .map_err(|e| to_status(e.into()))?;
        Ok(Response::new(Empty {}))
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        let r = req.into_inner();
        let lines = self
            .blocking(move |e| {
                let used = |id: &str| e.container_using_image(id);
                Ok(e.images.remove(&r.image, r.force, &used)?)
            })
            .await?;
        json(&lines, vec![])
    }

    async fn prune_images(
        &self,
        req: Request<PruneImagesRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        let all = req.into_inner().all;
        let report = self
            .blocking(move |e| {
                let used = |id: &str| e.container_using_image(id);
                Ok(e.images.prune(all, &used)?)
            })
            .await?;
        json(&report, vec![])
    }

    type LoadImagesStream = BoxStream<Progress>;
    async fn load_images(
        &self,
        req: Request<Streaming<DataChunk>>,
    ) -> Result<Response<Self::LoadImagesStream>, Status> {
        let mut input = req.into_inner();
        let engine = self.engine.clone();
        Ok(Response::new(stream_from(
            move |tx: mpsc::Sender<Progress>| async move {
                let (btx, brx) = mpsc::channel::<Vec<u8>>(16);
                let job = tokio::task::spawn_blocking(move || {
                    engine.images.load(ChannelReader {
                        rx: brx,
                        buf: Vec::new(),
                        pos: 0,
                    })
                });
                let mut received: u64 = 0;
                while let Ok(Some(chunk)) = input.message().await {
                    received += chunk.data.len() as u64;
                    if btx.send(chunk.data).await.is_err() {
                        break;
                    }
                    let _ = tx.try_send(Progress {
                        status: "Loading".into(),
                        current: received,
                        ..Default::default()
                    });
                }
                drop(btx);
                let lines = job
                    .await
                    .map_err(|e| EngineError::Internal(e.to_string()))??;
                for line in lines {
                    let _ = tx
                        .send(Progress {
                            status: line,
                            ..Default::default()
                        })
                        .await;
                }
                Ok(())
            },
        )))
    }

    async fn import_image(
        &self,
        req: Request<Streaming<ImportInput>>,
    ) -> Result<Response<ImageIdReply>, Status> {
        let mut input = req.into_inner();
        let start = input
            .message()
            .await?
            .and_then(|m| match m.kind {
                Some(import_input::Kind::Start(s)) => Some(s),
                _ => None,
            })
            .ok_or_else(|| {
                Status::invalid_argument("the first import message must carry the reference")
            })?;
        let (btx, brx) = mpsc::channel::<Vec<u8>>(16);
        let engine = self.engine.clone();
        let job = tokio::task::spawn_blocking(move || {
            let reference = (!start.reference.is_empty()).then_some(start.reference.as_str());
            engine.images.import(
                ChannelReader {
                    rx: brx,
                    buf: Vec::new(),
                    pos: 0,
                },
                reference,
                &start.changes,
                &start.message,
            )
        });
        while let Ok(Some(msg)) = input.message().await {
            if let Some(import_input::Kind::Data(d)) = msg.kind {
                if btx.send(d).await.is_err() {
                    break;
                }
            }
        }
        drop(btx);
        let id = job
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| to_status(e.into()))?;
        Ok(Response::new(ImageIdReply { id }))
    }

    type SaveImagesStream = BoxStream<DataChunk>;
    async fn save_images(
        &self,
        req: Request<SaveRequest>,
    ) -> Result<Response<Self::SaveImagesStream>, Status> {
        let images = req.into_inner().images;
        for i in &images {
            self.engine
                .images
                .resolve(i)
                .map_err(|e| to_status(e.into()))?;
        }
        let engine = self.engine.clone();
        Ok(Response::new(stream_from(
            move |tx: mpsc::Sender<DataChunk>| async move {
                let (btx, mut brx) = mpsc::channel::<Vec<u8>>(4);
                let job = tokio::task::spawn_blocking(move || {
                    let mut w = super::fsview::ChannelWriter::new(btx);
                    engine.images.save(&images, &mut w)?;
                    std::io::Write::flush(&mut w).map_err(EngineError::io("stream", "save"))
                });
                while let Some(data) = brx.recv().await {
                    if tx.send(DataChunk { data }).await.is_err() {
                        break;
                    }
                }
                drop(brx);
                job.await
                    .map_err(|e| EngineError::Internal(e.to_string()))?
            },
        )))
    }

    type PullImageStream = BoxStream<Progress>;
    async fn pull_image(
        &self,
        req: Request<PullRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let r = req.into_inner();
        let engine = self.engine.clone();
        Ok(Response::new(stream_from(move |tx| async move {
            engine.pull(r, tx).await
        })))
    }

    type PushImageStream = BoxStream<Progress>;
    async fn push_image(
        &self,
        req: Request<PushRequest>,
    ) -> Result<Response<Self::PushImageStream>, Status> {
        let r = req.into_inner();
        let engine = self.engine.clone();
        Ok(Response::new(stream_from(move |tx| async move {
            engine.push(r, tx).await
        })))
    }

    async fn check_registry_login(
        &self,
        req: Request<RegistryLoginRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.engine
            .check_login(req.into_inner())
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        let r = req.into_inner();
        let name = if r.name.is_empty() {
            super::random_id()
        } else {
            r.name
        };
        let (info, _) = self
            .engine
            .volumes
            .create(&name, r.labels.into_iter().collect(), &r.driver)
            .map_err(|e| to_status(e.into()))?;
        json(&info, vec![])
    }

    async fn list_volumes(&self, _: Request<Empty>) -> Result<Response<JsonReply>, Status> {
        let (list, warnings) = self.engine.volumes.list();
        json(&list, warnings)
    }

    async fn inspect_volume(&self, req: Request<VolumeRef>) -> Result<Response<JsonReply>, Status> {
        let info = self
            .engine
            .volumes
            .inspect(&req.into_inner().volume)
            .map_err(|e| to_status(e.into()))?;
        json(&info, vec![])
    }

    async fn remove_volume(
        &self,
        req: Request<RemoveVolumeRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let used = self.engine.container_using_volume(&r.volume);
        self.engine
            .volumes
            .remove(&r.volume, r.force, used)
            .map_err(|e| to_status(e.into()))?;
        Ok(Response::new(Empty {}))
    }

    async fn prune_volumes(&self, _: Request<Empty>) -> Result<Response<JsonReply>, Status> {
        let engine = self.engine.clone();
        let report = self
            .blocking(move |e| {
                let used = |name: &str| engine.container_using_volume(name);
                Ok(e.volumes.prune(false, &used))
            })
            .await?;
        json(&report, vec![])
    }

    async fn create_network(
        &self,
        req: Request<CreateNetworkRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        let r = req.into_inner();
        let net = self
            .engine
            .create_network(CreateRequest {
                name: r.name,
                driver: r.driver,
                subnet: r.subnet,
                gateway: r.gateway,
                internal: r.internal,
                labels: r.labels.into_iter().collect(),
            })
            .await
            .map_err(to_status)?;
        json(&net, vec![])
    }

    async fn list_networks(&self, _: Request<Empty>) -> Result<Response<JsonReply>, Status> {
        json(&self.engine.list_networks(), vec![])
    }

    async fn inspect_network(
        &self,
        req: Request<NetworkRef>,
    ) -> Result<Response<JsonReply>, Status> {
        let net = self
            .engine
            .inspect_network(&req.into_inner().network)
            .map_err(to_status)?;
        json(&net, vec![])
    }

    async fn remove_network(&self, req: Request<NetworkRef>) -> Result<Response<Empty>, Status> {
        self.engine
            .remove_network(&req.into_inner().network)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn connect_network(
        &self,
        req: Request<ConnectNetworkRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        self.engine
            .connect_network(&r.network, &c, &r.aliases, &r.ipv4_address)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn disconnect_network(
        &self,
        req: Request<DisconnectNetworkRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let c = self.find(&r.container)?;
        self.engine
            .disconnect_network(&r.network, &c)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn prune_networks(&self, _: Request<Empty>) -> Result<Response<JsonReply>, Status> {
        let report = self.engine.prune_networks().await.map_err(to_status)?;
        json(&report, vec![])
    }
}
