//! The floor: what loopback TLS costs without any broker (warren-load's own echo server).

use super::*;

//
// What the machine itself costs: the same client, TLS settings and cores, against
// `warren-load echo-server` (benches/load/echo.rs) instead of a broker. A message is a u32 length
// (big-endian) and its body; the server writes back every read unchanged.

/// Largest echo frame the client accepts (anything bigger means the stream is out of step).
pub(super) const ECHO_MAX: usize = 1 << 20;

/// Appends one echo frame.
pub(super) fn put_echo(out: &mut BytesMut, body: &[u8]) {
    out.put_u32(body.len() as u32);
    out.put_slice(body);
}

/// The next complete echo frame's body, if the buffer holds one.
pub(super) fn take_echo(rbuf: &mut BytesMut) -> Result<Option<Bytes>> {
    if rbuf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([rbuf[0], rbuf[1], rbuf[2], rbuf[3]]) as usize;
    if len > ECHO_MAX {
        bail!("echo frame of {len} octets: the stream is out of step");
    }
    if rbuf.len() < 4 + len {
        return Ok(None);
    }
    rbuf.advance(4);
    Ok(Some(rbuf.split_to(len).freeze()))
}

/// `floor-rpc`: one TLS connection to the echo server, one message of `size` octets outstanding,
/// ping-pong as the `rpc-1x1` caller does (write, then read until the answer is in). Counts round
/// trips; CPU is the echo server's; latency is the round trip. A call through a broker is two such
/// hops (caller → broker → server, server → broker → caller).
pub async fn floor_rpc(ctx: &Ctx, size: usize) -> Result<Outcome> {
    let counters = Arc::new(Counters::default());
    let (stop_tx, mut stop) = watch::channel(false);
    let mut stream = ctx.target.connect_tls().await?;
    let mut payload = body(size);
    let c = counters.clone();
    let task = tokio::spawn(async move {
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut out = BytesMut::with_capacity(size + 4);
        let mut samples = Vec::new();
        let r: Result<()> = async {
            let mut n = 0u64;
            'calls: while !*stop.borrow() {
                n += 1;
                if payload.len() >= 8 {
                    payload[..8].copy_from_slice(&n.to_be_bytes());
                }
                put_echo(&mut out, &payload);
                let t0 = Instant::now();
                stream.write_all(&out).await?;
                stream.flush().await?;
                out.clear();
                loop {
                    if let Some(echo) = take_echo(&mut rbuf)? {
                        if echo.len() != payload.len()
                            || (echo.len() >= 8 && echo[..8] != payload[..8])
                        {
                            bail!("echo {n} came back altered");
                        }
                        c.calls.fetch_add(1, Relaxed);
                        if c.recording.load(Relaxed) {
                            samples.push(t0.elapsed().as_nanos() as u64);
                        }
                        continue 'calls;
                    }
                    tokio::select! {
                        biased;
                        _ = stop.changed() => break 'calls,
                        r = client::fill(&mut stream, &mut rbuf) => r?,
                    }
                }
            }
            Ok(())
        }
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        match r {
            Ok(()) => Ok(TaskOut {
                samples,
                ..TaskOut::default()
            }),
            Err(e) => {
                c.error(&e);
                Err(e)
            }
        }
    });
    let (a, b) = window(ctx, &counters, |c| c.calls.load(Relaxed)).await?;
    let _ = stop_tx.send(true);
    let samples = finish(vec![task]).await;
    let mut out = outcome(ctx, "floor-rpc", size, "round-trip", &a, &b);
    percentiles(&mut out, samples.latency);
    Ok(out)
}

/// `floor-latency`: the `latency` publisher's pacing and bursts (5,000 msg/s, see [`Pacer`]), each
/// body stamped in its first 8 octets, over one TLS connection to the echo server; a reader task on
/// the same connection takes a sample per echoed message (send → echo read).
pub async fn floor_latency(ctx: &Ctx, size: usize) -> Result<Outcome> {
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let stream = ctx.target.connect_tls().await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let rc = counters.clone();
    let mut rstop = stop.clone();
    let read_task = tokio::spawn(async move {
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut samples = Vec::new();
        let r: Result<()> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = rstop.changed() => break,
                    r = client::fill(&mut rd, &mut rbuf) => r?,
                }
                let mut n = 0;
                while let Some(echo) = take_echo(&mut rbuf)? {
                    n += 1;
                    if echo.len() >= 8 && rc.recording.load(Relaxed) {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&echo[..8]);
                        samples.push(now_ns().saturating_sub(u64::from_be_bytes(ts)));
                    }
                }
                if n > 0 {
                    rc.delivered.fetch_add(n, Relaxed);
                }
            }
            Ok(())
        }
        .await;
        rc.noted(r).map(|()| (rd, samples))
    });
    let pc = counters.clone();
    let mut pstop = stop;
    let mut body = body(size.max(8));
    let task = tokio::spawn(async move {
        let r: Result<()> = async {
            let mut buf = BytesMut::with_capacity(BURST_BYTES + 4096);
            let pacer = Pacer::new(LATENCY_RATE);
            loop {
                if *pstop.borrow() {
                    break;
                }
                let published = pc.published.load(Relaxed);
                let due = pacer.due(published);
                if due == 0 {
                    if !Pacer::pause(&mut pstop).await {
                        break;
                    }
                    continue;
                }
                let mut n = 0u64;
                while n < due && buf.len() < BURST_BYTES {
                    body[..8].copy_from_slice(&now_ns().to_be_bytes());
                    put_echo(&mut buf, &body);
                    n += 1;
                }
                wr.write_all(&buf).await?;
                wr.flush().await?;
                buf.clear();
                pc.published.fetch_add(n, Relaxed);
                tokio::task::yield_now().await;
            }
            Ok(())
        }
        .await;
        pc.noted(r)?;
        let (rd, samples) = read_task.await??;
        let mut stream = rd.unsplit(wr);
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        Ok(TaskOut {
            samples,
            ..TaskOut::default()
        })
    });
    let (a, b) = window(ctx, &counters, |c| c.delivered.load(Relaxed)).await?;
    let _ = stop_tx.send(true);
    let samples = finish(vec![task]).await;
    let mut out = outcome(ctx, "floor-latency", size, "msg", &a, &b);
    percentiles(&mut out, samples.latency);
    out.extra
        .insert("published".into(), json!(counters.published.load(Relaxed)));
    out.extra
        .insert("delivered".into(), json!(counters.delivered.load(Relaxed)));
    out.extra.insert("rate_target".into(), json!(LATENCY_RATE));
    Ok(out)
}
