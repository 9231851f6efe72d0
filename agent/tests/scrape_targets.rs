//! Scrapes over real sockets against a small in-test HTTP server: content negotiation, each
//! body framing, and every way a scrape fails (`up` 0), bounded in bytes and time.

use std::net::SocketAddr;
use std::time::Duration;

use logrelay_agent::metrics::AgentMetrics;
use logrelay_agent::scrape::encode::{NameFilter, ResultEncoder};
use logrelay_agent::scrape::exposition::{self, MetricType};
use logrelay_agent::scrape::http::{HttpError, Scheme, Url};
use logrelay_agent::scrape::target::ScrapeAuth;
use logrelay_agent::scrape::{Scrape, ScrapeError, TargetSpec, encode_scrape, scrape_once};
use logrelay_wire::batch::{self, LineFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Serves one canned response per connection; reports each request head.
struct Server {
    addr: SocketAddr,
    requests: mpsc::Receiver<String>,
}

impl Server {
    /// Answers every connection with `response` (written in `pieces` writes).
    async fn start(response: Vec<u8>, pieces: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (tx, response) = (tx.clone(), response.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned()).await;
                    for piece in response.chunks(response.len().div_ceil(pieces.max(1)).max(1)) {
                        if conn.write_all(piece).await.is_err() {
                            return;
                        }
                        conn.flush().await.unwrap();
                    }
                });
            }
        });
        Self { addr, requests }
    }

    fn spec(&self) -> TargetSpec {
        TargetSpec {
            url: format!("http://{}/metrics", self.addr).parse().unwrap(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            sample_limit: 0,
            max_body_bytes: 1 << 20,
            auth: ScrapeAuth::default(),
        }
    }
}

const TEXT: &str = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
    http_requests_total{code=\"200\",path=\"/a}b\"} 1027\nhttp_requests_total{code=\"500\",path=\"/\"} 3\n";

const OPENMETRICS: &str = "# TYPE build info\nbuild_info{version=\"1.2\"} 1\n\
    # TYPE rpc_seconds histogram\nrpc_seconds_bucket{le=\"0.5\"} 3 # {trace_id=\"abc\"} 0.2 1.5e9\n\
    rpc_seconds_bucket{le=\"+Inf\"} 4\nrpc_seconds_sum 1.25\nrpc_seconds_count 4\n# EOF\n";

fn response(content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn records(scrape: &Scrape) -> Vec<(String, bool)> {
    let mut enc = ResultEncoder::new(1, 1, 0, 0, 64 * 1024);
    encode_scrape(1_000, scrape, &mut enc, &NameFilter::default());
    let (batches, _) = enc.finish();
    batches
        .iter()
        .flat_map(|b| {
            batch::lines(b)
                .unwrap()
                .1
                .into_iter()
                .map(|l| {
                    (
                        String::from_utf8_lossy(l.message).into_owned(),
                        l.flags.has(LineFlags::SYSTEM),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn text_format_with_content_length() {
    let mut server = Server::start(response("text/plain; version=0.0.4", TEXT), 3).await;
    let metrics = AgentMetrics::new();
    let s = scrape_once(&server.spec(), &metrics).await;
    let families = s.result.as_ref().unwrap();
    assert_eq!(families[0].kind, MetricType::Counter);
    assert_eq!(families[0].samples[0].labels[1].1, "/a}b");
    assert_eq!(s.samples_scraped, 2);
    let request = server.requests.recv().await.unwrap();
    assert!(
        request.starts_with("GET /metrics HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("Accept: {}\r\n", exposition::ACCEPT_HEADER)),
        "Prometheus' Accept header: {request}"
    );
    assert!(request.contains("X-Prometheus-Scrape-Timeout-Seconds: 5\r\n"));
    let recs = records(&s);
    assert_eq!(recs[0], ("up 1\n".into(), true));
    assert!(recs[1].0.starts_with("scrape_duration_seconds "));
    assert_eq!(recs[2], ("scrape_samples_scraped 2\n".into(), true));
    assert_eq!(
        recs[3],
        ("# TYPE http_requests_total counter\n".into(), false)
    );
    assert_eq!(
        recs[4],
        (
            "http_requests_total{code=\"200\",path=\"/a}b\"} 1027\n".into(),
            false
        )
    );
    assert_eq!(
        (metrics.scrapes.get(), metrics.scrape_failures.get()),
        (1, 0)
    );
    assert_eq!(metrics.scrape_bytes.get(), TEXT.len() as u64);
}

#[tokio::test]
async fn openmetrics_is_chosen_by_content_type_and_chunked_bodies_are_read() {
    let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in OPENMETRICS.as_bytes().chunks(37) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let server = Server::start(raw, 7).await;
    let s = scrape_once(&server.spec(), &AgentMetrics::new()).await;
    let families = s.result.unwrap();
    let names: Vec<_> = families.iter().map(|f| (f.name.as_str(), f.kind)).collect();
    assert_eq!(
        names,
        [
            ("build", MetricType::Info),
            ("rpc_seconds", MetricType::Histogram)
        ]
    );
    let ex = families[1].samples[0].exemplar.as_ref().unwrap();
    assert_eq!(ex.labels[0].1, "abc");
}

#[tokio::test]
async fn a_body_until_close_is_read() {
    let raw = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{TEXT}").into_bytes();
    let server = Server::start(raw, 2).await;
    let s = scrape_once(&server.spec(), &AgentMetrics::new()).await;
    assert_eq!(s.samples_scraped, 2);
}

async fn failed(response: Vec<u8>, tweak: impl FnOnce(&mut TargetSpec)) -> ScrapeError {
    let server = Server::start(response, 1).await;
    let mut spec = server.spec();
    tweak(&mut spec);
    let metrics = AgentMetrics::new();
    let s = scrape_once(&spec, &metrics).await;
    assert_eq!(metrics.scrape_failures.get(), 1);
    let recs = records(&s);
    assert_eq!(recs[0], ("up 0\n".into(), true));
    assert!(
        recs.last().unwrap().0.starts_with("# scrape_error "),
        "{recs:?}"
    );
    s.result.unwrap_err()
}

#[tokio::test]
async fn failures_give_up_zero_and_say_why() {
    let e = failed(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec(),
        |_| {},
    )
    .await;
    assert!(
        matches!(e, ScrapeError::Http(HttpError::Status(500))),
        "{e}"
    );

    let e = failed(response("text/plain", TEXT), |s| s.max_body_bytes = 10).await;
    assert!(
        matches!(e, ScrapeError::Http(HttpError::BodyTooLarge(10))),
        "{e}"
    );

    let e = failed(response("text/plain", TEXT), |s| s.sample_limit = 1).await;
    assert!(
        matches!(
            e,
            ScrapeError::Parse(exposition::ParseError::SampleLimitExceeded { scraped: 2, .. })
        ),
        "{e}"
    );

    let e = failed(response("text/plain", "bad{ 1\n"), |_| {}).await;
    assert!(matches!(e, ScrapeError::Parse(_)), "{e}");

    let e = failed(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nxyz".to_vec(),
        |_| {},
    )
    .await;
    assert!(
        matches!(e, ScrapeError::Http(HttpError::Encoding(_))),
        "{e}"
    );

    let e = failed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
        |_| {},
    )
    .await;
    assert!(matches!(e, ScrapeError::Http(HttpError::Truncated)), "{e}");
}

#[tokio::test]
async fn a_silent_target_times_out_and_a_closed_port_is_refused() {
    // Accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let spec = TargetSpec {
        url: format!("http://{addr}/metrics").parse().unwrap(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(200),
        sample_limit: 0,
        max_body_bytes: 1024,
        auth: ScrapeAuth::default(),
    };
    let s = scrape_once(&spec, &AgentMetrics::new()).await;
    assert!(matches!(
        s.result,
        Err(ScrapeError::Http(HttpError::Timeout(_)))
    ));
    assert!(s.duration >= Duration::from_millis(200));

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let spec = TargetSpec {
        url: Url {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port: closed.port(),
            path: "/metrics".into(),
        },
        ..spec
    };
    let s = scrape_once(&spec, &AgentMetrics::new()).await;
    assert!(matches!(
        s.result,
        Err(ScrapeError::Http(HttpError::Connect(_)))
    ));
}
