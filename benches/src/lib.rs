//! Benchmarks for Warren. `benches/micro.rs` holds criterion micro-benchmarks of the hot paths: frame
//! decoding and encoding, topic matching against many bindings, and the publish-route-enqueue path.
//! Run them with `cargo bench -p warren-benches`; numbers are machine-dependent, so compare runs made
//! side by side.
