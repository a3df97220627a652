//! Benchmarks for Warren. `benches/micro.rs` holds criterion micro-benchmarks of the hot paths: frame
//! decoding and encoding, topic matching against many bindings, and the publish-route-enqueue path.
//! Run them with `cargo bench -p warren-benches`; numbers are machine-dependent, so compare runs made
//! side by side.
//!
//! The load benchmark against RabbitMQ is `benches/load.sh` with its client, the `warren-load` binary
//! (`benches/load/`); see `benches/README.md`.
