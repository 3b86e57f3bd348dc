//! A real gRPC server and client (tonic), with the service written out as tonic's code
//! generator would write it, so no protoc is needed: `test.Echo` with a unary `Unary`, a
//! server-streaming `Count` (its last word, the status in the trailers, chosen by the
//! request), and a unary `Slow` that answers after two seconds.
// tonic's `Status` is large, and a stream of `Result<_, Status>` is what tonic takes.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::codegen::{http, Body, BoxFuture, BoxStream, Context, Poll, Service, StdError};
use tonic::{Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoMsg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, Default)]
pub struct Echo {
    pub calls: Arc<AtomicUsize>,
}

pub struct GrpcServer {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcServer {
    /// The Echo service over h2c on 127.0.0.1:0.
    pub async fn start() -> GrpcServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = Echo::default();
        let calls = Arc::clone(&echo.calls);
        let incoming =
            tonic::transport::server::TcpIncoming::from_listener(listener, true, None).unwrap();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(echo)
                .serve_with_incoming(incoming)
                .await;
        });
        GrpcServer { addr, calls, task }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct UnarySvc {
    slow: bool,
}

impl tonic::server::UnaryService<EchoMsg> for UnarySvc {
    type Response = EchoMsg;
    type Future = BoxFuture<Response<EchoMsg>, Status>;

    fn call(&mut self, request: Request<EchoMsg>) -> Self::Future {
        let slow = self.slow;
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let msg = request.into_inner();
            Ok(Response::new(EchoMsg {
                text: format!("echo: {}", msg.text),
                count: msg.count,
            }))
        })
    }
}

struct CountSvc;

impl tonic::server::ServerStreamingService<EchoMsg> for CountSvc {
    type Response = EchoMsg;
    type ResponseStream = BoxStream<EchoMsg>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<EchoMsg>) -> Self::Future {
        Box::pin(async move {
            let msg = request.into_inner();
            let mut items: Vec<Result<EchoMsg, Status>> = (0..msg.count)
                .map(|i| {
                    Ok(EchoMsg {
                        text: format!("item {i}"),
                        count: i,
                    })
                })
                .collect();
            if msg.text == "fail" {
                items.push(Err(Status::resource_exhausted("enough for today")));
            }
            let stream: Self::ResponseStream = Box::pin(tonic::codegen::tokio_stream::iter(items));
            Ok(Response::new(stream))
        })
    }
}

impl<B> Service<http::Request<B>> for Echo
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let codec = tonic::codec::ProstCodec::<EchoMsg, EchoMsg>::default();
        match req.uri().path() {
            "/test.Echo/Unary" | "/test.Echo/Slow" => {
                let slow = req.uri().path().ends_with("Slow");
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok(grpc.unary(UnarySvc { slow }, req).await)
                })
            }
            "/test.Echo/Count" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.server_streaming(CountSvc, req).await)
            }),
            _ => Box::pin(async move {
                Ok(http::Response::builder()
                    .status(200)
                    .header("grpc-status", "12")
                    .header("content-type", "application/grpc")
                    .body(tonic::codegen::empty_body())
                    .unwrap())
            }),
        }
    }
}

/// A client channel to `addr` over h2c.
pub async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("a gRPC channel to the gateway")
}

/// Call unary `method` of test.Echo with `text`, with `metadata` and an optional deadline
/// (sent as `grpc-timeout`).
pub async fn unary(
    channel: &tonic::transport::Channel,
    method: &'static str,
    text: &str,
    metadata: &[(&'static str, &str)],
    timeout: Option<Duration>,
) -> Result<Response<EchoMsg>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let mut request = Request::new(EchoMsg {
        text: text.to_string(),
        count: 0,
    });
    for (name, value) in metadata {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("metadata value"));
    }
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(request, path, tonic::codec::ProstCodec::default())
        .await
}

/// Call server-streaming Count: `count` messages, then the trailers' status (`fail` asks
/// for RESOURCE_EXHAUSTED).
pub async fn count(
    channel: &tonic::transport::Channel,
    count: u32,
    text: &str,
) -> (Vec<EchoMsg>, Result<(), Status>) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let request = Request::new(EchoMsg {
        text: text.to_string(),
        count,
    });
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Count");
    let mut stream = match grpc
        .server_streaming(request, path, tonic::codec::ProstCodec::default())
        .await
    {
        Ok(resp) => resp.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut items = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, Ok(())),
            Err(status) => return (items, Err(status)),
        }
    }
}
