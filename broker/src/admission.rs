//! Who may even start a handshake: the source-address allowlist (checked on the bare TCP connection,
//! before any TLS work), and the caps on connections that have not finished negotiating (globally and
//! per source IP), so unauthenticated peers cannot hold more than a bounded share of the broker.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ipnet::IpNet;

/// Counts connections between accept and connection.open-ok.
#[derive(Debug)]
pub(crate) struct Admission {
    allow: Vec<IpNet>,
    max_pending: usize,
    max_pending_per_ip: usize,
    pending: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
}

/// Why a new TCP connection is dropped before TLS.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotAllowed,
    TooManyPending,
    TooManyPendingFromPeer,
}

/// A pending connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.admission.pending.fetch_sub(1, Ordering::AcqRel);
        if let dashmap::Entry::Occupied(mut e) = self.admission.per_ip.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// IPv4-mapped IPv6 peers are matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Admission {
    /// An empty allowlist admits every address the listener is bound to serve.
    pub fn new(allow: Vec<IpNet>, max_pending: usize, max_pending_per_ip: usize) -> Arc<Self> {
        Arc::new(Admission {
            allow,
            max_pending,
            max_pending_per_ip,
            pending: AtomicUsize::new(0),
            per_ip: DashMap::new(),
        })
    }

    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<PendingSlot, Refusal> {
        let ip = canonical(peer);
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::NotAllowed);
        }
        let taken = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refusal::TooManyPending);
        }
        let mut count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_pending_per_ip {
            drop(count);
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyPendingFromPeer);
        }
        *count += 1;
        Ok(PendingSlot {
            admission: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_and_caps() {
        let a = Admission::new(vec!["127.0.0.0/8".parse().unwrap()], 3, 2);
        assert_eq!(
            a.admit("10.0.0.1".parse().unwrap()).unwrap_err(),
            Refusal::NotAllowed
        );
        assert!(
            a.admit("::ffff:127.0.0.1".parse().unwrap()).is_ok(),
            "mapped IPv4 matches"
        );
        let s1 = a.admit("127.0.0.1".parse().unwrap()).unwrap();
        let _s2 = a.admit("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            a.admit("127.0.0.1".parse().unwrap()).unwrap_err(),
            Refusal::TooManyPendingFromPeer
        );
        let _s3 = a.admit("127.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(
            a.admit("127.0.0.3".parse().unwrap()).unwrap_err(),
            Refusal::TooManyPending
        );
        drop(s1);
        assert_eq!(a.pending(), 2);
        assert!(a.admit("127.0.0.1".parse().unwrap()).is_ok());
    }
}
