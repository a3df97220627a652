//! Node links: one mutually authenticated TLS connection per pair of nodes, dialled by the node with
//! the lower id (from its own node-link address, so that firewall rules can tell node pairs apart)
//! and redialled with backoff while the cluster runs. A link is admitted only after TLS has verified
//! the peer's chain (node CA, CRLs, validity; the dialled address against its SANs), the certificate
//! has been found to be a node's whose name is a member's ([`identity`]), and the hellos agree on
//! the cluster and the node ([`wire`]). Nothing a peer sends is read before that.
//!
//! The members are the configured peers until the cluster's membership is known, then the metadata
//! group's membership ([`Links::set_members`]): a node added with `brokerctl cluster add_node` is
//! dialled and admitted from then on, and a removed one is cut off and refused.
//!
//! Every link has a bounded send queue: a peer that stops reading (paused, partitioned, slow) fills
//! it, and the link is dropped instead of ever blocking the sender (LavinMQ #884 in HA.md §3). Pings
//! every second measure the round trip and find dead links; a link silent for five seconds is
//! dropped and redialled.

pub(crate) mod identity;
pub(crate) mod tls;
pub(crate) mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::cluster::config::{ClusterConfig, PeerConfig};
use crate::crl::CrlNumbers;
use tls::LinkTls;
use wire::{Frame, Hello, HELLO_LEN};

/// Time allowed for TCP connect, TLS and the hellos.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// A link that has carried nothing for this long is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// Frames waiting to be written to one peer; a full queue drops the link.
const SEND_QUEUE: usize = 4096;
/// Node-link handshakes (TLS and hellos) in progress at once; more are dropped unread, so no one
/// can hold this node's file descriptors with half-open connections.
const MAX_HANDSHAKES: usize = 64;
/// Peer requests one link may have in progress; beyond it a request is answered "busy". A memory
/// bound against a runaway peer: a healthy one keeps far fewer (its forwarded publishes are capped
/// at 512 in flight, a subscription's settles at its window of 128).
const MAX_REQUESTS_PER_LINK: usize = 4096;
const REDIAL_MIN: Duration = Duration::from_millis(200);
const REDIAL_MAX: Duration = Duration::from_secs(5);

/// Why a link could not be set up or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("refused: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn refused(why: impl Into<String>) -> LinkError {
    LinkError::Refused(why.into())
}

/// One peer's link as `brokerctl cluster status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerStatus {
    pub id: u64,
    pub name: String,
    pub addr: SocketAddr,
    pub connected: bool,
    /// The peer's current run (changes when it restarts).
    pub incarnation: Option<u64>,
    /// The last measured ping round trip, in microseconds.
    pub rtt_us: Option<u64>,
    /// Why the last link to it ended or could not be made.
    pub last_error: Option<String>,
}

/// A live link: its send queue, and the means to close it when a newer link replaces it.
struct LinkHandle {
    serial: u64,
    // Held, not used: dropping it ends the link's session.
    _close: oneshot::Sender<()>,
    tx: mpsc::Sender<Frame>,
    /// The peer's certificate chain as the handshake presented it (checked again on a reload).
    chain: Vec<CertificateDer<'static>>,
}

/// The certificate chain a TLS session's peer presented.
fn peer_chain(certificates: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    certificates
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

/// What serves the requests peers send (the Raft groups): `group` and `kind` say which call it is.
pub trait RequestHandler: Send + Sync + 'static {
    fn handle(
        &self,
        from: u64,
        group: u32,
        kind: u8,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, String>>;
}

/// A request on its way to a peer.
pub struct StartedCall {
    links: Arc<Links>,
    peer: u64,
    id: u64,
    answer: oneshot::Receiver<Result<Bytes, String>>,
}

impl StartedCall {
    /// The peer's answer, waited for at most `timeout`.
    pub async fn answer(self, timeout: Duration) -> Result<Bytes, CallError> {
        let peer = self.peer;
        match tokio::time::timeout(timeout, self.answer).await {
            Ok(Ok(Ok(body))) => Ok(body),
            Ok(Ok(Err(why))) => Err(CallError::Remote(peer, why)),
            Ok(Err(_)) => Err(CallError::Lost(peer)),
            Err(_) => {
                self.links.pending.lock().remove(&self.id);
                Err(CallError::Timeout(peer, timeout))
            }
        }
    }
}

/// Why a call to a peer got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no link to node {0}")]
    NoLink(u64),
    #[error("the link to node {0} is full or too small for the request")]
    Busy(u64),
    #[error("no answer from node {0} within {1:?}")]
    Timeout(u64, Duration),
    #[error("the link to node {0} went down before the answer")]
    Lost(u64),
    #[error("node {0} could not serve the request: {1}")]
    Remote(u64, String),
}

/// A call waiting for its answer.
struct Pending {
    peer: u64,
    reply: oneshot::Sender<Result<Bytes, String>>,
}

#[derive(Default)]
struct PeerState {
    link: Option<LinkHandle>,
    incarnation: Option<u64>,
    rtt_us: Option<u64>,
    last_error: Option<String>,
}

/// This node's links to its peers.
pub struct Links {
    config: ClusterConfig,
    /// The cluster's nodes by id, this one included: `peers` of the configuration until the
    /// cluster's membership replaces them ([`Links::set_members`]).
    members: parking_lot::RwLock<BTreeMap<u64, PeerConfig>>,
    /// Nodes removed from the cluster (the metadata group's record): never members again.
    removed: parking_lot::RwLock<HashSet<u64>>,
    /// Nodes learned from another member's view ([`Links::learn`]): members whatever a
    /// membership says, until their removal is recorded.
    learned: parking_lot::RwLock<BTreeMap<u64, PeerConfig>>,
    /// Members this node has a dial loop for (those with a higher id); a loop takes its id out
    /// when it ends (its node is no longer a member), so one added again gets a new loop.
    dialling: Mutex<HashSet<u64>>,
    hello: Hello,
    /// Replaced as a whole on reload (SIGHUP); links already up keep their sessions.
    tls: parking_lot::RwLock<LinkTls>,
    /// The highest CRL number seen per issuer, at start (with the numbers given) and since: a
    /// reload refuses an older CRL.
    crl_in_force: Mutex<CrlNumbers>,
    peers: Mutex<HashMap<u64, PeerState>>,
    next_serial: AtomicU64,
    handler: std::sync::OnceLock<Arc<dyn RequestHandler>>,
    /// Where refused admissions are recorded (the broker's audit log), once set.
    audit: std::sync::OnceLock<Arc<crate::audit::AuditLog>>,
    handshakes: Arc<tokio::sync::Semaphore>,
    /// The accept loop, which owns the listener: awaited at shutdown, so the address is free when
    /// [`Links::shut_down`] returns (a restarted node binds it again at once).
    accepting: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Peers this node is cut off from, as a firewall rule would (fault injection: [`Links::cut_off`]).
    cut: Mutex<std::collections::HashSet<u64>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_request: AtomicU64,
    /// Pings carry microseconds since this instant, so a pong tells the round trip.
    epoch: Instant,
    stop: watch::Sender<bool>,
}

impl Links {
    /// Binds the node-link listener and starts accepting and dialling. Fails if the TLS material is
    /// unusable or the address cannot be bound.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Arc<Links>> {
        Self::start_with(config, &CrlNumbers::default()).await
    }

    /// [`Links::start`], refusing a CRL older than the one of its issuer `in_force` (the numbers a
    /// broker keeps in its data directory): see [`Links::crl_numbers`].
    pub(crate) async fn start_with(
        config: ClusterConfig,
        in_force: &CrlNumbers,
    ) -> anyhow::Result<Arc<Links>> {
        let tls = tls::link_tls(&config.tls, in_force)?;
        let in_force = in_force.merged(&tls.crl_numbers);
        let listener = TcpListener::bind(config.listen).await?;
        let links = Arc::new(Links {
            hello: Hello {
                cluster_id: config.cluster_id(),
                node_id: config.node_id,
                incarnation: incarnation(),
            },
            tls: parking_lot::RwLock::new(tls),
            crl_in_force: Mutex::new(in_force),
            members: parking_lot::RwLock::new(
                config.peers.iter().map(|p| (p.id, p.clone())).collect(),
            ),
            dialling: Mutex::new(HashSet::new()),
            removed: parking_lot::RwLock::new(HashSet::new()),
            learned: parking_lot::RwLock::new(BTreeMap::new()),
            peers: Mutex::new(HashMap::new()),
            next_serial: AtomicU64::new(1),
            handler: std::sync::OnceLock::new(),
            cut: Mutex::new(std::collections::HashSet::new()),
            audit: std::sync::OnceLock::new(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
            accepting: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            epoch: Instant::now(),
            stop: watch::channel(false).0,
            config,
        });
        info!(listen = %links.config.listen, node = links.config.node_id, "node links listening");
        let accepting = tokio::spawn(links.clone().accept_loop(listener));
        *links.accepting.lock() = Some(accepting);
        links.dial_new_members();
        Ok(links)
    }

    /// Starts dialling every member with a higher id that has no dial loop yet.
    fn dial_new_members(self: &Arc<Self>) {
        let me = self.config.node_id;
        let mut dialling = self.dialling.lock();
        for id in self.members.read().keys().copied().filter(|id| *id > me) {
            if dialling.insert(id) {
                tokio::spawn(self.clone().dial_loop(id));
            }
        }
    }

    /// The cluster's nodes are now `members` (the metadata group's membership): new ones are
    /// dialled and admitted, and the links of nodes no longer among them are closed (their
    /// waiting calls fail) and refused from now on. This node stays whatever the list says, and
    /// so do the nodes it learned from another member's view.
    pub fn set_members(self: &Arc<Self>, members: Vec<PeerConfig>) {
        let removed = self.removed.read().clone();
        let learned: Vec<PeerConfig> = self.learned.read().values().cloned().collect();
        let mut fresh: BTreeMap<u64, PeerConfig> = BTreeMap::new();
        for p in members.into_iter().chain(learned) {
            if !removed.contains(&p.id) {
                fresh.entry(p.id).or_insert(p);
            }
        }
        if let Some(me) = self.config.me() {
            fresh.entry(me.id).or_insert_with(|| me.clone());
        }
        let gone: Vec<u64> = {
            let mut current = self.members.write();
            if *current == fresh {
                return;
            }
            let gone = current
                .keys()
                .filter(|id| !fresh.contains_key(id))
                .copied()
                .collect();
            info!(members = ?fresh.keys().collect::<Vec<_>>(), "the cluster's members changed");
            *current = fresh;
            gone
        };
        if !gone.is_empty() {
            let mut peers = self.peers.lock();
            for id in &gone {
                // Dropping the handle ends the link's session.
                peers.remove(id);
            }
            drop(peers);
            self.pending.lock().retain(|_, p| !gone.contains(&p.peer));
        }
        self.dial_new_members();
    }

    /// Takes in another member's view of the cluster's members: the nodes in it this node does
    /// not know, and did not see removed, become members here too (dialled and admitted) until
    /// their removal is recorded. A node that was down while the membership changed so reaches a
    /// leader that its log and its configured peers predate (and whose links it would refuse).
    pub fn learn(self: &Arc<Self>, view: Vec<PeerConfig>) {
        let new: Vec<PeerConfig> = {
            let removed = self.removed.read();
            let known = self.members.read();
            view.into_iter()
                .filter(|p| p.id != self.config.node_id)
                .filter(|p| !removed.contains(&p.id) && !known.contains_key(&p.id))
                .collect()
        };
        if new.is_empty() {
            return;
        }
        info!(learned = ?new.iter().map(|p| p.id).collect::<Vec<_>>(), "members learned from another member");
        self.learned
            .write()
            .extend(new.iter().map(|p| (p.id, p.clone())));
        self.set_members(self.members());
    }

    /// Node `id` was removed from the cluster (the metadata group recorded it): it is no member
    /// from now on, whatever a membership or the configured peers say, and its link closes.
    pub fn forget(self: &Arc<Self>, id: u64) {
        if id == self.config.node_id || !self.removed.write().insert(id) {
            return;
        }
        self.learned.write().remove(&id);
        let members: Vec<PeerConfig> = self.members();
        self.set_members(members);
    }

    /// Whether node `id` was removed from the cluster.
    pub fn was_removed(&self, id: u64) -> bool {
        self.removed.read().contains(&id)
    }

    /// The members, this node included.
    pub fn members(&self) -> Vec<PeerConfig> {
        self.members.read().values().cloned().collect()
    }

    /// The ids of the members, this node's included.
    pub fn member_ids(&self) -> HashSet<u64> {
        self.members.read().keys().copied().collect()
    }

    /// Member `id` as this node knows it.
    pub fn member(&self, id: u64) -> Option<PeerConfig> {
        self.members.read().get(&id).cloned()
    }

    /// Re-reads `[cluster.tls]` (SIGHUP): a renewed node certificate, a changed CA bundle, a new
    /// CRL apply to every link made from now on. On any error the running configuration stays.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        let fresh = self.load_tls()?;
        self.install_tls(fresh);
        Ok(())
    }

    /// `[cluster.tls]` read afresh, not yet in force (a reload checks everything before it changes
    /// anything).
    pub(crate) fn load_tls(&self) -> Result<LinkTls, crate::tls::TlsError> {
        tls::link_tls(&self.config.tls, &self.crl_in_force.lock())
    }

    /// The highest CRL number in force per issuer, for the broker to keep across restarts.
    pub(crate) fn crl_numbers(&self) -> CrlNumbers {
        self.crl_in_force.lock().clone()
    }

    /// Puts `fresh` in force, and drops every link whose peer certificate it refuses (a node
    /// revoked by a new CRL is cut off at once, not at its next reconnect).
    pub(crate) fn install_tls(&self, fresh: LinkTls) {
        let verifier = fresh.verifier.clone();
        {
            let mut in_force = self.crl_in_force.lock();
            *in_force = in_force.merged(&fresh.crl_numbers);
        }
        *self.tls.write() = fresh;
        let now = rustls::pki_types::UnixTime::now();
        for (id, state) in self.peers.lock().iter_mut() {
            let Some(link) = &state.link else { continue };
            let Some((end_entity, intermediates)) = link.chain.split_first() else {
                continue;
            };
            if let Err(e) = verifier.verify_client_cert(end_entity, intermediates, now) {
                warn!(peer = id, error = %e, "node link dropped: its certificate is refused since the reload");
                state.link = None;
                state.last_error =
                    Some(format!("its certificate is refused since the reload: {e}"));
            }
        }
    }

    /// Fault injection for the fault tests: cuts this node off from `peers` as a firewall rule
    /// would (their links close, and no link to them is dialled or admitted) until [`Links::heal`].
    /// Nothing in the broker calls it.
    pub fn cut_off(&self, peers: &[u64]) {
        self.cut.lock().extend(peers.iter().copied());
        let mut states = self.peers.lock();
        for peer in peers {
            if let Some(state) = states.get_mut(peer) {
                // Dropping the handle ends the link's session.
                state.link = None;
            }
        }
        // Calls waiting on them fail now, as when a link goes down (the session's end no longer
        // finds its handle to do it).
        self.pending.lock().retain(|_, p| !peers.contains(&p.peer));
    }

    /// Ends every cut made with [`Links::cut_off`].
    pub fn heal(&self) {
        self.cut.lock().clear();
    }

    /// Records refused node links in `audit` from now on (a certificate that is not a configured
    /// node's, or a hello that does not agree, is an authentication failure an auditor must see).
    pub(crate) fn set_audit(&self, audit: Arc<crate::audit::AuditLog>) {
        let _ = self.audit.set(audit);
    }

    fn audit_refusal(&self, from: SocketAddr, why: &str) {
        let Some(audit) = self.audit.get() else {
            return;
        };
        let source = from.to_string();
        audit.record_limited(
            &from.ip().to_string(),
            &crate::audit::Event {
                kind: "authentication",
                action: "node link",
                user: "",
                source: &source,
                vhost: None,
                result: "failure",
                detail: Some(why),
            },
        );
    }

    /// Sets what serves peers' requests (once; requests before it are answered with an error).
    pub fn set_handler(&self, handler: Arc<dyn RequestHandler>) {
        let _ = self.handler.set(handler);
    }

    /// Sends a request to `peer`'s handler of `group` and waits (at most `timeout`) for the answer.
    pub async fn call(
        self: &Arc<Self>,
        peer: u64,
        group: u32,
        kind: u8,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        self.start_call(peer, group, kind, body)?
            .answer(timeout)
            .await
    }

    /// Queues a request to `peer` now (requests started one after the other reach the peer in that
    /// order); its answer comes from [`StartedCall::answer`].
    pub fn start_call(
        self: &Arc<Self>,
        peer: u64,
        group: u32,
        kind: u8,
        body: Bytes,
    ) -> Result<StartedCall, CallError> {
        let tx = self
            .peers
            .lock()
            .get(&peer)
            .and_then(|s| s.link.as_ref().map(|l| l.tx.clone()))
            .ok_or(CallError::NoLink(peer))?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        if body.len() > wire::MAX_REQUEST {
            return Err(CallError::Busy(peer));
        }
        // A body larger than a frame goes in parts, the last in the request frame; all of them
        // take their places in the send queue at once, or none does.
        let parts = body.len().div_ceil(wire::MAX_PART).max(1);
        let Ok(mut permits) = tx.try_reserve_many(parts) else {
            return Err(CallError::Busy(peer));
        };
        let (reply, answer) = oneshot::channel();
        self.pending.lock().insert(id, Pending { peer, reply });
        let last = (parts - 1) * wire::MAX_PART;
        for start in (0..last).step_by(wire::MAX_PART) {
            if let Some(permit) = permits.next() {
                permit.send(Frame::RequestPart {
                    id,
                    body: body.slice(start..start + wire::MAX_PART),
                });
            }
        }
        if let Some(permit) = permits.next() {
            permit.send(Frame::Request {
                id,
                group,
                kind,
                body: body.slice(last..),
            });
        }
        Ok(StartedCall {
            links: self.clone(),
            peer,
            id,
            answer,
        })
    }

    /// Stops accepting and dialling and closes every link.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        for state in self.peers.lock().values_mut() {
            state.link = None;
        }
    }

    /// [`Links::stop`], then waits until the listener is closed.
    pub async fn shut_down(&self) {
        self.stop();
        let accepting = self.accepting.lock().take();
        if let Some(accepting) = accepting {
            let _ = accepting.await;
        }
    }

    /// The configuration the links run by.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether node `id`'s link is up.
    pub fn connected(&self, id: u64) -> bool {
        self.peers.lock().get(&id).is_some_and(|s| s.link.is_some())
    }

    /// The name of node `id` (its certificate's CN), a member's or a configured peer's.
    pub fn name_of(&self, id: u64) -> Option<String> {
        self.member(id)
            .or_else(|| self.config.peers.iter().find(|p| p.id == id).cloned())
            .map(|p| p.name)
    }

    /// Every other member and its link.
    pub fn status(&self) -> Vec<PeerStatus> {
        let members = self.members.read();
        let peers = self.peers.lock();
        members
            .values()
            .filter(|p| p.id != self.config.node_id)
            .map(|p| {
                let state = peers.get(&p.id);
                PeerStatus {
                    id: p.id,
                    name: p.name.clone(),
                    addr: p.addr,
                    connected: state.is_some_and(|s| s.link.is_some()),
                    incarnation: state.and_then(|s| s.incarnation),
                    rtt_us: state.and_then(|s| s.rtt_us),
                    last_error: state.and_then(|s| s.last_error.clone()),
                }
            })
            .collect()
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop.subscribe();
        loop {
            let (tcp, from) = tokio::select! {
                _ = stopping(&mut stop) => return,
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "node link accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                warn!(%from, "node link dropped: {MAX_HANDSHAKES} handshakes already in progress");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let links = self.clone();
            tokio::spawn(async move {
                let admitted = tokio::time::timeout(HANDSHAKE_TIMEOUT, links.admit(tcp)).await;
                drop(permit);
                match admitted {
                    Ok(Ok((stream, peer, hello))) => {
                        let chain = peer_chain(stream.get_ref().1.peer_certificates());
                        links.run(stream, peer, hello, chain, BytesMut::new()).await
                    }
                    Ok(Err(e)) => {
                        info!(%from, error = %e, "node link refused");
                        match &e {
                            LinkError::Refused(why) => links.audit_refusal(from, why),
                            LinkError::Io(io) => {
                                if let Some(why) = crate::tls::certificate_refusal(io) {
                                    links.audit_refusal(from, &why);
                                }
                            }
                            _ => {}
                        }
                    }
                    Err(_) => info!(%from, "node link handshake timed out"),
                }
            });
        }
    }

    /// The accepting side: TLS, the certificate, then the dialler's hello, answered with ours and
    /// a welcome or the reason for refusing it.
    async fn admit(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
            PeerConfig,
            Hello,
        ),
        LinkError,
    > {
        let acceptor = self.tls.read().acceptor.clone();
        let mut stream = acceptor.accept(tcp).await?;
        let (_, session) = stream.get_ref();
        let peer = self.verified_peer(session.alpn_protocol(), session.peer_certificates())?;
        let mut theirs = [0u8; HELLO_LEN];
        stream.read_exact(&mut theirs).await?;
        let check = Hello::decode(&theirs)
            .and_then(|hello| self.check_hello(&hello, &peer).map(|()| hello));
        stream.write_all(&self.hello.encode()).await?;
        let mut out = BytesMut::new();
        match check {
            Ok(hello) => {
                Frame::Welcome.encode(&mut out);
                stream.write_all(&out).await?;
                stream.flush().await?;
                Ok((stream, peer, hello))
            }
            Err(why) => {
                Frame::Refused(why.clone()).encode(&mut out);
                stream.write_all(&out).await?;
                stream.shutdown().await?;
                Err(refused(why))
            }
        }
    }

    /// The peer a verified TLS session belongs to: the node application protocol, a node
    /// certificate, and a name in the peer list (this node excepted).
    fn verified_peer(
        &self,
        alpn: Option<&[u8]>,
        certificates: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Result<PeerConfig, LinkError> {
        if alpn != Some(tls::ALPN) {
            return Err(refused(
                "the peer did not speak the node-link protocol (ALPN)",
            ));
        }
        let cert = certificates
            .and_then(|chain| chain.first())
            .ok_or_else(|| refused("no certificate"))?;
        let name = identity::node_name(cert).map_err(|e| refused(e.to_string()))?;
        let peer = self
            .members
            .read()
            .values()
            .find(|p| p.name == name)
            .cloned();
        match peer {
            Some(peer) if self.cut.lock().contains(&peer.id) => {
                Err(refused(format!("node {name:?} is cut off")))
            }
            Some(peer) if peer.id != self.config.node_id => Ok(peer),
            Some(_) => Err(refused(format!(
                "the certificate of node {name:?} is this node's own"
            ))),
            None => Err(refused(format!(
                "node {name:?} is not a member of the cluster"
            ))),
        }
    }

    fn check_hello(&self, hello: &Hello, peer: &PeerConfig) -> Result<(), String> {
        if hello.cluster_id != self.hello.cluster_id {
            return Err(format!(
                "cluster id {:016x} differs from this node's {:016x} (cluster_name differs)",
                hello.cluster_id, self.hello.cluster_id
            ));
        }
        if hello.node_id != peer.id {
            return Err(format!(
                "node {:?} introduced itself as node {}, but the cluster's members give it id {}",
                peer.name, hello.node_id, peer.id
            ));
        }
        Ok(())
    }

    /// Dials member `id` and serves its link, again and again, until the node stops or `id` is no
    /// longer a member.
    async fn dial_loop(self: Arc<Self>, id: u64) {
        let mut backoff = REDIAL_MIN;
        while !self.stopped() {
            let Some(peer) = self.member(id) else {
                let mut dialling = self.dialling.lock();
                // (Checked again under the lock: a member added back meanwhile keeps this loop.)
                if self.member(id).is_none() {
                    dialling.remove(&id);
                    return;
                }
                continue;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.dial(&peer)).await {
                Ok(Ok((stream, hello, read))) => {
                    backoff = REDIAL_MIN;
                    let chain = peer_chain(stream.get_ref().1.peer_certificates());
                    self.run(stream, peer.clone(), hello, chain, read).await;
                }
                Ok(Err(e)) => self.record_error(&peer, &e.to_string()),
                Err(_) => self.record_error(&peer, "link handshake timed out"),
            }
            let mut stop = self.stop.subscribe();
            tokio::select! {
                _ = stopping(&mut stop) => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(REDIAL_MAX);
        }
    }

    /// The dialling side: TCP from this node's address, TLS against the address dialled, the
    /// certificate, then our hello and the peer's answer.
    async fn dial(
        &self,
        peer: &PeerConfig,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            Hello,
            BytesMut,
        ),
        LinkError,
    > {
        let socket = match peer.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(self.config.listen.ip(), 0))?;
        let tcp = socket.connect(peer.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(peer.addr.ip().into());
        let connector = self.tls.read().connector.clone();
        let mut stream = connector.connect(name, tcp).await?;
        let (_, session) = stream.get_ref();
        let found = self.verified_peer(session.alpn_protocol(), session.peer_certificates())?;
        if found.id != peer.id {
            return Err(refused(format!(
                "dialled node {:?} at {} but its certificate names node {:?}",
                peer.name, peer.addr, found.name
            )));
        }
        stream.write_all(&self.hello.encode()).await?;
        stream.flush().await?;
        let mut theirs = [0u8; HELLO_LEN];
        stream.read_exact(&mut theirs).await?;
        let hello = Hello::decode(&theirs).map_err(LinkError::Protocol)?;
        let mut buf = BytesMut::new();
        let answer = loop {
            if let Some(frame) = Frame::decode(&mut buf).map_err(LinkError::Protocol)? {
                break frame;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(LinkError::Protocol("closed during the hello".into()));
            }
        };
        match answer {
            Frame::Welcome => {}
            Frame::Refused(why) => return Err(refused(format!("by {}: {why}", peer.name))),
            other => {
                return Err(LinkError::Protocol(format!(
                    "expected a welcome, got {other:?}"
                )))
            }
        }
        self.check_hello(&hello, peer).map_err(refused)?;
        // What the peer sent after its welcome (it may start at once) belongs to the session.
        Ok((stream, hello, buf))
    }

    /// Registers a link (replacing an older one to the same peer) and serves it until it ends;
    /// `read` is what was read from the stream beyond the handshake.
    async fn run<S>(
        &self,
        stream: S,
        peer: PeerConfig,
        hello: Hello,
        chain: Vec<CertificateDer<'static>>,
        read: BytesMut,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.member(peer.id).is_none() {
            info!(peer = %peer.name, "node link closed: no longer a member of the cluster");
            return;
        }
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let (close, closed) = oneshot::channel();
        {
            let mut peers = self.peers.lock();
            let state = peers.entry(peer.id).or_default();
            if state.incarnation.is_some_and(|i| i != hello.incarnation) {
                info!(peer = %peer.name, "node restarted (new incarnation)");
            }
            state.incarnation = Some(hello.incarnation);
            state.last_error = None;
            state.link = Some(LinkHandle {
                serial,
                _close: close,
                tx: tx.clone(),
                chain,
            });
        }
        info!(peer = %peer.name, id = peer.id, "node link up");
        let ended = self.serve(stream, &peer, (tx, rx, read), closed).await;
        let why = match &ended {
            Ok(()) => "closed".to_string(),
            Err(e) => e.to_string(),
        };
        info!(peer = %peer.name, reason = %why, "node link down");
        let mut peers = self.peers.lock();
        if let Some(state) = peers.get_mut(&peer.id) {
            if state.link.as_ref().is_some_and(|l| l.serial == serial) {
                state.link = None;
                state.rtt_us = None;
                state.last_error = Some(why);
                // Calls waiting on this peer fail now (their senders drop) rather than time out.
                self.pending.lock().retain(|_, p| p.peer != peer.id);
            }
        }
    }

    /// Reads frames and answers pings, pings the peer, and writes the send queue, until the link
    /// fails, falls silent, is replaced, or the node stops.
    async fn serve<S>(
        &self,
        stream: S,
        peer: &PeerConfig,
        (tx, mut rx, mut buf): (mpsc::Sender<Frame>, mpsc::Receiver<Frame>, BytesMut),
        mut closed: oneshot::Receiver<()>,
    ) -> Result<(), LinkError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let write = async move {
            let mut out = BytesMut::new();
            while let Some(frame) = rx.recv().await {
                frame.encode(&mut out);
                while let Ok(more) = rx.try_recv() {
                    more.encode(&mut out);
                }
                writer.write_all(&out).await?;
                writer.flush().await?;
                out.clear();
            }
            let _ = writer.shutdown().await;
            Ok::<(), LinkError>(())
        };
        tokio::pin!(write);
        let mut stop = self.stop.subscribe();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        buf.reserve(64 * 1024);
        let mut heard = Instant::now();
        let requests = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_PER_LINK));
        // The leading parts of requests larger than a frame, joined as they come.
        let mut partial: HashMap<u64, BytesMut> = HashMap::new();
        let mut partial_bytes = 0usize;
        loop {
            while let Some(frame) = Frame::decode(&mut buf).map_err(LinkError::Protocol)? {
                heard = Instant::now();
                match frame {
                    Frame::Ping(n) => send(&tx, Frame::Pong(n))?,
                    Frame::Pong(n) => self.record_rtt(peer, n),
                    Frame::RequestPart { id, body } => {
                        partial_bytes += body.len();
                        if partial_bytes > wire::MAX_REQUEST {
                            return Err(LinkError::Protocol(
                                "unfinished requests beyond the link's bound".into(),
                            ));
                        }
                        partial.entry(id).or_default().extend_from_slice(&body);
                    }
                    Frame::Request {
                        id,
                        group,
                        kind,
                        body,
                    } => match requests.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let body = match partial.remove(&id) {
                                Some(mut head) => {
                                    partial_bytes -= head.len();
                                    head.extend_from_slice(&body);
                                    head.freeze()
                                }
                                None => body,
                            };
                            let request = (id, group, kind, body);
                            self.serve_request(peer.id, request, tx.clone(), permit)
                        }
                        Err(_) => {
                            if let Some(head) = partial.remove(&id) {
                                partial_bytes -= head.len();
                            }
                            send(
                                &tx,
                                Frame::Response {
                                    id,
                                    answer: Err("busy: too many requests in progress".into()),
                                },
                            )?
                        }
                    },
                    Frame::Response { id, answer } => {
                        // Only the peer a request went to may answer it.
                        let mut pending = self.pending.lock();
                        if pending.get(&id).is_some_and(|p| p.peer == peer.id) {
                            if let Some(call) = pending.remove(&id) {
                                let _ = call.reply.send(answer);
                            }
                        }
                    }
                    other => {
                        return Err(LinkError::Protocol(format!("unexpected {other:?}")));
                    }
                }
            }
            tokio::select! {
                read = reader.read_buf(&mut buf) => {
                    if read? == 0 {
                        return Ok(());
                    }
                    heard = Instant::now();
                }
                _ = ping.tick() => {
                    if heard.elapsed() > SILENCE_LIMIT {
                        return Err(LinkError::Timeout);
                    }
                    send(&tx, Frame::Ping(self.epoch.elapsed().as_micros() as u64))?;
                }
                written = &mut write => return written,
                _ = &mut closed => {
                    return match (self.stopped(), self.cut.lock().contains(&peer.id)) {
                        (true, _) => Ok(()),
                        (false, true) => Err(refused("cut off")),
                        (false, false) if self.member(peer.id).is_none() => {
                            Err(refused("no longer a member of the cluster"))
                        }
                        (false, false) => Err(refused("replaced by a newer link")),
                    };
                }
                _ = stopping(&mut stop) => return Ok(()),
            }
        }
    }

    /// Runs a peer's request on the handler and queues the answer; an answer that does not fit the
    /// queue is dropped and the caller times out. The handler is called here, in the order the
    /// requests arrived (what it does before its future first waits keeps that order: forwarded
    /// publishes enter their queue in the order they were sent), and its future runs in a task of
    /// its own (a Raft call may wait).
    /// `(id, group, kind, body)` is the request frame's content; `permit` its place in the link's
    /// bound on requests in progress.
    fn serve_request(
        &self,
        from: u64,
        (id, group, kind, body): (u64, u32, u8, Bytes),
        tx: mpsc::Sender<Frame>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let answering = self
            .handler
            .get()
            .map(|handler| handler.handle(from, group, kind, body));
        tokio::spawn(async move {
            let _permit = permit;
            let answer = match answering {
                Some(answering) => answering.await,
                None => Err("this node is still starting".to_string()),
            };
            let mut response = Frame::Response { id, answer };
            if !response.fits() {
                response = Frame::Response {
                    id,
                    answer: Err("the answer is larger than a link frame".into()),
                };
            }
            let _ = tx.try_send(response);
        });
    }

    fn record_rtt(&self, peer: &PeerConfig, sent_us: u64) {
        let now = self.epoch.elapsed().as_micros() as u64;
        if let Some(state) = self.peers.lock().get_mut(&peer.id) {
            state.rtt_us = Some(now.saturating_sub(sent_us));
        }
    }

    fn record_error(&self, peer: &PeerConfig, why: &str) {
        debug!(peer = %peer.name, error = %why, "node link not established");
        self.peers.lock().entry(peer.id).or_default().last_error = Some(why.to_string());
    }
}

/// Queues `frame` for the peer; a full queue means the peer is not reading, and the link goes.
fn send(tx: &mpsc::Sender<Frame>, frame: Frame) -> Result<(), LinkError> {
    tx.try_send(frame)
        .map_err(|_| refused("the peer is not reading (send queue full)"))
}

/// Completes once the node stops (the watch's guard is not held by the caller).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A number for this run of the node: different at every start.
pub(crate) fn incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ u64::from(std::process::id()).rotate_left(48)
}
