//! Server-streaming responses that hold no buffer between their messages.
//!
//! tonic encodes a stream's messages into one buffer per stream and hands each out as a
//! slice of it, so that buffer, as large as the largest message sent (rounded up to a
//! power of two), stays allocated for as long as the stream is open. A watch stream stays
//! open for days, and its first message is the node's whole assignment (about 10 KiB for
//! a worker, so a 16 KiB buffer): with 5,000 agents connected those buffers were 78 MiB of
//! the controller's memory (heaptrack, under `bench-storm`). Here each message is encoded
//! into an allocation of its own, which is freed as soon as HTTP/2 has sent it.
//!
//! [`NodeServiceRoutes`] answers the server streams of the node service (assignments, jobs,
//! downloads) this way and hands every other call to tonic's generated service unchanged. Request decoding, status
//! codes and trailers are the gRPC wire format as tonic writes it; the same layers
//! (timeouts, per-connection limits) wrap both.

use crate::service::{MAX_REQUEST_BYTES, Service};
use bytes::{BufMut, Bytes};
use http_body::Frame;
use pangaea_proto as pb;
use pb::node_service_server::{NodeService, NodeServiceServer};
use prost::Message;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::http;
use tonic::metadata::{GRPC_CONTENT_TYPE, MetadataMap};
use tonic::{Code, Status};

const WATCH: &str = "/pangaea.v1.NodeService/WatchAssignment";
const FETCH: &str = "/pangaea.v1.NodeService/FetchArtifact";
const JOBS: &str = "/pangaea.v1.NodeService/WatchJobs";

/// The node service: its server streams answered with [`OwnedFrames`], the rest by
/// tonic's generated service.
#[derive(Clone)]
pub struct NodeServiceRoutes {
    service: Service,
    generated: NodeServiceServer<Service>,
}

impl NodeServiceRoutes {
    /// Routes for `service`; `generated` is tonic's server over the same service.
    pub fn new(service: Service, generated: NodeServiceServer<Service>) -> Self {
        NodeServiceRoutes { service, generated }
    }
}

impl tonic::server::NamedService for NodeServiceRoutes {
    const NAME: &'static str = pb::node_service_server::SERVICE_NAME;
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

impl tower::Service<http::Request<Body>> for NodeServiceRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<Body>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        let service = self.service.clone();
        match req.uri().path() {
            WATCH => Box::pin(async move {
                Ok(server_stream(req, |r| async move { service.watch_assignment(r).await }).await)
            }),
            FETCH => Box::pin(async move {
                Ok(server_stream(req, |r| async move { service.fetch_artifact(r).await }).await)
            }),
            JOBS => Box::pin(async move {
                Ok(server_stream(req, |r| async move { service.watch_jobs(r).await }).await)
            }),
            _ => self.generated.call(req),
        }
    }
}

/// Decodes the one request message of a server-streaming call, runs `handler`, and answers
/// with its stream as [`OwnedFrames`], or with the handler's status.
async fn server_stream<Req, M, S, F, Fut>(
    req: http::Request<Body>,
    handler: F,
) -> http::Response<Body>
where
    Req: Message + Default + Send + 'static,
    M: Message + Send + 'static,
    S: Stream<Item = Result<M, Status>> + Unpin + Send + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let (parts, body) = req.into_parts();
    let decoder = tonic_prost::ProstCodec::<M, Req>::default().decoder();
    let mut messages = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
    let message = match messages.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return Status::internal("Missing request message.").into_http(),
        Err(s) => return s.into_http(),
    };
    // The decoder's buffer and the request body are not needed any more: not for the
    // life of the stream, and not while the handler runs.
    drop(messages);
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    );
    match handler(request).await {
        Ok(response) => {
            let (_, stream, _) = response.into_parts();
            let mut r = http::Response::new(Body::new(OwnedFrames::new(stream)));
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
            r
        }
        Err(s) => s.into_http(),
    }
}

/// A gRPC response body from a stream of messages: each message in a frame of its own
/// allocation (5-byte gRPC prefix, then the message), then the trailers with the status
/// (OK at the end of the stream, or the stream's error).
pub struct OwnedFrames<S> {
    stream: S,
    done: bool,
}

impl<S> OwnedFrames<S> {
    /// The body of `stream`.
    pub fn new(stream: S) -> Self {
        OwnedFrames {
            stream,
            done: false,
        }
    }
}

/// `message` with its gRPC prefix (uncompressed, length), in an allocation of its size.
fn frame(message: &impl Message) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > pangaea_proto::MAX_MESSAGE_BYTES {
        return Err(Status::new(
            Code::OutOfRange,
            format!(
                "message of {len} bytes is over the limit of {} bytes",
                pangaea_proto::MAX_MESSAGE_BYTES
            ),
        ));
    }
    let mut buf = Vec::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("encode: {e}")))?;
    Ok(Bytes::from(buf))
}

impl<S, M> http_body::Body for OwnedFrames<S>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
    M: Message,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let end = match ready!(Pin::new(&mut self.stream).poll_next(cx)) {
            Some(Ok(m)) => match frame(&m) {
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(s) => s,
            },
            Some(Err(s)) => s,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(s) = end.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(s)));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    async fn frames<S>(mut body: OwnedFrames<S>) -> Vec<Frame<Bytes>>
    where
        OwnedFrames<S>: http_body::Body<Data = Bytes, Error = Status> + Unpin,
    {
        let mut out = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            out.push(f.unwrap());
        }
        out
    }

    /// Hardening #7 (memory): each message of a server stream is a frame that owns its
    /// allocation alone (nothing of it stays with the stream once sent), in gRPC's wire
    /// format, and the stream's status ends it in the trailers.
    #[tokio::test]
    async fn each_message_owns_its_frame_and_the_status_ends_the_stream() {
        let a = pb::WatchRequest {
            node_name: "node-1".into(),
        };
        let b = pb::WatchRequest {
            node_name: "x".repeat(300),
        };
        let stream = tokio_stream::iter(vec![
            Ok(a.clone()),
            Ok(b.clone()),
            Err(Status::aborted("gone")),
        ]);
        let got = frames(OwnedFrames::new(stream)).await;
        assert_eq!(got.len(), 3);
        for (f, m) in got.iter().zip([&a, &b]) {
            let data = f.data_ref().expect("a data frame");
            assert_eq!(data[0], 0, "not compressed");
            assert_eq!(
                u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize,
                m.encoded_len()
            );
            assert_eq!(&pb::WatchRequest::decode(&data[5..]).unwrap(), m);
            assert!(
                data.is_unique(),
                "the frame is the only owner of its memory"
            );
        }
        let trailers = got[2].trailers_ref().expect("trailers");
        assert_eq!(trailers["grpc-status"], (Code::Aborted as i32).to_string());
        assert_eq!(trailers["grpc-message"], "gone");

        let done = frames(OwnedFrames::new(tokio_stream::iter(Vec::<
            Result<pb::WatchRequest, Status>,
        >::new())))
        .await;
        assert_eq!(done[0].trailers_ref().unwrap()["grpc-status"], "0");
    }
}
