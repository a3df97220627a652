//! Publishers: a spec, confirms tracked within a window, paced or flat out.

use super::*;

#[derive(Clone)]
pub(super) struct PubSpec {
    pub(super) exchange: String,
    pub(super) keys: Vec<String>,
    pub(super) props: Vec<u8>,
    pub(super) body: Vec<u8>,
    pub(super) confirms: bool,
    /// Unconfirmed publishes allowed at once (with `confirms`).
    pub(super) window: u64,
    /// Stay at most this many messages ahead of the consumers (deliveries / fanout).
    pub(super) inflight_cap: Option<u64>,
    pub(super) fanout: u64,
    /// Paced publishing (msg/s), timestamps in the first 8 body octets.
    pub(super) rate: Option<f64>,
    pub(super) max_msgs: Option<u64>,
}

/// Tracks which publish sequence numbers are confirmed (acks may be single or multiple) and when each
/// was sent. Shared by a publisher's writer (`sent`) and reader (`settle`) tasks.
pub(super) struct ConfirmTracker {
    /// Sequence number of `pending[0]` (the channel's first publish is 1).
    pub(super) base: u64,
    /// Per sequence number from `base` on: when it was sent (`now_ns`), and whether it is settled.
    pub(super) pending: VecDeque<(u64, bool)>,
}

impl ConfirmTracker {
    pub(super) fn new() -> Self {
        ConfirmTracker {
            base: 1,
            pending: VecDeque::with_capacity(2 * CONFIRM_WINDOW as usize),
        }
    }

    /// The next `n` sequence numbers are being written now (`at`).
    pub(super) fn sent(&mut self, n: u64, at: u64) {
        self.pending
            .extend(std::iter::repeat_n((at, false), n as usize));
    }

    /// Marks `tag` (or, with `multiple`, every tag up to it) settled; returns how many were newly
    /// settled. With `sample` (the time the ack was read), each of them adds its latency.
    pub(super) fn settle(
        &mut self,
        tag: u64,
        multiple: bool,
        mut sample: Option<(u64, &mut Micros)>,
    ) -> Result<u64> {
        if tag < self.base {
            return Ok(0);
        }
        let idx = (tag - self.base) as usize;
        if idx >= self.pending.len() {
            bail!("broker confirmed sequence number {tag}, which was not published");
        }
        let from = if multiple { 0 } else { idx };
        let mut n = 0;
        for (sent, settled) in self.pending.range_mut(from..=idx) {
            if !*settled {
                *settled = true;
                n += 1;
                if let Some((now, samples)) = sample.as_mut() {
                    samples.push_ns(now.saturating_sub(*sent));
                }
            }
        }
        while self.pending.front().is_some_and(|p| p.1) {
            self.pending.pop_front();
            self.base += 1;
        }
        Ok(n)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a publisher on its own connection; its reader half runs as a second task (confirms,
/// heartbeats, a close from the broker).
pub(super) async fn start_publisher(
    ctx: &Ctx,
    spec: PubSpec,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    done: Arc<Notify>,
) -> Result<JoinHandle<Result<TaskOut>>> {
    let mut conn = channel(ctx).await?;
    if spec.confirms {
        conn.confirm_select(1).await?;
    }
    let (mut reader, mut writer) = conn.split();
    let rc = counters.clone();
    let mut rstop = stop.clone();
    let confirms = spec.confirms;
    let tracker = Arc::new(Mutex::new(ConfirmTracker::new()));
    let rtracker = tracker.clone();
    let read_task = tokio::spawn(async move {
        // Confirm latency: each publish's send time to the time the read holding its basic.ack
        // returned; every message a multiple ack settles is one sample. Nacks give no sample.
        let mut confirm_samples = Micros::default();
        let r: Result<()> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = rstop.changed() => break,
                    r = reader.fill() => r?,
                }
                let now = now_ns();
                let record = confirms && rc.recording.load(Relaxed);
                while let Some(ev) = reader.try_event()? {
                    match ev {
                        Event::Ack { tag, multiple } if confirms => {
                            let sample = record.then_some((now, &mut confirm_samples));
                            let n = lock(&rtracker).settle(tag, multiple, sample)?;
                            rc.confirmed.fetch_add(n, Relaxed);
                            rc.progress.notify_one();
                        }
                        Event::Nack { tag, multiple } if confirms => {
                            let n = lock(&rtracker).settle(tag, multiple, None)?;
                            rc.confirmed.fetch_add(n, Relaxed);
                            rc.nacked.fetch_add(n, Relaxed);
                            rc.progress.notify_one();
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        .await;
        rc.noted(r).map(|()| (reader, confirm_samples))
    });
    let pc = counters;
    let mut pstop = stop;
    let task = tokio::spawn(async move {
        let r: Result<()> = async {
            let mut buf = BytesMut::with_capacity(BURST_BYTES + 4096);
            let pacer = spec.rate.map(Pacer::new);
            let mut key = 0usize;
            let mut body = spec.body.clone();
            loop {
                if *pstop.borrow() {
                    break;
                }
                let published = pc.published.load(Relaxed);
                let mut allowed = u64::MAX;
                if let Some(max) = spec.max_msgs {
                    if published >= max {
                        done.notify_one();
                        break;
                    }
                    allowed = max - published;
                }
                if spec.confirms {
                    let outstanding = published - pc.confirmed.load(Relaxed);
                    allowed = allowed.min(spec.window.saturating_sub(outstanding));
                }
                if let Some(cap) = spec.inflight_cap {
                    let ahead =
                        published.saturating_sub(pc.delivered.load(Relaxed) / spec.fanout.max(1));
                    allowed = allowed.min(cap.saturating_sub(ahead));
                }
                if let Some(pacer) = &pacer {
                    let due = pacer.due(published);
                    if due == 0 {
                        if !Pacer::pause(&mut pstop).await {
                            break;
                        }
                        continue;
                    }
                    allowed = allowed.min(due);
                }
                if allowed == 0 {
                    tokio::select! {
                        _ = pstop.changed() => break,
                        _ = pc.progress.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
                let mut n = 0u64;
                while n < allowed && buf.len() < BURST_BYTES {
                    if spec.rate.is_some() && body.len() >= 8 {
                        body[..8].copy_from_slice(&now_ns().to_be_bytes());
                    }
                    encode_publish(
                        &mut buf,
                        writer.frame_max,
                        1,
                        (&spec.exchange, &spec.keys[key], false),
                        &spec.props,
                        &body,
                    );
                    key = (key + 1) % spec.keys.len();
                    n += 1;
                }
                if spec.confirms {
                    // Registered before the write, so no ack can arrive for an unknown number.
                    lock(&tracker).sent(n, now_ns());
                }
                writer.write(&buf).await?;
                buf.clear();
                pc.published.fetch_add(n, Relaxed);
                tokio::task::yield_now().await;
            }
            Ok(())
        }
        .await;
        pc.noted(r)?;
        // The reader stops on the stop signal; the connection is then closed whole.
        let (reader, confirm_samples) = read_task.await??;
        Ok(TaskOut {
            conn: Some(Conn::unsplit(reader, writer)),
            samples: Vec::new(),
            confirm_samples,
        })
    });
    Ok(task)
}

/// Fixed-rate pacing, shared by the `latency` publisher and the `floor-latency` sender: messages are
/// due at `rate` per second since the sender started; when none is due the sender sleeps 500 µs
/// (tokio's timer rounds that up to its 1 ms tick), so in practice everything that fell due during a
/// tick goes out as one burst (one write, one TLS record) — about 5 messages per tick at 5,000 msg/s.
pub(super) struct Pacer {
    pub(super) start: Instant,
    pub(super) rate: f64,
}

impl Pacer {
    pub(super) fn new(rate: f64) -> Self {
        Pacer {
            start: Instant::now(),
            rate,
        }
    }

    /// How many messages are due now, `sent` having been sent so far.
    pub(super) fn due(&self, sent: u64) -> u64 {
        ((self.start.elapsed().as_secs_f64() * self.rate) as u64).saturating_sub(sent)
    }

    /// Nothing due: waits for the next tick; false when stopped.
    pub(super) async fn pause(stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = stop.changed() => false,
            _ = tokio::time::sleep(Duration::from_micros(500)) => true,
        }
    }
}
