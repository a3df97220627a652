//! Criterion micro-benchmarks of Warren's hot paths.

// Benchmark set-up failing is a bug in the benchmark: panicking is the right report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::FieldTable;
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use warren_broker::exchange::{AllowAll, Destination, ExchangeKind, ExchangeSpec, RouteInput};
use warren_broker::ids::ConnectionId;
use warren_broker::message::Message;
use warren_broker::queue::QueueSpec;
use warren_broker::time::Now;
use warren_broker::timers::RuntimeTimers;
use warren_broker::vhost::{Vhost, VhostLimits};
use warren_protocol::frame::{decode_frame, encode_body, encode_content_header};
use warren_protocol::method::{decode_method, encode_deliver, encode_method};

/// One publish as a client sends it: method, content header, one body frame.
fn publish_frames(body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let publish = basic::Publish {
        exchange: "amq.topic".into(),
        routing_key: "nova.compute.host1".into(),
        mandatory: false,
        immediate: false,
    };
    encode_method(
        &mut out,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(publish)),
    );
    encode_content_header(&mut out, 1, 60, body.len() as u64, &[0x10, 0x00, 2]);
    encode_body(&mut out, 1, body, 131_072);
    out
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frames");
    for size in [16usize, 1024] {
        let wire = publish_frames(&vec![b'x'; size]).freeze();
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::new("decode_publish", size),
            &wire,
            |b, wire| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    while let Some(f) = decode_frame(&mut buf, 131_072).unwrap() {
                        if f.kind == warren_protocol::frame::FrameKind::Method {
                            std::hint::black_box(decode_method(&f.payload).unwrap());
                        }
                    }
                })
            },
        );
        let body = vec![b'x'; size];
        g.bench_with_input(
            BenchmarkId::new("encode_delivery", size),
            &body,
            |b, body| {
                let mut out = BytesMut::with_capacity(4096);
                b.iter(|| {
                    out.clear();
                    encode_deliver(
                        &mut out,
                        1,
                        b"amq.ctag-abcdefghijklmnopqrstuv",
                        42,
                        false,
                        b"amq.topic",
                        b"nova.compute.host1",
                    );
                    encode_content_header(&mut out, 1, 60, body.len() as u64, &[0x10, 0x00, 2]);
                    encode_body(&mut out, 1, body, 131_072);
                    std::hint::black_box(out.len())
                })
            },
        );
    }
    g.finish();
}

/// A vhost with nothing stored and no paging: routing and queues alone.
fn memory_vhost() -> Arc<Vhost> {
    Vhost::new(
        "/",
        VhostLimits::default(),
        None,
        None,
        None,
        Arc::new(AllowAll),
        Arc::new(RuntimeTimers),
    )
}

fn topic_matching(c: &mut Criterion) {
    let vhost = memory_vhost();
    let x = vhost
        .declare_exchange(
            ExchangeSpec {
                name: "t".into(),
                kind: ExchangeKind::Topic,
                durable: false,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            },
            false,
        )
        .unwrap();
    for i in 0..10_000 {
        let spec = QueueSpec {
            name: format!("q{i}").into(),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
            declared_by: None,
            home: None,
            shard: None,
        };
        let q = vhost
            .declare_queue(spec, false, false, ConnectionId(1), || Ok(()), Now::read())
            .unwrap()
            .queue;
        let key = match i % 4 {
            0 => format!("svc{}.host{}.info", i % 100, i),
            1 => format!("svc{}.*.info", i % 100),
            2 => format!("svc{}.#", i % 100),
            _ => format!("*.host{i}.#"),
        };
        vhost
            .bind("t", Destination::Queue(q), &key, FieldTable::default())
            .unwrap();
    }
    let no_headers = || None;
    c.bench_function("topic_route_10k_bindings", |b| {
        b.iter(|| {
            let input = RouteInput {
                routing_key: "svc7.host507.info",
                headers: &no_headers,
                on_behalf_of: "nova",
                entry_authorised: true,
            };
            std::hint::black_box(vhost.route(&x, &input).len())
        })
    });
}

fn publish_path(c: &mut Criterion) {
    let vhost = memory_vhost();
    let spec = QueueSpec {
        name: "q".into(),
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: FieldTable::default(),
        declared_by: None,
        home: None,
        shard: None,
    };
    let q = vhost
        .declare_queue(spec, false, false, ConnectionId(1), || Ok(()), Now::read())
        .unwrap()
        .queue;
    vhost
        .bind(
            "amq.direct",
            Destination::Queue(q.clone()),
            "rk",
            FieldTable::default(),
        )
        .unwrap();
    let x = vhost.exchange("amq.direct").unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    let no_headers = || None;
    let publisher: Arc<str> = Arc::from("nova");
    c.bench_function("publish_route_enqueue_1k", |b| {
        b.iter(|| {
            let input = RouteInput {
                routing_key: "rk",
                headers: &no_headers,
                on_behalf_of: "nova",
                entry_authorised: true,
            };
            let m = Arc::new(Message {
                exchange: "amq.direct".into(),
                routing_key: "rk".into(),
                publisher: publisher.clone(),
                properties: Bytes::from_static(&[0, 0]),
                body: body.clone(),
                priority: 0,
                expiration_ms: None,
                charge: None,
                persistent: false,
                published_at_ms: 0,
                stored: Default::default(),
            });
            // The monotonic clock only, as the queue read it itself before it was given the time
            // (the publish time, 0 here, is the broker's reading and not part of this path).
            let now = Now {
                instant: std::time::Instant::now(),
                wall_ms: 0,
            };
            for queue in vhost.route(&x, &input) {
                queue.publish(m.clone(), None, now);
            }
            if q.message_count() > 100_000 {
                q.purge(now);
            }
        })
    });
}

/// A Prometheus scrape of a broker with 10,000 queues (issue 15: "a scrape over 10,000 queues
/// stays cheap"): both endpoints, with a few messages in every queue.
fn metrics_scrape(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let dir = std::env::temp_dir().join(format!("warren-bench-scrape-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    warren_broker::pki::DevPki::ensure_fresh(&dir.join("tls")).unwrap();
    let config = warren_broker::config::Config::dev(&dir, "127.0.0.1:0".parse().unwrap());
    let server = warren_broker::Server::new(Arc::new(config)).unwrap();
    let broker = server.broker.clone();
    let vhost = broker.vhost("/").unwrap();
    for i in 0..10_000 {
        let spec = QueueSpec {
            name: format!("q{i}").into(),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
            declared_by: None,
            home: None,
            shard: None,
        };
        let q = vhost
            .declare_queue(spec, false, false, ConnectionId(1), || Ok(()), Now::read())
            .unwrap()
            .queue;
        for _ in 0..3 {
            let m = Arc::new(Message {
                exchange: "".into(),
                routing_key: format!("q{i}"),
                publisher: Arc::from("nova"),
                properties: Bytes::from_static(&[0, 0]),
                body: Bytes::from_static(b"message"),
                priority: 0,
                expiration_ms: None,
                charge: None,
                persistent: false,
                published_at_ms: 0,
                stored: Default::default(),
            });
            q.publish(m, None, Now::read());
        }
    }
    let mut group = c.benchmark_group("metrics_scrape_10k_queues");
    for per_object in [false, true] {
        let name = if per_object {
            "per_object"
        } else {
            "aggregated"
        };
        group.bench_function(name, |b| {
            b.iter(|| warren_broker::metrics::scrape::render(&broker, per_object).len())
        });
    }
    group.finish();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(
    benches,
    frames,
    topic_matching,
    publish_path,
    metrics_scrape
);
criterion_main!(benches);
