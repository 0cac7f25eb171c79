//! Connections per client IP address, capped: a connection holds its address's share
//! ([`IpSlot`]) while it is open and returns it on drop. The HTTP servers and the QUIC
//! edge take one per connection before serving it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per client IP address.
#[derive(Debug, Default)]
pub struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    /// A share for one more connection from `ip`, or `None` when `ip` holds `max`.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot { per_ip: Arc::clone(self), ip })
    }
}

/// One connection's share of its address's cap; returned on drop.
#[derive(Debug)]
pub struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.per_ip.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_address_holds_at_most_its_share_and_gets_it_back() {
        let per_ip = Arc::new(PerIp::default());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let held: Vec<IpSlot> = (0..3).map(|_| per_ip.take(a, 3).unwrap()).collect();
        assert!(per_ip.take(a, 3).is_none());
        assert!(per_ip.take(b, 3).is_some(), "another address has its own share");
        drop(held);
        let again: Vec<Option<IpSlot>> = (0..3).map(|_| per_ip.take(a, 3)).collect();
        assert!(again.iter().all(Option::is_some), "every share came back");
    }
}
