//! The `--metrics` HTTP endpoint: `/metrics` in the Prometheus text (0.0.4) or OpenMetrics
//! format, chosen from the `Accept` header as Prometheus servers negotiate it, and `/healthz`
//! for liveness probes. hyper's HTTP/1 server on a thread of its own ("tracer-metrics", with
//! its own small tokio runtime), so scrapes and health checks are answered while the event loop
//! is busy draining the ring buffer; it reads the registry the event loop publishes into.
//!
//! Bounded against hostile clients: at most [`MAX_CONNECTIONS`] at once (more are closed at
//! once), request heads larger than [`MAX_HEAD_BYTES`] refused, headers read within
//! [`HEAD_TIMEOUT`], and every connection closed after [`CONNECTION_LIFETIME`]. Request bodies
//! are never read.

use std::{
    convert::Infallible,
    io,
    net::{SocketAddr, TcpListener as StdListener},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{prometheus_text, text},
    registry::Registry,
};
use tokio::{
    net::TcpListener,
    sync::{oneshot, Semaphore},
};

use crate::units::monotonic_ns;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest request head (request line and headers) read; a larger one gets 431 and a close.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection stays open, kept alive or not.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// `/healthz` fails when the event loop has not ticked for this long.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why `--metrics ADDR` could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "--metrics {addr}: the address is already in use (another tracer or exporter?); \
         pick a free port"
    )]
    /// Another socket already listens on the address (`EADDRINUSE`).
    InUse {
        /// The `--metrics` address.
        addr: SocketAddr,
    },
    #[error(
        "--metrics {addr}: not permitted to bind (ports below 1024 need root or \
         CAP_NET_BIND_SERVICE); pick a port above 1023"
    )]
    /// Binding was refused (`EACCES`: a port below 1024 without `CAP_NET_BIND_SERVICE`).
    Permission {
        /// The `--metrics` address.
        addr: SocketAddr,
    },
    #[error(
        "--metrics {addr}: the address is not on this machine; use a local address such as \
         127.0.0.1:9464"
    )]
    /// The IP address is not one of this machine's (`EADDRNOTAVAIL`).
    NotLocal {
        /// The `--metrics` address.
        addr: SocketAddr,
    },
    /// Any other failure to bind or set up the listening socket.
    #[error("--metrics {addr}: cannot listen")]
    Bind {
        /// The `--metrics` address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// A bound listening socket, made before the probe is loaded so that a bad address fails
/// fast, without root.
pub struct Listener {
    socket: StdListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let socket = StdListener::bind(addr).map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => MetricsError::InUse { addr },
            io::ErrorKind::PermissionDenied => MetricsError::Permission { addr },
            io::ErrorKind::AddrNotAvailable => MetricsError::NotLocal { addr },
            _ => MetricsError::Bind { addr, source },
        })?;
        let bound = |source| MetricsError::Bind { addr, source };
        socket.set_nonblocking(true).map_err(bound)?;
        let addr = socket.local_addr().map_err(bound)?;
        Ok(Self { socket, addr })
    }

    /// The address really bound (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `exposition` on a thread of its own, with its own tokio runtime, until the
    /// returned [`Serving`] is dropped. The caller's thread (the event loop) is not needed to
    /// answer: a busy or blocked caller does not hold up scrapes or `/healthz`.
    ///
    /// # Errors
    /// The thread or its runtime could not be started, or the socket could not be registered
    /// with it; reported here, before anything is served.
    pub fn serve(self, exposition: Arc<Exposition>) -> io::Result<Serving> {
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let Self { socket, .. } = self;
        let thread = std::thread::Builder::new()
            .name("tracer-metrics".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(socket) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        () = accept_loop(listener, exposition) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime here ends the connections still open.
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Serving {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(mpsc::RecvError) => {
                let _ = thread.join();
                Err(io::Error::other("the metrics thread ended before serving"))
            }
        }
    }
}

/// The endpoint being served on its thread. Dropping it stops the server: the listening
/// socket and every connection are closed and the thread ends (joined).
pub struct Serving {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::warn!("the metrics thread panicked");
            }
        }
    }
}

/// What the endpoint serves: the registry, refreshed with the tracer's own usage before each
/// scrape, and the event loop's heartbeat for `/healthz`.
pub struct Exposition {
    registry: Registry,
    refresh: Box<dyn Fn() + Send + Sync>,
    last_tick_ns: AtomicU64,
}

impl Exposition {
    /// `refresh` runs before each scrape (it updates the tracer's CPU and memory gauges).
    pub fn new(registry: Registry, refresh: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            registry,
            refresh,
            last_tick_ns: AtomicU64::new(monotonic_ns()),
        }
    }

    /// The event loop is alive: called on each of its ticks.
    pub fn heartbeat(&self, now_ns: u64) {
        self.last_tick_ns.store(now_ns, Ordering::Relaxed);
    }

    /// The registry in `format`.
    pub fn encode(&self, format: Format) -> String {
        (self.refresh)();
        let mut out = String::new();
        let written = match format {
            Format::OpenMetrics => text::encode(&mut out, &self.registry),
            Format::Text => prometheus_text::encode(&mut out, &self.registry),
        };
        // Writing into a String fails only if a metric's own encoder does, which ours do not.
        if let Err(e) = written {
            log::warn!("encoding the metrics failed: {e}");
        }
        out
    }

    fn stalled(&self, now_ns: u64) -> Option<Duration> {
        let since =
            Duration::from_nanos(now_ns.saturating_sub(self.last_tick_ns.load(Ordering::Relaxed)));
        (since > STALL_LIMIT).then_some(since)
    }
}

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Text,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` header value of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Picks the format from an `Accept` header as Prometheus client libraries do: the media
/// range with the highest `q` (the first one among equals) that is OpenMetrics (any version
/// up to 1.0.0) or text; the text format when nothing matches or there is no header.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        for param in parts {
            if let Some((key, value)) = param.split_once('=') {
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let format = match media.as_str() {
            "application/openmetrics-text"
                if version
                    .as_deref()
                    .is_none_or(|v| matches!(v, "1.0.0" | "0.0.1")) =>
            {
                Format::OpenMetrics
            }
            "text/plain" | "text/*" | "*/*" => Format::Text,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Text, |(_, f)| f)
}

async fn accept_loop(listener: TcpListener, exposition: Arc<Exposition>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning, then go on serving.
                log::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            log::debug!("metrics endpoint: {MAX_CONNECTIONS} connections open, closing {peer}");
            continue;
        };
        let exposition = Arc::clone(&exposition);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let exposition = Arc::clone(&exposition);
                async move { Ok::<_, Infallible>(respond(&req, &exposition)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Err(e)) => log::debug!("metrics endpoint: {peer}: {e}"),
                Err(_) => log::debug!("metrics endpoint: {peer}: closed after its lifetime"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

/// The response to one request.
pub fn respond<B>(req: &Request<B>, exposition: &Exposition) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    match path {
        "/metrics" | "/healthz" | "/" if !readable => {
            let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
            res.headers_mut()
                .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
            res
        }
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = negotiate(accept);
            let mut res = Response::new(Full::new(Bytes::from(exposition.encode(format))));
            res.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(format.content_type()),
            );
            res
        }
        "/healthz" => match exposition.stalled(monotonic_ns()) {
            None => plain(StatusCode::OK, "ok\n".into()),
            Some(since) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the event loop has not run for {since:?}\n"),
            ),
        },
        "/" => plain(
            StatusCode::OK,
            "tracer: /metrics (Prometheus text or OpenMetrics), /healthz (liveness)\n".into(),
        ),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_prometheus() {
        // What Prometheus 2.x/3.x sends by default.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        // Prometheus with scrape_classic / text only.
        assert_eq!(
            negotiate(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")),
            Format::Text
        );
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("application/json")), Format::Text);
        assert_eq!(
            negotiate(Some("text/plain;q=0.2, application/openmetrics-text;q=0.9")),
            Format::OpenMetrics
        );
        // A version we do not speak, or q=0, is not chosen.
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=2.0.0")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
    }

    fn exposition() -> Exposition {
        let mut registry = Registry::default();
        let c = prometheus_client::metrics::counter::Counter::<u64>::default();
        c.inc();
        registry.register("demo", "A demo counter", c);
        Exposition::new(registry, Box::new(|| {}))
    }

    fn get(path: &str, accept: Option<&str>) -> Response<Full<Bytes>> {
        let mut req = Request::builder().uri(path);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        respond(&req.body(()).unwrap(), &exposition())
    }

    fn body(res: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt as _;
        let bytes = match futures_lite(res.into_body().collect()) {
            Ok(collected) => collected.to_bytes(),
        };
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// `Full` bodies are ready at once: poll the future once, with a no-op waker.
    fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a Full body was not ready"),
        }
    }

    #[test]
    fn routes_and_formats() {
        let text = get("/metrics", None);
        assert_eq!(text.status(), StatusCode::OK);
        assert_eq!(
            text.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = body(text);
        assert!(
            text.contains("# TYPE demo_total counter\ndemo_total 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");

        let om = get("/metrics", Some("application/openmetrics-text"));
        assert_eq!(om.headers()[CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        let om = body(om);
        assert!(om.contains("# TYPE demo counter\ndemo_total 1\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");

        assert_eq!(get("/healthz", None).status(), StatusCode::OK);
        assert_eq!(get("/nope", None).status(), StatusCode::NOT_FOUND);
        let post = Request::builder()
            .method(Method::POST)
            .uri("/metrics")
            .body(())
            .unwrap();
        assert_eq!(
            respond(&post, &exposition()).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn health_fails_when_the_loop_stalls() {
        let e = exposition();
        let now = monotonic_ns();
        e.heartbeat(now);
        assert_eq!(e.stalled(now + 1_000_000_000), None);
        assert!(e.stalled(now + 11_000_000_000).is_some());
    }

    /// A plain HTTP/1.1 GET over a std socket, with a generous bound on the wait.
    fn scrape(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    #[test]
    fn serves_while_the_caller_is_blocked() {
        // The event loop's kind of runtime: one thread, which the test then blocks.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr();
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.block_on(async move {
            let serving = listener.serve(Arc::new(exposition())).unwrap();
            std::thread::spawn(move || {
                let _ = tx.send((scrape(addr, "/metrics"), scrape(addr, "/healthz")));
            });
            // Blocks the runtime's only thread until both answers are in: the server must not
            // need it.
            let (metrics, health) = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the scrapes were answered");
            let metrics = metrics.expect("the /metrics scrape");
            assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
            assert!(
                metrics.contains("\r\n\r\n# HELP demo_total A demo counter.\n"),
                "{metrics}"
            );
            assert!(metrics.contains("\ndemo_total 1\n"), "{metrics}");
            let health = health.expect("the /healthz check");
            assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
            assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
            // Stopping closes the listening socket and ends the thread.
            drop(serving);
        });
        let refused = std::net::TcpStream::connect(addr).expect_err("nothing listens any more");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn bind_errors_name_the_address() {
        let taken = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = taken.local_addr();
        let err = Listener::bind(addr).err().expect("second bind fails");
        assert!(matches!(err, MetricsError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        let err = Listener::bind("192.0.2.1:9464".parse().unwrap())
            .err()
            .expect("not a local address");
        assert!(matches!(err, MetricsError::NotLocal { .. }), "{err:?}");
    }
}
